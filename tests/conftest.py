"""Shared test set-up. Triton's interpreter must be chosen before any @triton.jit is imported,
so it is set here, first, whenever no CUDA device can run compiled kernels."""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# The suite runs as two processes (pytest -n 2) on two cores: one intra-op thread each. More
# oversubscribes the machine, and tiny models run fastest on one thread anyway.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

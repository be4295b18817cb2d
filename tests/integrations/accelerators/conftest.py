"""Tiny pipelines shared by the accelerator tests (module-scoped: the tests do not modify them)."""

import pytest

from tests.tiny_pipelines import tiny_hunyuan_t2v, tiny_wan_t2v


@pytest.fixture(scope="module")
def wan():
    return tiny_wan_t2v()


@pytest.fixture(scope="module")
def hy():
    return tiny_hunyuan_t2v()

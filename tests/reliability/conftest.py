"""Shared set-up of the reliability tests (issue 23): a tiny Wan model folder and a guard that fails a
test whose command loads a model although it should have stopped before."""

import pytest

from tests.tiny_pipelines import tiny_wan_t2v


@pytest.fixture(scope="session")
def wan_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "wan"
    tiny_wan_t2v().save_pretrained(path)
    return path


@pytest.fixture
def no_loading(monkeypatch):
    """``DiffusionPipeline.from_pretrained`` fails the test: the command had to refuse before loading."""
    from diffusers import DiffusionPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", refuse)

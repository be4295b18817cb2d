"""cache-dit with SURF (integrations/accelerators/cache_dit.py): refused at the call, before any
compute, whichever is enabled first; after cache_dit.disable_cache the SURF call is SURF's own again."""

import pytest

import surf_accel
from tests.integrations.accelerators.common import STAGED, WAN_KW, assert_equal, frames
from tests.tiny_pipelines import tiny_wan_t2v

cache_dit = pytest.importorskip("cache_dit", reason="cache-dit is an optional dependency (pip install cache-dit)")


@pytest.mark.parametrize("order", ["cache_dit_first", "surf_first"])
def test_cache_dit_is_refused_and_removable(order):
    pipe = tiny_wan_t2v()
    cls, own_call = type(pipe), type(pipe).__call__
    surf_accel.patch(pipe, STAGED)
    ref = frames(pipe, WAN_KW)
    surf_accel.unpatch(pipe)
    calls = []
    h = pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        if order == "cache_dit_first":
            cache_dit.enable_cache(pipe)
            surf_accel.patch(pipe, STAGED)
        else:
            surf_accel.patch(pipe, STAGED)
            cache_dit.enable_cache(pipe)
        with pytest.raises(ValueError, match=r"cache-dit is enabled.*cache_dit.disable_cache\(pipe\)"):
            frames(pipe, WAN_KW)
        assert calls == []  # refused before the first transformer call
    finally:
        # cache-dit wraps the class's __call__ (the SURF subclass's when SURF came first): undo in reverse order
        if order == "cache_dit_first":
            surf_accel.unpatch(pipe)
            cache_dit.disable_cache(pipe)
        else:
            cache_dit.disable_cache(pipe)
            surf_accel.unpatch(pipe)
        h.remove()
    assert cls.__call__ is own_call and type(pipe) is cls
    with surf_accel.patched(pipe, STAGED):
        assert_equal(frames(pipe, WAN_KW), ref)

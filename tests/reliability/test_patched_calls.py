"""A patched pipeline under concurrent calls, pickling, callbacks and the inputs diffusers accepts
(findings 1, 6, 9, 10). Oracles: the same call run alone (serial), the unpatched pipeline, and the
module's own attention processors before patching."""

import copy
import pickle
import threading

import numpy as np
import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from tests.tiny_pipelines import T2V_KW, gen, tiny_wan_t2v

# preview 2 steps at 32 px, preview_low 2 at 16 px, refine 2 at 64 px in shifted windows of 1x2x2 tokens
WINDOWED = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2, window=(1, 2, 2),
                      handoff="latent")
KW = dict(T2V_KW, height=64, width=64)
REQUEST_LATENT = (64 // 8, 64 // 8)  # the tiny VAE's 8x spatial compression


def run(pipe, prompt, seed, **extra):
    return pipe(**dict(KW, prompt=prompt), generator=gen(seed), **extra).frames


def processors(pipe):
    return {name: type(p) for name, p in pipe.transformer.attn_processors.items()}


def overlapped(first, second):
    """Call ``first`` and then ``second`` (two (pipe, prompt, seed)) on two threads so that their refines
    would overlap: the first waits in its first refine step until the second reaches its own (or 3 s),
    the second waits in its refine until the first has returned. Returns both outputs."""
    in_refine, first_done = threading.Event(), threading.Event()
    first_in_refine = threading.Event()
    out = {}

    def waiter(event_to_set, event_to_wait, timeout):
        def cb(pipe, i, t, kw):
            if tuple(kw["latents"].shape[-2:]) == REQUEST_LATENT and not event_to_set.is_set():
                event_to_set.set()
                event_to_wait.wait(timeout)
            return {}
        return cb

    def go(name, spec, cb, done=None):
        pipe, prompt, seed = spec
        out[name] = run(pipe, prompt, seed, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"])
        if done is not None:
            done.set()

    a = threading.Thread(target=go, args=("first", first, waiter(first_in_refine, in_refine, 3.0), first_done))
    b = threading.Thread(target=go, args=("second", second, waiter(in_refine, first_done, 30.0)))
    a.start()
    assert first_in_refine.wait(60)
    b.start()
    a.join(120)
    b.join(120)
    return out["first"], out["second"]


@pytest.mark.parametrize("shared", ["one pipeline", "two pipelines, one transformer"])
def test_overlapping_calls_each_give_their_serial_result(shared):
    from diffusers import WanPipeline

    pipe = tiny_wan_t2v()
    plain = run(pipe, "a red circle", 0)
    before = processors(pipe)
    other = pipe if shared == "one pipeline" else WanPipeline(**pipe.components)
    surf_accel.patch(pipe, WINDOWED)
    if other is not pipe:
        surf_accel.patch(other, WINDOWED)
    want_a, want_b = run(pipe, "a red circle", 0), run(other, "a blue square", 1)
    got_a, got_b = overlapped((pipe, "a red circle", 0), (other, "a blue square", 1))
    assert np.array_equal(got_a, want_a) and np.array_equal(got_b, want_b)
    assert processors(pipe) == before  # no window processor left installed
    surf_accel.unpatch(pipe)
    surf_accel.unpatch(other)
    assert np.array_equal(run(pipe, "a red circle", 0), plain)


def test_a_patched_pipeline_pickles_and_copies():
    pipe = tiny_wan_t2v()
    plain = run(pipe, "a red circle", 0)
    surf_accel.patch(pipe, WINDOWED)
    surf = run(pipe, "a red circle", 0)
    for clone in (pickle.loads(pickle.dumps(pipe)), copy.deepcopy(pipe)):
        assert surf_accel.is_patched(clone) and surf_accel.api.get_config(clone) == WINDOWED
        assert type(clone).__name__ == "WanPipeline"
        assert np.array_equal(run(clone, "a red circle", 0), surf)
        surf_accel.unpatch(clone)
        assert np.array_equal(run(clone, "a red circle", 0), plain)


def test_callbacks_see_each_stage():
    pipe = surf_accel.patch(tiny_wan_t2v(), WINDOWED)
    seen = []

    def cb(p, i, t, kw):
        seen.append((i, p.surf_stage.name, tuple(p.surf_stage.latent_size), tuple(kw["latents"].shape)))
        return {}

    run(pipe, "a red circle", 0, callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"])
    assert [(i, name) for i, name, _, _ in seen] == [(0, "preview"), (1, "preview"), (2, "preview_low"),
                                                     (3, "preview_low"), (4, "refine"), (5, "refine")]
    # latents after each step: 32 px (4x4 latents), then the reshift (the preview's last update) to 16 px,
    # 16 px, then the refine at the request's 64 px
    assert [shape[2:] for *_, shape in seen] == [(2, 4, 4), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 8, 8), (2, 8, 8)]
    assert [size for _, _, size, _ in seen] == [(2, 4, 4)] * 2 + [(2, 2, 2)] * 2 + [(2, 8, 8)] * 2
    assert pipe.surf_stage is None
    surf_accel.unpatch(pipe)
    assert not hasattr(pipe, "surf_stage")


def test_a_callback_returning_latents_of_another_stage_is_refused():
    pipe = surf_accel.patch(tiny_wan_t2v(), WINDOWED)

    def request_sized(p, i, t, kw):
        return {"latents": torch.zeros(kw["latents"].shape[:3] + REQUEST_LATENT)}

    with pytest.raises(ValueError, match=r"preview stage \(32x32 px\), whose latents are \(1, 16, 2, 4, 4\)"):
        run(pipe, "a red circle", 0, callback_on_step_end=request_sized,
            callback_on_step_end_tensor_inputs=["latents"])


@pytest.mark.parametrize("sizes", [dict(height=np.int64(32), width=np.int64(32)), dict(height=32.0, width=32.0),
                                   dict(num_frames=np.int64(5), num_inference_steps=np.int64(4))],
                         ids=["numpy ints", "whole floats", "numpy frames and steps"])
def test_identity_accepts_the_numbers_diffusers_accepts(sizes):
    pipe = tiny_wan_t2v()
    want = pipe(**dict(T2V_KW, **sizes), generator=gen(0)).frames
    with surf_accel.patched(pipe, SurfConfig.identity()):
        got = pipe(**dict(T2V_KW, **sizes), generator=gen(0)).frames
    assert np.array_equal(got, want)


def test_identity_accepts_latents_of_another_batch():
    pipe = tiny_wan_t2v()
    latents = torch.randn(2, 16, 2, 4, 4, generator=gen(3))  # two videos, one prompt
    want = pipe(**T2V_KW, latents=latents).frames
    with surf_accel.patched(pipe, SurfConfig.identity()):
        got = pipe(**T2V_KW, latents=latents).frames
    assert got.shape[0] == 2 and np.array_equal(got, want)

"""torch.compile with SURF: compiles bounded by the stage resolutions, none per step (dynamo's own
counters), the same result as eager, and a WARNING when something recompiles per step."""

import logging

import pytest
import torch
from torch._dynamo.utils import counters, guard_failures

import surf_accel
from surf_accel import SurfConfig
from surf_accel.integrations.accelerators.sparse_attention import SparsePattern
from tests.tiny_pipelines import T2V_KW, gen, tiny_wan_t2v

# three stage resolutions: preview 32 px, preview_low 16 px, refine 64 px
KW = {**T2V_KW, "height": 64, "width": 64, "num_frames": 9, "output_type": "latent"}
CFG = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2, handoff="latent")
RESOLUTIONS = 3
WINDOWED = CFG.replace(window=(1, 2, 2), preview_attention=SparsePattern((1, 1, 1), (1, 1, 1), 1))


def _compile(pipe, how, **options):
    # backend="eager": dynamo's frame capture and guards (what decides recompiles) without inductor's build
    if how == "regional":
        pipe.transformer.compile_repeated_blocks(backend="eager", **options)
    else:
        pipe.transformer = torch.compile(pipe.transformer, backend="eager", **options)


def _graphs_per_code() -> dict:
    """Compiled graphs (dynamo cache entries) of every code object that failed a guard (recompiled)."""
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

    graphs = {f"{c.co_name}@{c.co_filename}:{c.co_firstlineno}": len(_debug_get_cache_entry_list(c))
              for c in guard_failures}
    return {k: n for k, n in graphs.items() if n}


@pytest.mark.parametrize("how, cfg", [("wrapper", CFG), ("regional", WINDOWED)],
                         ids=["whole-transformer", "regional+windows+sparse"])
def test_compiled_surf_recompiles_per_resolution_never_per_step(how, cfg, caplog):
    pipe = tiny_wan_t2v("euler")
    with surf_accel.patched(pipe, cfg):
        ref = pipe(generator=gen(0), **KW).frames
    _compile(pipe, how)
    torch._dynamo.reset()
    counters.clear()
    with surf_accel.patched(pipe, cfg), caplog.at_level(logging.WARNING, logger="surf_accel"):
        out = pipe(generator=gen(0), **KW).frames
        frames = counters["frames"]["total"]
        graphs = _graphs_per_code()
        assert frames > 0 and graphs  # it did run compiled, and recompiled at the resolution changes
        # at most one graph per stage resolution per code object; with per-stage attention (sparse
        # preview, windowed refine alternating shifted/unshifted blocks) one per stage and block variant
        bound = RESOLUTIONS if cfg is CFG else 2 * RESOLUTIONS
        assert all(n <= bound for n in graphs.values()), graphs
    # twice the steps at the same resolutions: nothing new compiled
    with surf_accel.patched(pipe, cfg.replace(preview_steps=8, switch_step=3, refine_steps=3)):
        pipe(generator=gen(1), **{**KW, "num_inference_steps": 8})
    assert counters["frames"]["total"] == frames and _graphs_per_code() == graphs
    assert not [r for r in caplog.records if "recompiled" in r.getMessage()]
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    inner = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
    assert all(type(p).__module__.startswith("diffusers") for p in inner.attn_processors.values())


def _per_step_scalar(pipe):
    """A hook that feeds every block a Python number changing per call (a stand-in for a step counter)."""
    state = {"scale": 1.0}

    def hook(module, args, kwargs):
        state["scale"] += 1e-3
        return (args[0], args[1], args[2] * state["scale"], *args[3:]), kwargs

    for block in pipe.transformer.blocks:
        block.register_forward_pre_hook(hook, with_kwargs=True)


def test_per_step_recompile_is_a_warning_naming_the_fix(caplog):
    """(Without dynamic=False dynamo generalises the number after one recompile, within the first step:
    no warning, as the tests above check for SURF alone.)"""
    pipe = tiny_wan_t2v("euler")
    _per_step_scalar(pipe)
    _compile(pipe, "regional", dynamic=False)
    torch._dynamo.reset()
    with surf_accel.patched(pipe, CFG), caplog.at_level(logging.WARNING, logger="surf_accel"):
        pipe(generator=gen(0), **KW)
    warned = [r.getMessage() for r in caplog.records if "recompiled" in r.getMessage()]
    # every scalar specialised: a recompile each step, caught in the preview already
    assert warned and "preview stage after its first step" in warned[0]
    assert "dynamic=False" in warned[0] and "scale" in warned[0]  # the fix and the failing guard

"""torch.compile with SURF, alone and with a cache: compiles bounded by the stage resolutions, none
per step (dynamo's own counters), the same result as eager, and a WARNING when something recompiles
per step."""

import logging

import pytest
import torch
from torch._dynamo.utils import counters, guard_failures

import surf_accel
from surf_accel import SurfConfig
from surf_accel.integrations.accelerators import teacache_stats
from surf_accel.integrations.accelerators.sparse_attention import SparsePattern
from tests.integrations.accelerators.common import STAGED, WAN_KW, install_fbc, install_teacache, surf_with_cache
from tests.tiny_pipelines import T2V_KW, gen, tiny_wan_t2v

# three stage resolutions: preview 32 px, preview_low 16 px, refine 64 px
KW = {**T2V_KW, "height": 64, "width": 64, "num_frames": 9, "output_type": "latent"}
CFG = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2, handoff="latent")
RESOLUTIONS = 3
CACHE_KW = {**WAN_KW, "output_type": "latent"}  # STAGED: three 4-step stages at three resolutions
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
    """Feeds every block a Python number that changes at every transformer call (a stand-in for a step
    counter)."""
    state = {"scale": 1.0}

    def count(module, args):
        state["scale"] += 1e-3

    def hook(module, args, kwargs):
        return (args[0], args[1], args[2] * state["scale"], *args[3:]), kwargs

    pipe.transformer.register_forward_pre_hook(count)
    for block in pipe.transformer.blocks:
        block.register_forward_pre_hook(hook, with_kwargs=True)


def test_per_step_recompile_is_a_warning_naming_the_fix(caplog):
    """(Without dynamic=False dynamo generalises the number after one recompile, within the first step:
    no warning, as the tests above check for SURF alone.) Four-step stages: the watch warns at
    compiles on three or more later steps of a stage (a cache's branch states and skip path add
    compiles on two at most)."""
    pipe = tiny_wan_t2v("euler")
    _per_step_scalar(pipe)
    _compile(pipe, "regional", dynamic=False)
    torch._dynamo.reset()
    with surf_accel.patched(pipe, STAGED), caplog.at_level(logging.WARNING, logger="surf_accel"):
        pipe(generator=gen(0), **CACHE_KW)
    warned = [r.getMessage() for r in caplog.records if "recompiled" in r.getMessage()]
    # every scalar specialised: a recompile each step, caught in the preview already
    assert warned and "preview stage after its first step" in warned[0]
    assert "dynamic=False" in warned[0] and "scale" in warned[0]  # the fix and the failing guard


@pytest.mark.parametrize("install", [install_teacache, install_fbc], ids=["teacache", "first-block-cache"])
@pytest.mark.parametrize("how", ["regional", "wrapper"])
def test_compiled_surf_with_a_cache(how, install, caplog):
    """A cache's per-branch state and skip decisions inside compiled code: the result of eager SURF with
    the same cache, no code object past dynamo's recompile limit (it would fall back to eager there),
    nothing compiled by a second call with twice the steps, no per-step warning."""
    pipe, _, eager, decisions = surf_with_cache(install, CACHE_KW)
    _compile(pipe, how)
    torch._dynamo.reset()
    counters.clear()
    with surf_accel.patched(pipe, STAGED), caplog.at_level(logging.WARNING, logger="surf_accel"):
        out = pipe(generator=gen(0), **CACHE_KW).frames
        inner = getattr(pipe.transformer, "_orig_mod", pipe.transformer)
        if decisions is not None:
            assert teacache_stats(inner) == decisions
        frames = counters["frames"]["total"]
        graphs = _graphs_per_code()
        assert frames > 0 and graphs
        assert not [k for k in counters["unimplemented"] if "recompile limit" in k]  # nothing fell back to eager
        pipe(generator=gen(1), **{**CACHE_KW, "num_inference_steps": 16})
    assert counters["frames"]["total"] == frames and _graphs_per_code() == graphs
    assert not [r for r in caplog.records if "recompiled" in r.getMessage()]
    torch.testing.assert_close(out, eager, atol=0, rtol=0)

"""SURF under diffusers' context parallelism (``transformer.enable_parallelism(ContextParallelConfig(
ulysses_degree=2))``), on 2 CPU processes over gloo (``cp_worker.py`` under torchrun; diffusers 0.42.1
needs ``torch.accelerator.device_count`` patched to 1 there) and, GPU-marked, on 2 CUDA devices over
NCCL. The oracle of every case is the same rank's run of the same call before parallelism was
enabled. The refusals that need no second process run in this one, on a config diffusers would have
recorded (``ParallelConfig`` on the transformer), and are raised before any model runs."""

import os
import signal
import subprocess
import sys

import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from surf_accel.api import plan_for
from surf_accel.ops.sparse_attention import SparsePattern
from tests.integrations.accelerators.cp_worker import CFG, KW, REFUSED_KW
from tests.tiny_pipelines import gen, hunyuan_embeds, tiny_hunyuan_t2v, tiny_wan_t2v

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cp_worker.py")


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def ranks(request, tmp_path_factory) -> list[dict]:
    """Both ranks' saved outputs of one torchrun of ``cp_worker.py``."""
    device = request.param
    if device == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip("Ulysses degree 2 on CUDA needs 2 devices (one rank per device)")
    out = tmp_path_factory.mktemp(f"cp_{device}")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", WORKER,
                             str(out), device], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks: a hung collective never returns
        log, _ = proc.communicate()
        pytest.fail("the 2-process run timed out:\n" + log[-3000:])
    assert proc.returncode == 0, log[-5000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_dense_surf_under_ulysses_is_bit_exact(ranks):
    for r in ranks:
        assert torch.equal(r["dense_cp"], r["dense_ref"])


@pytest.mark.parametrize("case", ["windows", "sparse"])
def test_windows_and_sparse_preview_under_ulysses_match_one_process(ranks, case):
    """Each rank runs the window kernel (the sparse pattern) on the whole grid for its heads."""
    for r in ranks:
        # the windows are really on: the output differs from dense attention's
        assert (r[f"{case}_ref"] - r["dense_ref"]).abs().max() > 1e-3
        torch.testing.assert_close(r[f"{case}_cp"], r[f"{case}_ref"], rtol=1e-5, atol=1e-5)


def test_the_planner_snaps_the_preview_and_the_snapped_plan_runs(ranks):
    for r in ranks:
        assert r["snap_plan"] == [("preview", 64, 96), ("preview_low", 32, 48), ("refine", 96, 96)]
        assert "48x48 px has 27 tokens" in r["snap_messages"][-1]
        # the oracle: one process given the snapped optimal size explicitly
        assert torch.equal(r["snap_cp"], r["snap_ref"])


def test_first_block_cache_skips_the_same_calls_on_every_rank(ranks):
    """Its rule reads the whole sequence's residual (each rank's own shard made the ranks skip different
    calls and wait on each other's all-to-all until gloo timed out)."""
    for r in ranks:
        assert r["fbc_ref_tail_calls"] == 12 < 24  # the threshold really skips
        assert r["fbc_cp_tail_calls"] == r["fbc_ref_tail_calls"]
        torch.testing.assert_close(r["fbc_cp"], r["fbc_ref"], rtol=1e-5, atol=1e-5)


def test_a_request_that_cannot_split_is_refused_before_any_model_runs(ranks):
    for r in ranks:
        assert "refine stage at 80x80 px has 75 tokens" in r["refused"] and "degree 2" in r["refused"]
        assert r["refused_calls"] == []


def test_unpatch_is_bit_exact_after_surf_under_context_parallelism(ranks):
    for r in ranks:
        assert torch.equal(r["unpatched_after"], r["unpatched_before"])
        assert r["processors_restored"]


def _recorded(pipe, **cp):
    """What ``enable_parallelism`` records on the model, without the process group it needs."""
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    pipe.transformer._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(**cp))
    return pipe


def _count_calls(pipe) -> list:
    calls = []
    for name in ("text_encoder", "transformer"):
        getattr(pipe, name).register_forward_pre_hook(lambda *a, n=name: calls.append(n))
    return calls


@pytest.mark.parametrize("extra", [dict(window=(1, 2, 2)), dict(preview_attention=SparsePattern((1, 1, 1)))],
                         ids=["windows", "sparse"])
def test_windows_and_sparse_attention_refuse_ring_attention_naming_ulysses(extra):
    pipe = _recorded(tiny_wan_t2v("euler"), ring_degree=2)
    procs = dict(pipe.transformer.attn_processors)
    with surf_accel.patched(pipe, CFG.replace(**extra)):
        with pytest.raises(NotImplementedError, match=r"Ulysses context parallelism only.*ring_degree=2"):
            pipe(generator=gen(0), **KW)
    assert dict(pipe.transformer.attn_processors) == procs


def test_heads_the_ulysses_degree_does_not_divide_are_refused_before_any_model_runs():
    pipe = _recorded(tiny_wan_t2v("euler", heads=3, head_dim=8), ulysses_degree=2)
    calls = _count_calls(pipe)
    with surf_accel.patched(pipe, CFG):
        with pytest.raises(ValueError, match=r"3 attention heads, which Ulysses degree 2 does not divide"):
            pipe(generator=gen(0), **KW)
    assert calls == []


def test_a_stage_that_cannot_split_is_refused_before_the_text_encoder_runs():
    pipe = _recorded(tiny_wan_t2v("euler"), ulysses_degree=2)
    calls = _count_calls(pipe)
    with surf_accel.patched(pipe, CFG):
        with pytest.raises(ValueError, match=r"refine stage at 80x80 px has 75 tokens"):
            pipe(generator=gen(0), **REFUSED_KW)
    assert calls == []


def test_a_cache_enabled_after_parallelism_is_refused_before_the_transformer_runs():
    from diffusers import FirstBlockCacheConfig
    from diffusers.hooks.context_parallel import apply_context_parallel

    pipe = _recorded(tiny_wan_t2v("euler"), ulysses_degree=2)
    tr = pipe.transformer
    apply_context_parallel(tr, tr._parallel_config.context_parallel_config, tr._cp_plan)  # the hooks, no mesh
    tr.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    calls = _count_calls(pipe)
    with surf_accel.patched(pipe, CFG):
        with pytest.raises(ValueError, match=r"FirstBlockCache was enabled .* after enable_parallelism"):
            pipe(generator=gen(0), **KW)
    assert "transformer" not in calls  # accelerators are checked after the prompts are encoded


def test_teacache_applied_after_parallelism_is_refused():
    from surf_accel.integrations.accelerators.surf_teacache import SurfTeaCacheConfig, apply_teacache

    pipe = _recorded(tiny_wan_t2v("euler"), ulysses_degree=2)
    with pytest.raises(ValueError, match=r"apply TeaCache before enable_parallelism"):
        apply_teacache(pipe.transformer, SurfTeaCacheConfig(threshold=0.08, model="wan2.1-t2v-1.3b"))


def test_hunyuan_video_without_a_diffusers_cp_plan_is_refused():
    pipe = _recorded(tiny_hunyuan_t2v(), ulysses_degree=2)
    with surf_accel.patched(pipe, SurfConfig.identity()):
        with pytest.raises(NotImplementedError, match=r"HunyuanVideoTransformer3DModel .* no context-parallel plan"):
            pipe(height=32, width=32, num_frames=5, num_inference_steps=2, output_type="latent",
                 **hunyuan_embeds())


def test_uneven_ulysses_anything_needs_no_even_split():
    """``ulysses_anything`` shards unevenly: the plan keeps its sizes (the run needs two processes)."""
    pipe = _recorded(tiny_wan_t2v("euler"), ulysses_degree=2, ulysses_anything=True)
    plan = plan_for(pipe, height=80, width=80, num_frames=9, num_inference_steps=4, config=CFG)
    assert [(s.height, s.width) for s in plan.stages] == [(64, 64), (32, 32), (80, 80)]

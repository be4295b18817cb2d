"""SURF under diffusers' context parallelism (``transformer.enable_parallelism(ContextParallelConfig(
ulysses_degree=2))``). It cannot run on CPU processes: diffusers 0.42.1's ``_resolve_parallel_config``
picks each rank's device as ``rank % torch.accelerator.device_count()``, a ZeroDivisionError without an
accelerator, so the 2-process run is GPU-marked (2 CUDA devices, NCCL). On the CPU: SURF's window and
sparse processors, which attend over the whole token grid, refuse a context-parallel transformer."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from surf_accel.integrations.accelerators.sparse_attention import SparsePattern
from tests.tiny_pipelines import T2V_KW, gen, tiny_wan_t2v

KW = {**T2V_KW, "height": 64, "width": 64, "num_frames": 9, "output_type": "latent"}
CFG = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2, handoff="latent")


@pytest.mark.parametrize("extra", [dict(window=(1, 2, 2)), dict(preview_attention=SparsePattern((1, 1, 1)))],
                         ids=["windows", "sparse"])
def test_window_and_sparse_attention_refuse_context_parallel(extra):
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    pipe = tiny_wan_t2v("euler")
    procs = dict(pipe.transformer.attn_processors)
    # what enable_parallelism records on the model (it cannot run here: see the module docstring)
    pipe.transformer._parallel_config = ParallelConfig(context_parallel_config=ContextParallelConfig(ulysses_degree=2))
    with surf_accel.patched(pipe, CFG.replace(**extra)):
        with pytest.raises(NotImplementedError, match=r"window=None, preview_attention=None"):
            pipe(generator=gen(0), **KW)
    assert dict(pipe.transformer.attn_processors) == procs


SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[1])
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(rank)
    import surf_accel
    from diffusers import ContextParallelConfig
    from tests.integrations.accelerators.test_context_parallel import CFG, KW
    from tests.tiny_pipelines import tiny_wan_t2v
    pipe = tiny_wan_t2v("euler").to("cuda")
    with surf_accel.patched(pipe, CFG):
        ref = pipe(generator=torch.Generator("cuda").manual_seed(0), **KW).frames
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    with surf_accel.patched(pipe, CFG):
        out = pipe(generator=torch.Generator("cuda").manual_seed(0), **KW).frames
    err = (out - ref).abs().max().item()
    print(f"rank {rank} max abs diff {err}")
    assert err < 1e-4, err
    dist.destroy_process_group()
""")


@pytest.mark.gpu
def test_surf_under_ulysses_context_parallel_matches_one_process(tmp_path):
    """The preview, the switch and the dense refine under Ulysses (2 ranks) give the one-process result."""
    if torch.cuda.device_count() < 2:
        pytest.skip("Ulysses degree 2 needs 2 CUDA devices (one rank per device)")
    script = tmp_path / "cp.py"
    script.write_text(SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), root],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

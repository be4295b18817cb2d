"""One rank of the 2-process context-parallel run of ``test_context_parallel.py`` (started by torchrun:
``cp_worker.py OUT_DIR cpu|cuda``). Every rank first runs each case in-process without parallelism
(the oracle), then enables Ulysses degree 2 on the same pipeline and runs each case again; it saves
all outputs to ``OUT_DIR/rank{r}.pt`` for the test to compare."""

import datetime
import sys

import torch
import torch.distributed as dist

import surf_accel
from surf_accel import SurfConfig
from surf_accel.api import plan_for
from surf_accel.ops.sparse_attention import SparsePattern
from tests.tiny_pipelines import T2V_KW, gen, tiny_wan_t2v

# every stage keeps >= 8 tokens per rank: a CPU GEMM over fewer rows can round differently from the
# same rows inside a larger one, so the split itself would change bits
KW = {**T2V_KW, "height": 128, "width": 128, "num_frames": 13, "output_type": "latent"}
CFG = SurfConfig(optimal_size=(64, 64), preview_steps=4, switch_step=2, refine_steps=2, handoff="latent")
CASES = {
    "dense": (CFG, KW),
    "windows": (CFG.replace(window=(2, 8, 8)), KW),  # temporal windows: 2 latent frames, the whole frame
    "sparse": (CFG.replace(preview_attention=SparsePattern((1, 1, 1), (1, 1, 1), 1)), KW),
}
# the planner's own preview size: the request's 96x96 (its optimal size is not below it), whose low part
# 48x48 has 3 x 3 x 3 = 27 tokens; the nearest that split over 2, one low patch away, is 64x96 (18 tokens)
SNAP_KW = {**KW, "height": 96, "width": 96, "num_frames": 9}
SNAP_CFG = CFG.replace(optimal_size=None)
SNAP_ORACLE = CFG.replace(optimal_size=(64, 96))
# FirstBlockCache on 8 steps (its threshold 0.1 computes the tail block at 12 of 24 calls in one process)
CACHE_KW = {**KW, "num_inference_steps": 8}
CACHE_CFG = CFG.replace(preview_steps=8, switch_step=3, refine_steps=4)
# 80x80 at 9 frames: the refine stage has 3 x 5 x 5 = 75 tokens, which 2 ranks cannot split
REFUSED_KW = {**KW, "height": 80, "width": 80, "num_frames": 9}


def run(pipe, cfg, kw):
    if cfg is None:
        return pipe(generator=gen(0), **kw).frames
    with surf_accel.patched(pipe, cfg):
        return pipe(generator=gen(0), **kw).frames


def fbc_run(pipe) -> tuple[torch.Tensor, int]:
    """A FirstBlockCache run that really skips (installed beforehand): output, tail block calls."""
    calls = []
    hook = pipe.transformer.blocks[-1].ffn.register_forward_pre_hook(lambda *a: calls.append(1))
    out = run(pipe, CACHE_CFG, CACHE_KW)
    hook.remove()
    return out, len(calls)


def main(out_dir: str, device: str) -> None:
    from diffusers import ContextParallelConfig, FirstBlockCacheConfig

    if device == "cpu":
        # diffusers 0.42.1 puts rank r on device r % torch.accelerator.device_count(), 0 on a CPU-only torch
        torch.accelerator.device_count = lambda: 1
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    else:
        dist.init_process_group("nccl", timeout=datetime.timedelta(seconds=120))
        torch.cuda.set_device(dist.get_rank())
    rank = dist.get_rank()
    pipe = tiny_wan_t2v("euler").to(device)
    out = {}
    for name, (cfg, kw) in CASES.items():
        out[f"{name}_ref"] = run(pipe, cfg, kw)
    out["snap_ref"] = run(pipe, SNAP_ORACLE, SNAP_KW)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    out["fbc_ref"], out["fbc_ref_tail_calls"] = fbc_run(pipe)

    # a cache goes on before parallelism: its head-block hook must see the block's sharded input

    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    out["fbc_cp"], out["fbc_cp_tail_calls"] = fbc_run(pipe)
    pipe.transformer.disable_cache()
    procs = dict(pipe.transformer.attn_processors)
    out["unpatched_before"] = run(pipe, None, KW)
    for name, (cfg, kw) in CASES.items():
        out[f"{name}_cp"] = run(pipe, cfg, kw)
    out["snap_cp"] = run(pipe, SNAP_CFG, SNAP_KW)
    plan = plan_for(pipe, height=SNAP_KW["height"], width=SNAP_KW["width"], num_frames=SNAP_KW["num_frames"],
                    num_inference_steps=SNAP_KW["num_inference_steps"], config=SNAP_CFG)
    out["snap_plan"] = [(s.name, s.height, s.width) for s in plan.stages]
    out["snap_messages"] = list(plan.messages)

    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a, n=n: calls.append(n))
             for n, m in (("text_encoder", pipe.text_encoder), ("transformer", pipe.transformer))]
    try:
        run(pipe, CFG, REFUSED_KW)
        out["refused"] = None
    except ValueError as e:
        out["refused"] = str(e)
    out["refused_calls"] = calls
    for h in hooks:
        h.remove()

    out["unpatched_after"] = run(pipe, None, KW)
    out["processors_restored"] = all(a is b for a, b in zip(procs.values(), pipe.transformer.attn_processors.values()))
    torch.save({k: v.cpu() if torch.is_tensor(v) else v for k, v in out.items()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Offload with SURF (with its per-stage attention: a sparse preview and a windowed refine, and with a
cache): diffusers' group offloading and model CPU offload serve every transformer call in order and
leave the result unchanged. What the CPU cannot show is GPU-marked: sequential CPU offload (accelerate's meta-device
round trip fails on this CPU torch even without SURF: ``set_module_tensor_to_device`` raises a
``TypeError`` from ``Parameter.__new__``), weights really moving between devices, and group
offloading's CUDA-stream prefetch (it records the first forward's layer order and prefetches by it)."""

import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from surf_accel.integrations.accelerators import teacache_stats
from surf_accel.integrations.accelerators.sparse_attention import SparsePattern
from tests.integrations.accelerators.common import STAGED, WAN_KW, install_cache_dit, install_fbc, install_teacache, \
    surf_with_cache
from tests.test_api import offload_recorder
from tests.tiny_pipelines import T2V_KW, gen, tiny_wan_t2v

KW = {**T2V_KW, "height": 64, "width": 64, "num_frames": 9, "output_type": "latent"}
CFG = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2, handoff="pixel",
                 window=(1, 2, 2), preview_attention=SparsePattern((1, 1, 1), (1, 1, 1), 1))
CALLS = 2 * (4 + 2)  # transformer calls: (preview + refine steps) x 2 CFG branches
CACHE_KW = {**WAN_KW, "output_type": "latent"}  # STAGED: three 4-step stages
CACHE_CALLS = 2 * 12


@pytest.fixture(scope="module")
def reference():
    pipe = tiny_wan_t2v("euler")
    with surf_accel.patched(pipe, CFG):
        return pipe(generator=gen(0), **KW).frames


def _record_group_onloads(monkeypatch, transformer):
    from diffusers.hooks.group_offloading import ModuleGroup

    names = {m: n for n, m in transformer.named_modules()}
    seen = []
    original = ModuleGroup.onload_

    def onload_(self):
        seen.append(names.get(self.modules[0], "?") if self.modules else "params")
        return original(self)

    monkeypatch.setattr(ModuleGroup, "onload_", onload_)
    return seen


@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
def test_group_offload_serves_every_call_in_block_order(offload_type, reference, monkeypatch):
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    pipe = tiny_wan_t2v("euler")
    t = pipe.transformer
    cpu = torch.device("cpu")
    kw = dict(num_blocks_per_group=1) if offload_type == "block_level" else {}
    t.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type=offload_type, **kw)
    procs = dict(t.attn_processors)
    seen = _record_group_onloads(monkeypatch, t)
    with surf_accel.patched(pipe, CFG):
        out = pipe(generator=gen(0), **KW).frames
    assert len(seen) % CALLS == 0 and seen
    per_call = len(seen) // CALLS
    first = seen[:per_call]
    assert seen == first * CALLS  # the same groups in the same order at every stage and branch
    if offload_type == "block_level":
        blocks = [n for n in first if n.startswith("blocks.")]
        assert blocks == [f"blocks.{i}" for i in range(len(t.blocks))]
    else:  # leaf level: every block's attention and FFN layers, in block order
        order = [int(n.split(".")[1]) for n in first if n.startswith("blocks.")]
        assert order == sorted(order) and set(order) == set(range(len(t.blocks)))
        # SURF's sparse and window processors reach attn1's projections through their offload hooks
        for i in range(len(t.blocks)):
            assert [n for n in first if n.startswith(f"blocks.{i}.attn1.")] == [
                f"blocks.{i}.attn1.{x}" for x in ("to_q", "to_k", "to_v", "to_out.0")]
    torch.testing.assert_close(out, reference, atol=0, rtol=0)
    assert dict(t.attn_processors) == procs
    assert all(getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook(_GROUP_OFFLOADING)
               for m in (t.blocks if offload_type == "block_level" else [t.blocks[0].attn1.to_q]))


def test_model_cpu_offload_with_sparse_preview_and_windows(reference, monkeypatch):
    pipe = tiny_wan_t2v("euler")
    pipe.enable_model_cpu_offload(device="cpu")
    seen = offload_recorder(monkeypatch, pipe, ("text_encoder", "transformer", "vae"))
    with surf_accel.patched(pipe, CFG):
        out = pipe(generator=gen(0), **KW).frames
    # text (cond, uncond), the preview's transformer calls, the pixel handoff's VAE decode + encode, the
    # refine's transformer calls (output_type="latent": no final decode)
    assert seen == ["text_encoder"] * 2 + ["transformer"] * 8 + ["vae"] * 2 + ["transformer"] * 4
    torch.testing.assert_close(out, reference, atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["sequential", "group-stream", "model"])
def test_offload_on_gpu_equals_surf_without_offload(mode):
    """On a GPU: weights move to the device per call and back; group offloading with CUDA streams
    prefetches by the first forward's layer order, which SURF's stages (other resolutions, other
    attention processors) must not upset."""
    cuda = torch.device("cuda")
    ref_pipe = tiny_wan_t2v("euler").to(cuda)
    with surf_accel.patched(ref_pipe, CFG):
        ref = ref_pipe(generator=torch.Generator("cuda").manual_seed(0), **KW).frames
    pipe = tiny_wan_t2v("euler")
    if mode == "sequential":
        pipe.enable_sequential_cpu_offload()
    elif mode == "model":
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(cuda)
        pipe.transformer.to("cpu")
        pipe.transformer.enable_group_offload(onload_device=cuda, offload_device=torch.device("cpu"),
                                              offload_type="block_level", num_blocks_per_group=1, use_stream=True)
    with surf_accel.patched(pipe, CFG):
        out = pipe(generator=torch.Generator("cuda").manual_seed(0), **KW).frames
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert next(pipe.transformer.parameters()).device.type in ("cpu", "meta")


@pytest.mark.parametrize("cache_first", [True, False], ids=["cache-then-offload", "offload-then-cache"])
@pytest.mark.parametrize("install", [install_teacache, install_fbc, install_cache_dit],
                         ids=["teacache", "first-block-cache", "cache-dit"])
@pytest.mark.parametrize("offload", ["group", "model"])
def test_offload_with_a_cache_equals_the_cache_without_offload(offload, install, cache_first, monkeypatch):
    """SURF + a cache under diffusers' offloading (hooks installed in either order): the result and the
    cache's decisions of SURF + the cache without offload, the offload hooks still serving each call."""
    _, _, ref, alone = surf_with_cache(install, CACHE_KW)

    pipe = tiny_wan_t2v("euler")
    t = pipe.transformer
    if cache_first:
        install(t)
    if offload == "group":
        t.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                               offload_type="block_level", num_blocks_per_group=1)
        seen = _record_group_onloads(monkeypatch, t)
    else:
        pipe.enable_model_cpu_offload(device="cpu")
        seen = offload_recorder(monkeypatch, pipe, ("transformer",))
    if not cache_first:
        install(t)
    with surf_accel.patched(pipe, STAGED):
        out = pipe(generator=gen(0), **CACHE_KW).frames
        if alone is not None:
            assert teacache_stats(t) == alone
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    if offload == "model":
        assert seen == ["transformer"] * CACHE_CALLS
    elif install is not install_teacache:  # FirstBlockCache and cache-dit (Fn_compute_blocks=1) run the first block
        assert seen.count("blocks.0") == CACHE_CALLS
    else:  # TeaCache's hooks inside the offload hooks: every call onloads; outside: computed calls only
        computed = sum(d["computed"] for v in alone.values() for d in v.values())
        assert computed < CACHE_CALLS
        assert seen.count("blocks.1") == (CACHE_CALLS if cache_first else computed)


def _sibling():
    """A training-free refiner of the tiny pipeline's family: one block instead of two, same interface."""
    from tests.tiny_pipelines import tiny_transformer

    return tiny_transformer(num_layers=1, seed=7)


def test_model_cpu_offload_runs_a_refiner_transformer_as_a_component(monkeypatch):
    """With model CPU offload, the refine by another transformer (not a pipeline component) runs after
    every component is offloaded, on the offload device, and goes home after; the result is SURF's
    without offload."""
    from accelerate.hooks import UserCpuOffloadHook

    ref_pipe = tiny_wan_t2v("euler")
    with surf_accel.patched(ref_pipe, CFG, refiner=_sibling()):
        reference = ref_pipe(generator=gen(0), **KW).frames
    pipe = tiny_wan_t2v("euler")
    pipe.enable_model_cpu_offload(device="cpu")
    refiner = _sibling()
    seen = offload_recorder(monkeypatch, pipe, ("text_encoder", "transformer", "vae"))
    offload = UserCpuOffloadHook.offload
    monkeypatch.setattr(UserCpuOffloadHook, "offload", lambda self: (seen.append("offload"), offload(self))[1])
    to = refiner.to
    monkeypatch.setattr(refiner, "to", lambda *a, **k: (seen.append(f"refiner to {a[0]}"), to(*a, **k))[1])
    refiner.register_forward_pre_hook(lambda m, a: seen.append("refiner"))
    with surf_accel.patched(pipe, CFG, refiner=refiner):
        out = pipe(generator=gen(0), **KW).frames
    components = sum(1 for c in pipe.components.values() if isinstance(c, torch.nn.Module))
    assert seen == (["text_encoder"] * 2 + ["transformer"] * 8 + ["vae"] * 2 + ["offload"] * components
                    + [f"refiner to {pipe._offload_device}"] + ["refiner"] * 4 + ["refiner to cpu"])
    torch.testing.assert_close(out, reference, atol=0, rtol=0)


def test_group_offload_on_a_refiner_transformer(monkeypatch):
    """Group offload enabled on the refiner by the user serves each of its calls in block order."""
    ref_pipe = tiny_wan_t2v("euler")
    with surf_accel.patched(ref_pipe, CFG, refiner=_sibling()):
        reference = ref_pipe(generator=gen(0), **KW).frames
    pipe = tiny_wan_t2v("euler")
    refiner = _sibling()
    cpu = torch.device("cpu")
    refiner.enable_group_offload(onload_device=cpu, offload_device=cpu, offload_type="block_level",
                                 num_blocks_per_group=1)
    seen = _record_group_onloads(monkeypatch, refiner)
    with surf_accel.patched(pipe, CFG, refiner=refiner):
        out = pipe(generator=gen(0), **KW).frames
    assert [n for n in seen if n.startswith("blocks.")] == ["blocks.0"] * 4  # 2 refine steps x 2 branches
    torch.testing.assert_close(out, reference, atol=0, rtol=0)

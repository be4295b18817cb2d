"""LoRAs with SURF on a tiny WanPipeline: a LoRA built in process (random A and B, so it changes the
output), loaded through diffusers' ``load_lora_weights`` or as a peft adapter, before or after
``patch``; ``set_adapters`` and fuse/unfuse between calls. The oracle is the unpatched pipeline with
the same LoRA."""

import logging

import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

import surf_accel
from surf_accel import SurfConfig
from tests.tiny_pipelines import T2V_KW, gen, tiny_transformer, tiny_wan_t2v

KW = {**T2V_KW, "height": 64, "width": 64, "num_frames": 9, "output_type": "latent"}
SURF = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2, handoff="latent")
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def lora_state_dict() -> dict[str, torch.Tensor]:
    """A rank-2 LoRA on the tiny transformer's attention projections in diffusers' format, with a
    nonzero B (peft initialises B to zero, which would make the LoRA a no-op)."""
    model = tiny_transformer()
    model.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS), adapter_name="tmp")
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return {f"transformer.{k}": v for k, v in get_peft_model_state_dict(model, adapter_name="tmp").items()}


def with_lora(pipe, name: str = "style"):
    pipe.load_lora_weights(lora_state_dict(), adapter_name=name)
    return pipe


def run(pipe, seed: int = 0, **kw):
    return pipe(generator=gen(seed), **{**KW, **kw}).frames


@pytest.fixture(scope="module")
def plain():
    return run(tiny_wan_t2v())


@pytest.fixture(scope="module")
def with_style():
    return run(with_lora(tiny_wan_t2v()))


def test_the_lora_changes_the_output(plain, with_style):
    assert (with_style - plain).abs().max() > 1e-3


@pytest.mark.parametrize("order", ["lora-then-patch", "patch-then-lora"])
def test_identity_is_bit_exact_with_a_lora(order, with_style):
    pipe = tiny_wan_t2v()
    if order == "lora-then-patch":
        with_lora(pipe)
    surf_accel.patch(pipe, SurfConfig.identity())
    if order == "patch-then-lora":
        with_lora(pipe)
    assert torch.equal(run(pipe), with_style)
    surf_accel.unpatch(pipe)
    assert torch.equal(run(pipe), with_style)


def test_set_adapters_and_fuse_between_calls_follow_the_unpatched_pipeline():
    ref, pipe = with_lora(tiny_wan_t2v()), with_lora(tiny_wan_t2v())
    surf_accel.patch(pipe, SurfConfig.identity())
    for change in (lambda p: p.set_adapters("style", 0.5), lambda p: p.set_adapters("style", 0.0),
                   lambda p: p.set_adapters("style", 1.0), lambda p: p.fuse_lora(), lambda p: p.unfuse_lora(),
                   lambda p: p.disable_lora(), lambda p: p.enable_lora()):
        change(ref)
        change(pipe)
        assert torch.equal(run(pipe), run(ref))


def test_surf_refines_with_the_lora_and_a_zero_weight_is_no_lora():
    """SURF's preview and training-free refine both run the LoRA'd transformer: at weight 0 SURF equals
    SURF without the LoRA, at weight 1 it differs."""
    bare = tiny_wan_t2v()
    with surf_accel.patched(bare, SURF):
        without = run(bare)
    pipe = with_lora(tiny_wan_t2v())
    with surf_accel.patched(pipe, SURF):
        styled = run(pipe)
        pipe.set_adapters("style", 0.0)
        zero = run(pipe)
    assert torch.equal(zero, without)
    assert (styled - without).abs().max() > 1e-3


def test_peft_adapter_added_directly_reaches_every_stage():
    """A peft adapter added on the transformer (no diffusers loader) is part of the model SURF calls."""
    pipe = tiny_wan_t2v()
    pipe.transformer.load_lora_adapter(lora_state_dict(), prefix="transformer", adapter_name="direct")
    ref = with_lora(tiny_wan_t2v(), "direct")
    with surf_accel.patched(pipe, SURF), surf_accel.patched(ref, SURF):
        assert torch.equal(run(pipe), run(ref))


def test_a_refine_by_another_model_warns_that_the_lora_does_not_reach_it(caplog):
    pipe = with_lora(tiny_wan_t2v())
    with caplog.at_level(logging.WARNING, logger="surf_accel"):
        with surf_accel.patched(pipe, SURF, refiner=tiny_transformer(num_layers=1, seed=7)):
            run(pipe)
    warned = [r.getMessage() for r in caplog.records if "LoRA" in r.getMessage()]
    assert len(warned) == 1 and "['style']" in warned[0] and "refiner transformer" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="surf_accel"):
        with surf_accel.patched(pipe, SURF):  # the base model refines: the LoRA reaches it, no warning
            run(pipe)
    assert not [r for r in caplog.records if "LoRA" in r.getMessage()]

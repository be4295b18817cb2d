"""``surf_accel.training.plan``: the estimate of a run against measurements of real models."""

import contextlib
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel

from surf_accel import registry
from surf_accel.cost_model import TransformerSpec, forward_flops
from surf_accel.toyworld import load_pipeline
from surf_accel.training.config import ModelConfig, config_from_dict, load_config
from surf_accel.training.model import build_transformer
from surf_accel.training.plan import GIB, GPUS, activation_bytes, plan

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "refiner-wan2.1-14b-720p.yaml"
TINY = dict(patch_size=[1, 2, 2], num_attention_heads=4, attention_head_dim=16, in_channels=8, out_channels=8,
            text_dim=32, freq_dim=32, ffn_dim=160, num_layers=3, rope_max_seq_len=256)


def saved_bytes(model, latents, text, *, window=None, amp=False) -> int:
    """Bytes autograd saves for the backward in one forward of ``model`` (unique storages, the
    parameters and autocast's bf16 copies of them left out: those are model state, not activations)."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    copies = [q.to(torch.bfloat16) for p in model.parameters() for q in ((p, p.t()) if p.ndim == 2 else (p,))]
    ctx = registry.training_windows(model, window) if window else contextlib.nullcontext()
    with ctx, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            model(hidden_states=latents, timestep=torch.tensor([500.0] * latents.shape[0]),
                  encoder_hidden_states=text, return_dict=False)
    total = 0
    for ptr, t in saved.items():
        if ptr in params or (t.dtype == torch.bfloat16 and any(c.shape == t.shape and torch.equal(c, t)
                                                               for c in copies)):
            continue
        total += t.untyped_storage().nbytes()
    return total


@pytest.mark.parametrize("window", [None, (2, 4, 4)])
@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_estimate_matches_what_autograd_saves(window, amp, checkpointing):
    """Within 3% of the bytes a real forward saves, at two token counts (a count that scaled wrongly with
    the tokens, or missed a per-block tensor, fails at one of them) and a batch of two."""
    torch.manual_seed(0)
    model = WanTransformer3DModel(**TINY).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    for size, batch in (((3, 16, 16), 1), ((5, 24, 24), 1), ((5, 16, 24), 2)):
        x, text = torch.randn(batch, 8, *size), torch.randn(batch, 24, 32)
        got = saved_bytes(model, x, text, window=window, amp=amp)
        est = activation_bytes(TINY, size, 24, batch=batch, compute_bytes=2 if amp else 4,
                               gradient_checkpointing=checkpointing, window=window)
        assert est.saved == pytest.approx(got, rel=0.03), (size, batch)
        assert (est.recompute > 0) == checkpointing


def test_recompute_is_one_block_of_the_unckeckpointed_forward():
    """With checkpointing the backward recomputes one block: the difference between the saved bytes of
    a 2-block and a 1-block model without checkpointing, measured."""
    torch.manual_seed(0)
    size, text = (3, 16, 16), torch.randn(1, 24, 32)
    x = torch.randn(1, 8, *size)
    one, two = (saved_bytes(WanTransformer3DModel(**{**TINY, "num_layers": n}).train(), x, text) for n in (1, 2))
    est = activation_bytes(TINY, size, 24, gradient_checkpointing=True)
    rotary = 2 * 4 * math.prod(size) // 4 * TINY["attention_head_dim"]  # saved once, by the first block
    assert est.recompute - rotary == pytest.approx(two - one, rel=0.01)


def _toy_config(tmp_path, **model):
    return config_from_dict({"output_dir": str(tmp_path / "run"), "base": "toy",
                             "data": {"height": 64, "width": 64, "num_frames": 9, "num_clips": 10},
                             "model": model, "train": {"batch_size": 2}})


@pytest.mark.parametrize("model", [{"init": "scratch", "config": {"num_layers": 2, "ffn_dim": 96}},
                                   {"init": "base"}, {"init": "lora", "lora": {"rank": 4}}])
def test_parameter_counts_are_those_of_the_model_training_builds(tmp_path, model):
    """The plan builds nothing real; the counts equal the numel of the transformer the training loop
    builds from the real toy pipeline (LoRA: peft's adapters trainable, the base frozen)."""
    cfg = _toy_config(tmp_path, **model)
    real = build_transformer(load_pipeline(), ModelConfig(**{**model, "lora": model.get("lora", {})}))
    p = plan(cfg)
    assert p.params_total == sum(t.numel() for t in real.parameters())
    assert p.params_trainable == sum(t.numel() for t in real.parameters() if t.requires_grad)
    if model["init"] == "lora":
        assert 0 < p.params_trainable < p.params_total / 10
        # autocast copies every weight, frozen or not; gradients, moments and EMA are the adapters' only
        mixed = plan(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, mixed_precision="bf16")))
        Pt = p.params_trainable
        assert mixed.model_state == {"weights (fp32)": 4 * p.params_total, "gradients (fp32)": 4 * Pt,
                                     "AdamW moments (2 x fp32)": 8 * Pt,
                                     "bf16 weight copies (autocast)": 2 * p.params_total, "EMA (fp32)": 4 * Pt}
    else:
        assert p.params_trainable == p.params_total


def test_flops_time_state_and_disk_by_hand(tmp_path):
    """Every number of a small fsdp plan recomputed here from its definition."""
    cfg = config_from_dict({"output_dir": str(tmp_path / "run"), "base": "toy",
                            "data": {"height": 64, "width": 96, "num_frames": 17, "num_clips": 30},
                            "base_pairs": {"num": 5},
                            "model": {"config": {"num_layers": 2}, "window": [2, 1000, 1000]},
                            "train": {"batch_size": 2, "grad_accum": 3, "strategy": "fsdp", "mixed_precision": "bf16",
                                      "gradient_checkpointing": True, "ema_decay": 0.99,
                                      "curriculum": [{"steps": 10, "frames": 9}, {"steps": 20, "batch_size": 1}]}})
    p = plan(cfg, gpu="A100-40GB", processes=4, caption_tokens=7, mfu=0.5)
    tcfg = json.loads((REPO / "surf_accel/toyworld/pipeline/transformer/config.json").read_text())
    # the toy VAE: 8 latent channels, 4x spatial and temporal; patch (1, 2, 2); 4 heads of 32
    assert [(ph.latent_size, ph.tokens) for ph in p.phases] == [((3, 16, 24), 3 * 8 * 12), ((5, 16, 24), 5 * 8 * 12)]
    spec = TransformerSpec.from_config({**tcfg, "num_layers": 2}, text_len=512)
    for ph, batch in zip(p.phases, (2, 1)):
        f = forward_flops(spec, ph.latent_size, (2, 1000, 1000))
        assert ph.forward_flops == f["linear"] + f["attention"]
        assert ph.step_flops == pytest.approx(ph.forward_flops * 4 * batch * 3 * 4)  # checkpointing, accum, processes
        assert ph.step_seconds == pytest.approx(ph.step_flops / (312e12 * 0.5 * 4))
    assert p.seconds == pytest.approx(10 * p.phases[0].step_seconds + 20 * p.phases[1].step_seconds)
    P = p.params_total
    block = sum(v.numel() for v in build_transformer(load_pipeline(), ModelConfig(config={"num_layers": 2}))
                .blocks[0].parameters())
    assert p.model_state == {"weights (fp32)": 4 * P // 4, "gradients (fp32)": 4 * P // 4,
                             "AdamW moments (2 x fp32)": 8 * P // 4, "bf16 weight copies (autocast)": 2 * P,
                             "largest gathered unit (fp32 weights + grads)": max(8 * block, 8 * (P - 2 * block)),
                             "EMA (fp32)": 4 * P // 4}
    # z_hr + z_lr: 2 x 8 x 5 x 16 x 24 float32; 7 tokens x 64 (the toy UMT5's d_model) in base_dtype
    # (float32); 16 B
    assert p.pair_bytes == 2 * 4 * 8 * 5 * 16 * 24 + 7 * 64 * 4 + 16
    assert p.disk_bytes == 35 * p.pair_bytes
    assert p.peak_bytes == sum(p.model_state.values()) + max(ph.activations.peak for ph in p.phases)
    assert p.warnings == ()


def test_a_run_too_large_for_the_gpu_is_warned_with_the_knobs(tmp_path):
    cfg = config_from_dict({"output_dir": str(tmp_path / "run"), "base": "toy",
                            "data": {"height": 256, "width": 256, "num_frames": 65},
                            "model": {"config": {"num_layers": 8, "ffn_dim": 4096, "num_attention_heads": 8,
                                                 "attention_head_dim": 128}},
                            "train": {"batch_size": 16}})
    p = plan(cfg, gpu="L40S")
    assert p.peak_bytes > 48 * GIB
    # fp32 matmuls: TF32, half the bf16 peak, at the default 40%
    assert p.phases[0].step_seconds == pytest.approx(p.phases[0].step_flops / (362e12 / 2 * 0.4))
    [w] = p.warnings
    assert "exceeds the L40S's 48 GiB" in w
    for knob in ("gradient_checkpointing", "fsdp", "batch_size", "mixed_precision: bf16"):
        assert knob in w


def test_refused_configs_are_refused_before_anything_loads(tmp_path):
    with pytest.raises(ValueError, match="does not take: nlayers"):
        plan(_toy_config(tmp_path, config={"nlayers": 2}))
    with pytest.raises(ValueError, match="text_dim"):
        plan(_toy_config(tmp_path, config={"text_dim": 16}))
    bad = config_from_dict({"output_dir": str(tmp_path / "r"), "data": {"height": 66, "width": 64}})
    with pytest.raises(ValueError, match="grid"):
        plan(bad)
    with pytest.raises(ValueError, match="unknown GPU"):
        plan(_toy_config(tmp_path), gpu="H1000")


def write_wan21_14b_configs(folder: Path) -> Path:
    """The config files of a Wan2.1-T2V-14B Diffusers folder (no weights): the transformer's shape from
    the Wan2.1 model card (dim 5120 = 40 x 128, FFN 13824, 40 layers), UMT5-XXL's d_model 4096, the
    Wan VAE's 16 channels at 8x spatial and 4x temporal compression."""
    files = {"model_index.json": {"_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
                                  "vae": ["diffusers", "AutoencoderKLWan"],
                                  "text_encoder": ["transformers", "UMT5EncoderModel"]},
             "transformer/config.json": {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2],
                                         "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 16,
                                         "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824,
                                         "num_layers": 40, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
                                         "eps": 1e-06, "image_dim": None, "added_kv_proj_dim": None,
                                         "rope_max_seq_len": 1024},
             "vae/config.json": {"_class_name": "AutoencoderKLWan", "z_dim": 16, "scale_factor_spatial": 8,
                                 "scale_factor_temporal": 4},
             "text_encoder/config.json": {"architectures": ["UMT5EncoderModel"], "d_model": 4096, "dtype": "float32"}}
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    return folder


def test_the_shipped_real_scale_recipe_plans(tmp_path, monkeypatch):
    """docs/examples' Wan2.1-14B recipe validates and gives the 1.3B refiner's size: its block weights
    as the cost model's catalogue counts them for wan2.1-1.3b, a curriculum of 21 then 81 frames."""
    from surf_accel.catalogue import models

    monkeypatch.setenv("WAN21_14B", str(write_wan21_14b_configs(tmp_path / "wan14b")))
    monkeypatch.setenv("CLIPS", str(tmp_path / "clips"))
    p = plan(load_config(EXAMPLE), gpu="H100", processes=8)
    ref = models()["wan2.1-1.3b"]
    blocks = TransformerSpec.from_config(p.transformer_config).params
    assert blocks == ref.params
    assert 1.2e9 < p.params_total < 1.5e9
    assert [(ph.frames, ph.latent_size, ph.tokens, ph.steps) for ph in p.phases] == [
        (21, (6, 90, 160), 6 * 45 * 80, 1000), (81, (21, 90, 160), 21 * 45 * 80, 4000)]
    assert p.peak_bytes < GPUS["H100"].memory_gib * GIB and p.warnings == ()
    # a pair: two 16 x 21 x 90 x 160 float32 latents, a 100-token caption of 4096 in bf16 (base_dtype), 16 B
    assert p.pair_bytes == 2 * 4 * 16 * 21 * 90 * 160 + 100 * 4096 * 2 + 16
    # a hand count of the matmuls of one forward (2 FLOPs a multiply-add): every video token through the
    # block weights (self q k v o, cross q o, FFN), the 512 text tokens through cross k v, self-attention
    # over the 4 x 45 x 80 tokens of a window, cross-attention over the text; the embeddings are the rest
    N, d, f, Lt = 30, 1536, 8960, 512
    for ph in p.phases:
        L, K = ph.tokens, 4 * 45 * 80
        hand = 2 * N * (L * (6 * d * d + 2 * d * f) + Lt * 2 * d * d) + 4 * N * d * L * (K + Lt)
        assert ph.forward_flops == pytest.approx(hand, rel=0.01)
        assert ph.step_flops == pytest.approx(ph.forward_flops * 4 * 24)  # checkpointing; 8 x 1 x 3 clips

import pytest
import torch

from surf_accel.config import SurfConfig
from surf_accel.cost_model import MODELS, WAN_VAE, TransformerSpec, estimate, forward_flops, measure_vae


def test_forward_flops_match_flop_counter():
    """The analytic count against torch's FLOP counter on a real (tiny) WanTransformer3DModel."""
    from torch.utils.flop_counter import FlopCounterMode

    from tests.tiny_pipelines import tiny_transformer

    tr = tiny_transformer(num_layers=2, heads=2, head_dim=16, ffn_dim=64)
    spec = TransformerSpec.from_config(tr.config, text_len=16)
    x = torch.randn(1, 16, 3, 8, 12)
    with FlopCounterMode(display=False) as fc:
        tr(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 16, 32))
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    # torch's counter does not see CPU SDPA kernels: compare the matmul/conv part (it also counts the
    # small timestep MLP, which the model leaves out)
    measured = sum(v for k, v in counts.items() if "attention" not in k)
    fl = forward_flops(spec, (3, 8, 12))
    assert fl["linear"] == pytest.approx(measured, rel=0.05)
    # attention: QK^T and PV over 72 video tokens (self) and 16 text tokens (cross), 2 layers, d = 32
    assert fl["attention"] == 2 * (4 * 72 * 72 * 32 + 4 * 72 * 16 * 32)


def test_windows_cut_attention_only():
    spec = MODELS["wan2.1-1.3b"]
    dense = forward_flops(spec, (21, 90, 160))
    win = forward_flops(spec, (21, 90, 160), window=(4, 100, 100))
    assert win["linear"] == dense["linear"] and win["attention"] < dense["attention"] / 3


def test_estimate_paper_720p_and_1080p():
    e720 = estimate("wan2.1-14b", 720, 1280, 81)
    assert e720.baseline[0].steps == 50 and e720.baseline[0].passes_per_step == 2
    assert [s.name for s in e720.surf] == ["preview", "preview_low", "refine"]
    assert 2.0 < e720.speedup < e720.floor
    e1080 = estimate("wan2.1-14b", 1088, 1920, 81)
    assert e1080.speedup > e720.speedup  # the refine stage's share shrinks relative to the baseline
    # a small trained refiner (the paper's ~1B) with temporal windows: the paper's ~12.6x at 720p
    fast = estimate("wan2.1-14b", 720, 1280, 81, SurfConfig(window=(4, 1000, 1000)), refiner="wan2.1-1.3b")
    assert 9 < fast.speedup < 16
    assert "predicted speedup" in e720.table()


def test_decode_output_off_drops_final_decode_only():
    on = estimate("wan2.1-1.3b", 480, 832, 81, SurfConfig())
    off = estimate("wan2.1-1.3b", 480, 832, 81, SurfConfig(), decode_output=False)
    assert "vae decode" in on.baseline_vae and not off.baseline_vae
    assert set(off.surf_vae) == {"vae decode lr", "vae encode"}  # the pixel handoff's round trip stays


def test_estimate_errors():
    with pytest.raises(ValueError, match="known"):
        estimate("wan9", 720, 1280, 81)
    with pytest.raises(ValueError, match="grid"):
        estimate("wan2.1-14b", 1080, 1920, 81)
    with pytest.raises(ValueError, match="known"):
        estimate("wan2.1-14b", 720, 1280, 81, refiner="nope")


def test_measure_vae_reproduces_constants():
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan()
    spec = measure_vae(vae)
    assert spec.dec_b == pytest.approx(WAN_VAE.dec_b, rel=0.01)
    assert spec.enc_a == pytest.approx(WAN_VAE.enc_a, rel=0.01)

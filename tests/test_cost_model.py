import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from surf_accel.config import SurfConfig
from surf_accel.catalogue import MODELS, estimate
from surf_accel.cost_model import TransformerSpec, forward_flops, measure_vae
from surf_accel.integrations.wan import WAN_VAE


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


def test_refiner_transformer_costs_the_refine_by_the_smaller_model_with_guidance():
    """Wan2.1-1.3B refining Wan2.1-14B's preview: the same plan as the base's training-free refine, its
    refine stage costed as the 1.3B's forward (hand formula in test_forward_flops_match_flop_counter)
    times the call's two guidance passes; the 14B itself as the refiner is the default estimate."""
    base = estimate("wan2.1-14b", 720, 1280, 81)
    assert estimate("wan2.1-14b", 720, 1280, 81, refiner_transformer="wan2.1-14b").surf_total == base.surf_total
    small = estimate("wan2.1-14b", 720, 1280, 81, refiner_transformer="wan2.1-1.3b")
    assert [s.name for s in small.surf] == [s.name for s in base.surf]
    refine = small.surf[-1]
    assert refine.model == "wan2.1-1.3b" and refine.passes_per_step == 2
    spec = MODELS["wan2.1-1.3b"]
    one = spec.forward_flops(refine.tokens, refine.tokens)  # dense: every query sees every video key
    assert refine.linear + refine.attention == pytest.approx(refine.steps * 2 * (one["linear"] + one["attention"]),
                                                             rel=1e-12)
    assert small.surf_total == pytest.approx(base.surf_total - (base.surf[-1].linear + base.surf[-1].attention)
                                             + refine.linear + refine.attention, rel=1e-12)
    assert 7.5 < small.speedup < 10  # the training-free sibling refine's predicted speedup at 720p
    windowed = estimate("wan2.1-14b", 720, 1280, 81, SurfConfig(window=(4, 1000, 1000)),
                        refiner_transformer="wan2.1-1.3b")
    assert small.speedup < windowed.speedup < estimate(
        "wan2.1-14b", 720, 1280, 81, SurfConfig(window=(4, 1000, 1000)), refiner="wan2.1-1.3b").speedup
    with pytest.raises(ValueError, match="not both"):
        estimate("wan2.1-14b", 720, 1280, 81, refiner="wan2.1-1.3b", refiner_transformer="wan2.1-1.3b")
    with pytest.raises(ValueError, match="unknown refiner model"):
        estimate("wan2.1-14b", 720, 1280, 81, refiner_transformer="nope")


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


# ---------------------------------------------------------------------------- HunyuanVideo
def test_hunyuan_forward_flops_match_flop_counter():
    """Linear and joint-attention FLOPs against torch's counter on a tiny HunyuanVideoTransformer3DModel
    (math SDPA, so that the counter sees the attention matmuls)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from surf_accel.cost_model import HunyuanVideoSpec
    from tests.tiny_pipelines import tiny_hunyuan_transformer

    tr = tiny_hunyuan_transformer(attention_head_dim=16, rope_axes_dim=(4, 6, 6))
    spec = HunyuanVideoSpec.from_config(tr.config, text_len=8)
    assert (spec.num_layers, spec.num_single_layers, spec.dim, spec.patch_size) == (2, 2, 32, (1, 2, 2))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        tr(hidden_states=torch.randn(1, 4, 3, 8, 12), timestep=torch.tensor([500.0]),
           encoder_hidden_states=torch.randn(1, 8, 16), encoder_attention_mask=torch.ones(1, 8),
           pooled_projections=torch.randn(1, 8), guidance=torch.tensor([6000.0]))
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    fl = forward_flops(spec, (3, 8, 12))
    assert fl["linear"] == counts["aten.addmm"] + counts["aten.convolution"]
    assert fl["attention"] == counts["aten.bmm"]
    # 72 video + 8 text tokens attend jointly in 4 blocks; 8 text tokens in the refiner block
    assert fl["attention"] == 4 * 4 * 80 * 80 * 32 + 4 * 8 * 8 * 32


def test_hunyuan_spec_is_the_published_13b_config():
    """MODELS['hunyuanvideo'] is HunyuanVideoTransformer3DModel()'s defaults (the published 13B config)."""
    from diffusers import HunyuanVideoTransformer3DModel

    from surf_accel.cost_model import HunyuanVideoSpec
    from surf_accel.integrations.hunyuan_video import HUNYUAN_FAMILY
    from surf_accel.integrations.hunyuan_video import HUNYUAN_OPTIMAL_AREA

    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModel()
    spec = MODELS["hunyuanvideo"]
    assert spec == HunyuanVideoSpec.from_config(model.config, name="hunyuanvideo")
    assert (spec.num_layers, spec.num_single_layers, spec.dim, spec.num_heads) == (20, 40, 3072, 24)
    blocks = sum(p.numel() for b in (*model.transformer_blocks, *model.single_transformer_blocks)
                 for p in b.parameters())
    assert spec.params == pytest.approx(blocks, rel=1e-3)  # weights (biases left out)
    assert 12.5e9 < sum(p.numel() for p in model.parameters()) < 13.5e9
    assert HUNYUAN_FAMILY.optimal_area == HUNYUAN_OPTIMAL_AREA


def test_hunyuan_windows_keep_text_attention():
    spec = MODELS["hunyuanvideo"]
    dense = forward_flops(spec, (33, 90, 160))
    win = forward_flops(spec, (33, 90, 160), window=(11, 1000, 1000))
    L, Lt, d, blocks = 33 * 45 * 80, 256, 3072, 60
    assert dense["tokens"] == L and win["linear"] == dense["linear"]
    refiner = 2 * 4 * Lt * Lt * d
    assert dense["attention"] == blocks * 4 * d * (L + Lt) ** 2 + refiner
    assert win["attention"] == blocks * 4 * d * (L * (L // 3 + Lt) + Lt * (L + Lt)) + refiner


def test_hunyuan_estimate_720p_and_540p():
    e = estimate("hunyuanvideo", 720, 1280, 129)
    assert e.plan.config.name == "hunyuan-paper" and e.baseline[0].passes_per_step == 1  # guidance-distilled
    assert [(s.name, s.size) for s in e.surf] == [("preview", (704, 1280)), ("preview_low", (352, 640)),
                                                  ("refine", (720, 1280))]
    assert 2.0 < e.speedup < e.floor < 6.0
    dense = estimate("hunyuanvideo", 720, 1280, 129, SurfConfig.preset("hunyuan-paper").replace(window=None))
    assert dense.speedup < e.speedup
    cfg = estimate("hunyuanvideo", 720, 1280, 129, guidance=True)
    assert cfg.baseline[0].passes_per_step == 2 and cfg.baseline_total == pytest.approx(2 * e.baseline_total,
                                                                                        rel=0.01)
    # 540p: the family's optimal 720p is above the request, so the preview runs at the request's size
    e540 = estimate("hunyuanvideo", 544, 960, 129)
    req = estimate("hunyuanvideo", 544, 960, 129, SurfConfig.preset("hunyuan-paper").replace(optimal_size="request"))
    assert e540.surf[0].size == (544, 960) and any("not below the request" in w for w in e540.plan.warnings)
    assert e540.speedup == pytest.approx(req.speedup) and e540.speedup > 2.0
    above = estimate("hunyuanvideo", 544, 960, 129, SurfConfig.preset("hunyuan-paper").replace(optimal_size=(736, 1280)))
    assert above.speedup < e540.speedup and any("larger than the request" in w for w in above.plan.warnings)


def test_measure_vae_reproduces_hunyuan_constants():
    from diffusers import AutoencoderKLHunyuanVideo

    from surf_accel.integrations.hunyuan_video import HUNYUAN_VAE

    with torch.device("meta"):
        vae = AutoencoderKLHunyuanVideo()
    spec = measure_vae(vae, frames=(65, 129), size=(720, 1280))
    for f in ("enc_a", "enc_b", "dec_a", "dec_b"):
        assert getattr(spec, f) == pytest.approx(getattr(HUNYUAN_VAE, f), rel=0.01), f
    assert (spec.spatial, spec.temporal) == (8, 4)


def _cost_case(model, h, w, frames, steps, preset, optimal):
    """SURF never plans a stage above the request unless asked (and then warns); where its FLOPs exceed the
    call's (an explicit optimal size above the request, too few steps or tokens to pay for the extra stages'
    fixed costs), the estimate carries a warning saying why. Returns whether it had to warn (``None``: the
    request is refused, as sizes off the plan's grid or past the RoPE limit are)."""
    cfg = SurfConfig.preset(preset).replace(optimal_size=optimal)
    try:
        e = estimate(model, 16 * h, 16 * w, frames, cfg, steps=steps)
    except ValueError as err:
        assert "grid" in str(err) or "rope" in str(err)
        return None
    said = [x for x in e.warnings if "more FLOPs" in x or "larger than the request" in x]
    assert all(s.height <= 16 * h and s.width <= 16 * w for s in e.plan.stages) or said
    assert e.surf_total <= e.baseline_total or said, e.plan.describe()
    return bool(said)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(model=st.sampled_from(["wan2.1-14b", "wan2.1-1.3b", "hunyuanvideo"]), h=st.integers(1, 80),
       w=st.integers(1, 80), frames=st.sampled_from([1, 5, 17, 33, 81, 129]), steps=st.integers(1, 60),
       preset=st.sampled_from(["paper", "fast", "quality", "hunyuan-paper"]),
       optimal=st.sampled_from([None, "request", (480, 832)]))
def test_surf_never_costs_more_than_the_call_unless_the_plan_says_why(model, h, w, frames, steps, preset, optimal):
    _cost_case(model, h, w, frames, steps, preset, optimal)


def test_cost_property_holds_on_plans_that_save_and_plans_that_warn():
    """The same property on a fixed grid, which must hold both kinds of plan (not only refusals)."""
    kinds = [_cost_case(model, h, w, frames, steps, preset, optimal)
             for model in ("wan2.1-14b", "hunyuanvideo") for h, w in ((2, 2), (8, 8), (45, 80), (30, 52))
             for frames in (1, 81) for steps in (2, 10, 50) for preset in ("paper", "fast")
             for optimal in (None, (480, 832))]
    assert kinds.count(False) > 30 and kinds.count(True) > 5, (kinds.count(False), kinds.count(True))


def test_load_refiner_spec_reads_any_refiner(tmp_path):
    """A Refiner folder, a transformer config and a train-refiner config all give the refiner's shape,
    and the folder / training config its steps and windows (docs/design.md 1.3's one pass per step)."""
    import json

    import yaml

    from surf_accel.training.refiner_spec import load_refiner_spec
    from surf_accel.refiner import Refiner

    tcfg = dict(patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=8, in_channels=16, out_channels=16,
                text_dim=32, freq_dim=32, ffn_dim=40, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
    r = Refiner.random(tcfg, num_steps=6)
    r.metadata = {"inference": {"window": [2, 1000, 1000]}}
    r.save_pretrained(tmp_path / "ref")
    info = load_refiner_spec(str(tmp_path / "ref"))
    assert (info.spec.dim, info.spec.ffn_dim, info.spec.num_layers, info.num_steps, info.window) == (24, 40, 2, 6, (2, 1000, 1000))
    assert load_refiner_spec(str(tmp_path / "ref" / "config.json")).spec == info.spec
    r.transformer.save_config(tmp_path / "tr")
    bare = load_refiner_spec(str(tmp_path / "tr"))
    assert bare.spec.dim == 24 and bare.num_steps is None
    train_cfg = {"output_dir": "run", "base": "toy", "model": {"init": "scratch", "config": {"num_layers": 2},
                                                                "num_steps": 5, "window": [1, 4, 4]}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(train_cfg))
    toy = load_refiner_spec(str(tmp_path / "t.yaml"))
    assert (toy.spec.num_layers, toy.spec.dim, toy.spec.text_dim, toy.num_steps, toy.window) == (2, 128, 64, 5, (1, 4, 4))
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither"):
        load_refiner_spec(str(tmp_path / "other.json"))
    # the estimate with it: one pass per refine step, its own step count
    cfg = SurfConfig.preset("paper").replace(refine_steps=info.num_steps, window=info.window)
    e = estimate("wan2.1-14b", 720, 1280, 81, cfg, refiner=info.spec)
    ref = [s for s in e.surf if s.name == "refine"][0]
    assert ref.steps == 6 and ref.passes_per_step == 1 and ref.model == "ref"

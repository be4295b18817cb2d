"""Window-attention processors on tiny random WanTransformer3DModel and HunyuanVideoTransformer3DModel
built in process (configs in the spirit of diffusers' own model tests)."""

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook
from surf_accel.integrations import window_processors as wp
from surf_accel.integrations.window_processors import (
    apply_window_attention,
    remove_window_attention,
    windowed_attention,
)

GRID = (3, 5, 7)  # tokens after patchify: odd on every axis


def tiny_wan():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()
    gen = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(1, 4, GRID[0], 2 * GRID[1], 2 * GRID[2], generator=gen),
                  timestep=torch.tensor([500]), encoder_hidden_states=torch.randn(1, 6, 16, generator=gen),
                  return_dict=False)
    return model, inputs


def tiny_hunyuan():
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()
    gen = torch.Generator().manual_seed(1)
    batch = 2
    text_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    inputs = dict(hidden_states=torch.randn(batch, 4, *GRID, generator=gen), timestep=torch.tensor([500, 500]),
                  encoder_hidden_states=torch.randn(batch, 6, 16, generator=gen),
                  encoder_attention_mask=text_mask, pooled_projections=torch.randn(batch, 8, generator=gen),
                  guidance=torch.tensor([3000.0, 3000.0]), return_dict=False)
    return model, inputs


MODELS = {"wan": tiny_wan, "hunyuan": tiny_hunyuan}


def targets(model):
    if hasattr(model, "blocks"):
        return [b.attn1 for b in model.blocks]
    return [b.attn for b in (*model.transformer_blocks, *model.single_transformer_blocks)]


def others(model):
    """Attention modules that must keep their processors."""
    if hasattr(model, "blocks"):
        return [b.attn2 for b in model.blocks]
    return [b.attn for b in model.context_embedder.token_refiner.refiner_blocks]


@pytest.fixture(params=list(MODELS))
def model_and_inputs(request):
    return MODELS[request.param]()


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def test_whole_grid_windows_reproduce_the_model(model_and_inputs):
    model, inputs = model_and_inputs
    ref = run(model, inputs)
    for window in (GRID, (8, 8, 8)):
        with windowed_attention(model, window):
            out = run(model, inputs)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_small_windows_change_the_output_and_remove_restores_exactly(model_and_inputs):
    model, inputs = model_and_inputs
    before = {a: a.processor for a in targets(model) + others(model)}
    ref = run(model, inputs)
    forward = model.forward
    apply_window_attention(model, (2, 3, 4))
    assert list(model._diffusers_hook.hooks) == [wp.STATE_ATTR], "the grid hook sits in diffusers' HookRegistry"
    procs = {id(a.processor) for a in targets(model)}
    assert len(procs) == 1, "one shared processor instance per model"
    assert all(a.processor is before[a] for a in others(model))
    windowed = run(model, inputs)
    assert (windowed - ref).abs().max() > 1e-3
    remove_window_attention(model)
    assert all(a.processor is before[a] for a in before)
    assert not any(hasattr(a, wp.SHIFT_ATTR) for a in targets(model))
    assert not model._forward_pre_hooks and not model._diffusers_hook.hooks
    assert model.forward == forward, "the transformer's own forward is back"
    assert torch.equal(run(model, inputs), ref)


class ScaleOutput(ModelHook):
    """Another hook in the transformer's HookRegistry: doubles the output and counts calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def post_forward(self, module, output):
        self.calls += 1
        return (output[0] * 2,)


@pytest.mark.parametrize("windows_first", [True, False])
def test_grid_hook_shares_the_hook_registry_in_either_order(model_and_inputs, windows_first):
    """Removing the windows' grid hook from before or after another hook keeps that hook in the call
    (diffusers relinks its chain), and the model is then exactly the other hook alone."""
    model, inputs = model_and_inputs
    ref = run(model, inputs)
    registry = HookRegistry.check_if_exists_or_initialize(model)
    other = ScaleOutput()
    if windows_first:
        apply_window_attention(model, (2, 3, 4))
        registry.register_hook(other, "other")
    else:
        registry.register_hook(other, "other")
        apply_window_attention(model, (2, 3, 4))
    windowed = run(model, inputs)
    assert other.calls == 1 and (windowed / 2 - ref).abs().max() > 1e-3
    remove_window_attention(model)
    assert torch.equal(run(model, inputs), ref * 2) and other.calls == 2
    registry.remove_hook("other", recurse=False)
    assert torch.equal(run(model, inputs), ref)


def test_shift_alternates_across_blocks(model_and_inputs, monkeypatch):
    model, inputs = model_and_inputs
    calls = []
    real = wp.window_attention

    def spy(q, k, v, grid, window, shift, **kwargs):
        calls.append((tuple(grid), tuple(window), tuple(shift), kwargs.get("num_text", 0)))
        return real(q, k, v, grid, window, shift, **kwargs)

    monkeypatch.setattr(wp, "window_attention", spy)
    with windowed_attention(model, (2, 3, 4)):
        run(model, inputs)
    n = len(targets(model))
    assert len(calls) == n
    assert [c[2] for c in calls] == [(0, 0, 0) if i % 2 == 0 else (1, 1, 2) for i in range(n)]
    assert all(c[0] == GRID for c in calls)
    if "encoder_attention_mask" in inputs:
        assert all(c[3] == 6 for c in calls)  # joint attention over 6 text tokens


def test_reapply_and_context_manager(model_and_inputs):
    """Reapplying changes the window in place; the context manager restores the previous one."""
    model, _ = model_and_inputs
    apply_window_attention(model, (1, 5, 7))
    proc = targets(model)[0].processor
    with windowed_attention(model, (3, 2, 2)):
        assert targets(model)[0].processor is proc and proc.state.window == (3, 2, 2)
    assert proc.state.window == (1, 5, 7)
    remove_window_attention(model)


def test_unsupported_and_bad_window():
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        apply_window_attention(torch.nn.Linear(2, 2), (2, 2, 2))
    model, _ = tiny_wan()
    with pytest.raises(ValueError, match="three positive ints"):
        apply_window_attention(model, (2, 0, 2))
    with pytest.raises(ValueError, match="three positive ints"):
        apply_window_attention(model, (2, 2))
    assert not hasattr(model, wp.STATE_ATTR)


def test_regional_compile_no_per_block_recompiles():
    """torch.compile of the repeated blocks traces through the shared processor (fullgraph) with at
    most one graph per shift variant, and calling again compiles nothing new."""
    from torch._dynamo.utils import counters

    model, inputs = tiny_wan()
    apply_window_attention(model, (2, 3, 4))
    eager = run(model, inputs)
    torch._dynamo.reset()
    counters.clear()
    model.compile_repeated_blocks(backend="eager", fullgraph=True)
    compiled = run(model, inputs)
    graphs = counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 2  # shift 0 and shift window // 2
    assert torch.equal(run(model, inputs), compiled)
    assert counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_hunyuan_text_lengths_counted_once_per_mask(monkeypatch):
    """The joint-attention processor hands every layer the valid text counts as host ints, counted
    once from the call's encoder_attention_mask (not once per layer), so no layer syncs."""
    model, inputs = tiny_hunyuan()
    calls = []
    real = wp.window_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("text_lengths"))
        return real(*args, **kwargs)

    monkeypatch.setattr(wp, "window_attention", spy)
    with windowed_attention(model, (2, 3, 4)):
        state = getattr(model, wp.STATE_ATTR)
        first = run(model, inputs)
        counted = state.text_lengths
        run(model, inputs)
        assert state.text_lengths is counted  # same mask object: not counted again
    assert calls and all(c == (4, 6) for c in calls)
    with windowed_attention(model, (2, 3, 4), backend="torch"):  # the mask-only path agrees
        torch.testing.assert_close(run(model, inputs), first, rtol=1e-5, atol=1e-6)

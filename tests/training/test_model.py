"""Training windows equal inference windows; LoRA merges to the adapter's outputs; pairing errors."""

import pytest
import torch

from surf_accel.integrations.window_processors import windowed_attention
from surf_accel.training.config import ModelConfig
from surf_accel.training.model import build_transformer, check_pairing, has_lora, merged_copy
from surf_accel.integrations.window_processors import training_windows
from tests.tiny_pipelines import tiny_wan_t2v


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_t2v()


def _inputs(seed=0, t=3, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 16, t, h, w, generator=g), torch.tensor([700.0, 300.0]), torch.randn(2, 6, 32, generator=g))


def test_training_windows_match_inference_and_train(pipe):
    model = build_transformer(pipe, ModelConfig(init="scratch", config={"num_layers": 2}))
    x, t, text = _inputs()
    window = (2, 2, 4)  # partial edge windows along T and shifted blocks
    with torch.no_grad(), windowed_attention(model, window):
        want = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    with training_windows(model, window):
        got = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        got.pow(2).mean().backward()
    with torch.no_grad():
        dense = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dense, want, atol=1e-3)  # the windows change the output (and are removed after)
    assert model.blocks[0].attn1.to_q.weight.grad.abs().sum() > 0


def test_lora_merged_equals_adapter(pipe):
    model = build_transformer(pipe, ModelConfig(init="lora", lora={"rank": 4, "alpha": 8}))
    assert has_lora(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)  # B starts at zero: make the adapters do something
    x, t, text = _inputs(1)
    model.eval()
    with torch.no_grad():
        adapted = model(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        base = pipe.transformer(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        merged = merged_copy(model)
        out = merged(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    assert type(merged).__name__ == "WanTransformer3DModel" and not has_lora(merged)
    assert not any("lora" in k for k in merged.state_dict())
    assert not torch.allclose(adapted, base, atol=1e-3)
    assert torch.allclose(out, adapted, atol=1e-5, rtol=1e-4)


def test_wrong_pairing_is_refused(pipe):
    with pytest.raises(ValueError, match="text_dim 64 but the text encoder's embeddings are 32"):
        build_transformer(pipe, ModelConfig(init="scratch", config={"text_dim": 64}))
    with pytest.raises(ValueError, match="in_channels 8 but the VAE's latents have z_dim 16"):
        check_pairing({"in_channels": 8, "out_channels": 16, "text_dim": 32, "image_dim": None}, pipe)
    with pytest.raises(ValueError, match="patch_size"):
        build_transformer(pipe, ModelConfig(init="scratch", config={"patch_size": [1, 4, 4]}))
    with pytest.raises(ValueError, match="does not take: nlayers"):
        build_transformer(pipe, ModelConfig(init="scratch", config={"nlayers": 1}))


def test_a_bf16_base_keeps_its_vae_in_float32_and_stores_bf16_text(tmp_path):
    """``base_dtype: bfloat16`` loads the base transformer and text encoder in bf16 and the VAE in float32;
    the pair store keeps the captions' embeddings as the bf16 encoder gives them (read back as float32,
    exactly), in another store than a float32 base's; other dtypes are refused."""
    from safetensors import safe_open

    from surf_accel.integrations.wan import WanAdapter
    from surf_accel.training import ConfigError, config_from_dict
    from surf_accel.training.data import load_sources
    from surf_accel.training.loop import prepare_data
    from surf_accel.training.model import load_base_pipeline
    from tests.training.common import tiny_config

    pipe = load_base_pipeline("toy", torch.bfloat16)
    assert pipe.transformer.dtype == pipe.text_encoder.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    cfg = config_from_dict(tiny_config(tmp_path, base_dtype="bfloat16", data={"num_clips": 2, "val_clips": 0}))
    data = prepare_data(cfg, pipe, WanAdapter())
    store = data["stores"][0]
    with safe_open(str(store.shard_path(0)), "pt") as f:
        assert f.get_tensor("text.0").dtype == torch.bfloat16 and f.get_tensor("z_hr").dtype == torch.float32
    with torch.no_grad():
        emb, _ = pipe.encode_prompt([load_sources(cfg.data, cfg.seed)[0].captions[0]],
                                    do_classifier_free_guidance=False, max_sequence_length=16)
    assert emb.dtype == torch.bfloat16 and torch.equal(data["train"][(0, 1)][2], emb[0].float())
    fp32 = prepare_data(config_from_dict(tiny_config(tmp_path, data={"num_clips": 2, "val_clips": 0})),
                        load_base_pipeline("toy"), WanAdapter())
    assert fp32["stores"][0].folder != store.folder
    with pytest.raises(ConfigError, match="base_dtype"):
        config_from_dict(tiny_config(tmp_path, base_dtype="float16"))

"""The shipped toy WanPipeline: loads offline from the package, generates at its optimal size, and
keeps a small version of issue 5's quality bar (the full measurement is benchmarks/toy_quality.py)."""

import json

import numpy as np
import pytest
import torch

from surf_accel import metrics
from surf_accel.toyworld import (DEFAULT_GUIDANCE, DEMO_PROMPTS, NUM_FRAMES, OPTIMAL_SIZE, PIPELINE_DIR,
                                 load_pipeline, pipeline_available)

pytestmark = pytest.mark.skipif(not pipeline_available(), reason="toy pipeline not trained/shipped yet")


@pytest.fixture(scope="module")
def pipe():
    p = load_pipeline(torch.float32)
    p.set_progress_bar_config(disable=True)
    return p


def test_folder_is_a_small_fp16_wan_pipeline():
    from safetensors import safe_open

    index = json.loads((PIPELINE_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"][1] == "WanTransformer3DModel" and index["vae"][1] == "AutoencoderKLWan"
    files = list(PIPELINE_DIR.rglob("*.safetensors"))
    assert len(files) == 3 and sum(f.stat().st_size for f in files) < 10e6
    for f in files:
        with safe_open(str(f), "pt") as sf:
            assert {sf.get_slice(k).get_dtype() for k in sf.keys()} == {"F16"}, f
    assert not list(PIPELINE_DIR.rglob("*.bin")) and not list(PIPELINE_DIR.rglob("*.pt"))


def test_loads_offline_with_consistent_configs(pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from diffusers import WanPipeline

    again = WanPipeline.from_pretrained(str(PIPELINE_DIR), torch_dtype=torch.float32, local_files_only=True)
    assert type(again).__name__ == "WanPipeline"
    assert pipe.vae_scale_factor_spatial == 4 and pipe.vae_scale_factor_temporal == 4
    assert len(pipe.vae.config.latents_mean) == pipe.vae.config.z_dim == pipe.transformer.config.in_channels
    assert pipe.transformer.config.text_dim == pipe.text_encoder.config.d_model
    assert pipe.transformer.config.rope_max_seq_len > 128 // 4 // 2  # patch grid axis at 128 px
    assert pipe.tokenizer.unk_token_id not in pipe.tokenizer(list(DEMO_PROMPTS)).input_ids[0]
    assert next(pipe.transformer.parameters()).dtype == torch.float32


@pytest.fixture(scope="module")
def generated(pipe):
    return pipe(prompt=list(DEMO_PROMPTS), height=OPTIMAL_SIZE, width=OPTIMAL_SIZE, num_frames=NUM_FRAMES,
               num_inference_steps=12, guidance_scale=DEFAULT_GUIDANCE, output_type="np",
               generator=torch.Generator().manual_seed(0)).frames


def test_generates_the_prompts_at_the_optimal_size(generated):
    out = generated
    assert out.shape == (len(DEMO_PROMPTS), NUM_FRAMES, OPTIMAL_SIZE, OPTIMAL_SIZE, 3)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    s = metrics.evaluate(out, list(DEMO_PROMPTS))["summary"]
    assert s["colour_acc"] >= 0.75 and s["presence"] > 0.9, s


def test_motion_direction_follows_the_prompt(generated):
    s = metrics.evaluate(generated, list(DEMO_PROMPTS))["summary"]
    assert s["direction_acc"] >= 0.75, s

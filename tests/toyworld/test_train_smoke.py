"""A few-step run of every training subcommand on tiny settings (CI never trains in full), plus the
whole-clip VAE passes that training relies on, checked against diffusers' chunked encode/decode."""

import json

import pytest
import torch

from surf_accel.toyworld import train, world
from surf_accel.toyworld.vae_fullseq import decode_full, encode_full


def test_whole_clip_vae_equals_chunked_pipeline_path():
    vae = train.make_vae(seed=1).eval()
    with torch.no_grad():
        for p in vae.parameters():  # break the zero-init symmetry so every path matters
            p.add_(0.02 * torch.randn_like(p))
        x = world.render_batch(world.sample_specs(2, 0), 16, 9)
        m_ref = vae.encode(x).latent_dist.mean
        m, logvar = encode_full(vae, x)
        assert m.shape == m_ref.shape == (2, 8, 3, 4, 4)
        torch.testing.assert_close(m, m_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(decode_full(vae, m, clamp=True), vae.decode(m_ref).sample, atol=1e-5, rtol=1e-4)
    assert not any(k == "forward" for m_ in vae.modules() for k in vars(m_))  # patch removed


def test_checkpoint_round_trip(tmp_path):
    a = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(a.parameters(), lr=1e-2)
    a(torch.randn(4, 3)).sum().backward()
    opt.step()
    train.save_checkpoint(tmp_path, 7, {"m": a}, opt)
    b = torch.nn.Linear(3, 2)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2)
    meta = train.load_checkpoint(tmp_path, {"m": b}, opt_b)
    assert meta["step"] == 7
    torch.testing.assert_close(a.weight, b.weight)
    torch.testing.assert_close(opt.state_dict()["state"][0]["exp_avg"], opt_b.state_dict()["state"][0]["exp_avg"])
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.bin"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_train")
    common = ["--out", str(out), "--threads", "2", "--ckpt-every", "1"]
    train.main(["text", *common])
    train.main(["vae", *common, "--vae-steps", "2", "--vae-batch", "1", "--vae-stats-clips", "2", "--vae-eval-clips", "1", "--vae-eval-sizes", "32"])
    train.main(["dit", *common, "--dit-steps", "2", "--dit-batch", "2", "--dit-batch-hi", "1", "--hi-every", "2",
                "--n-lo", "2", "--n-hi", "1"])
    train.main(["assemble", *common, "--dest", str(out / "pipeline")])
    return out


def test_text_stage(trained):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained / "tokenizer")
    ids = tok("a red circle moving left").input_ids
    assert len(ids) == 6 and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids


def test_vae_stage_resumes(trained):
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(trained / "vae")
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == vae.config.z_dim
    assert vae.config.scale_factor_spatial == 4 and vae.config.scale_factor_temporal == 4
    assert set(json.loads((trained / "vae" / "metrics.json").read_text())["psnr"]) == {"32"}
    train.main(["vae", "--out", str(trained), "--threads", "2", "--vae-steps", "3", "--vae-batch", "1",
                "--vae-stats-clips", "2", "--vae-eval-clips", "1", "--vae-eval-sizes", "32"])
    assert json.loads((trained / "vae_ckpt" / "ckpt.json").read_text())["step"] == 3
    steps = [json.loads(line)["step"] for line in (trained / "vae_log.jsonl").read_text().splitlines()]
    assert steps == [0]  # step 2 (resumed) is not a logging step, and step 0 was not redone


def test_dit_stage(trained):
    from safetensors.torch import load_file

    data = load_file(str(trained / "dit_data.safetensors"))
    assert data["emb"].shape == (len(world.all_label_combinations()) + 1, 512, 64)
    assert data["z_lo"].shape == (2, 8, 5, 16, 16) and data["z_hi"].shape == (1, 8, 5, 32, 32)
    assert json.loads((trained / "dit_ckpt" / "ckpt.json").read_text())["step"] == 2
    assert (trained / "transformer" / "config.json").exists()


def test_assembled_pipeline_runs(trained):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(trained / "pipeline"), torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert next(pipe.transformer.parameters()).dtype == torch.float32
    out = pipe(prompt="a red circle moving left", height=32, width=32, num_frames=5, num_inference_steps=2,
               guidance_scale=4.0, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert out.shape == (1, 5, 32, 32, 3)
    stored = [f.stat().st_size for f in (trained / "pipeline").rglob("*.safetensors")]
    assert len(stored) == 3 and sum(stored) < 10e6

"""Training of the toy world's WanPipeline: ``python -m surf_accel.toyworld.train {text,vae,dit,assemble,all}``.

Stages (each seeded, resumable from its last checkpoint, with tqdm progress bars):

- ``text``: the word-level tokenizer and the frozen random tiny UMT5 encoder (no training).
- ``vae``: a tiny ``AutoencoderKLWan`` (4x spatial, 4x temporal) on 17-frame clips rendered at
  32, 64 and 128 px (crops of the larger renders), first frame and object pixels weighted. At the
  end its weights are rounded to fp16 values and ``latents_mean``/``latents_std`` are measured
  and written to its config, so WanPipeline normalises exactly as the DiT was trained.
- ``dit``: pre-encodes clips to normalised latents once, embeds every prompt (and ``""``) with the
  pipeline's own ``encode_prompt``, then trains a tiny ``WanTransformer3DModel`` with flow matching
  (x_s = (1 - s) x0 + s eps, target eps - x0, logit-normal s shifted per resolution, timestep
  1000 s), 10% caption dropout to the empty-prompt embedding, and an EMA copy. Most steps are at
  the optimal 64 px, every ``--hi-every``-th at the 128 px target.
- ``assemble``: builds a ``WanPipeline`` (UniPC flow scheduler, flow_shift 3) from the parts and
  saves it in fp16 safetensors (default: the package's ``toyworld/pipeline``).

Intermediates go to ``--out`` (default ``$SURF_TOY_TRAIN_DIR`` or ``/work/toy_train``), never into
git. Checkpoints are safetensors plus a JSON file (no pickle).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from surf_accel import files

from . import world
from .text import build_text_encoder, build_tokenizer, round_to_fp16_
from .vae_fullseq import decode_full, encode_full

PACKAGE_PIPELINE_DIR = Path(__file__).resolve().parent / "pipeline"
DEFAULT_OUT = Path(os.environ.get("SURF_TOY_TRAIN_DIR", "/work/toy_train"))
FRAMES = 17

VAE_CONFIG = dict(base_dim=12, z_dim=8, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                  temperal_downsample=[True, True], scale_factor_spatial=4, scale_factor_temporal=4)
DIT_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=8,
                  out_channels=8, text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=256)
# The training-free sibling refiner: the same family, VAE and text encoder at about a fifth of the base's
# layers x width (2 x 48 against 4 x 128), trained like the base on the same world.
SIBLING_CONFIG = {**DIT_CONFIG, "num_attention_heads": 2, "attention_head_dim": 24, "ffn_dim": 192, "num_layers": 2}
PACKAGE_SIBLING_DIR = Path(__file__).resolve().parent / "sibling"
SCHEDULER_CONFIG = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                        num_train_timesteps=1000, solver_order=2, sample_max_value=1.0)
# Flow shift per training resolution (docs/design.md 1.1: larger resolutions use a larger shift).
SHIFT_FOR_SIZE = {32: 2.0, 64: 3.0, 128: 5.0}
MAX_SEQUENCE_LENGTH = 512  # WanPipeline.__call__'s default: the DiT sees 512 padded text tokens


# --------------------------------------------------------------------------------------------
# checkpoints (safetensors + json)


def save_checkpoint(path: Path, step: int, modules: dict, optimizer=None, extra: dict | None = None):
    tensors = {}
    for name, mod in modules.items():
        for k, v in mod.state_dict().items():
            tensors[f"{name}.{k}"] = v.detach().contiguous().cpu()
    meta = {"step": step, "extra": extra or {}}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for pid, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v).detach().contiguous().cpu()
        meta["param_groups"] = sd["param_groups"]
    # the meta goes with the tensors: dropped first, so that new tensors never pair with an old meta
    (path / "ckpt.json").unlink(missing_ok=True)
    files.write_safetensors(path / "ckpt.safetensors", tensors)
    files.write_json(path / "ckpt.json", meta)


def load_checkpoint(path: Path, modules: dict, optimizer=None) -> dict | None:
    from safetensors.torch import load_file

    if not (path / "ckpt.safetensors").exists():
        return None
    tensors = load_file(str(path / "ckpt.safetensors"))
    meta = json.loads((path / "ckpt.json").read_text())
    for name, mod in modules.items():
        pre = f"{name}."
        mod.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
    if optimizer is not None and "param_groups" in meta:
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def _log(out: Path, stage: str, record: dict):
    with open(out / f"{stage}_log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------
# text


def train_text(out: Path, seed: int = 0) -> None:
    tok = build_tokenizer()
    files.write_folder(out / "tokenizer", tok.save_pretrained)
    enc = build_text_encoder(seed)
    files.write_folder(out / "text_encoder", lambda d: enc.save_pretrained(d, safe_serialization=True))
    print(f"text: tokenizer ({len(tok)} tokens) and UMT5 encoder "
          f"({sum(p.numel() for p in enc.parameters()) / 1e3:.1f}k params) -> {out}")


# --------------------------------------------------------------------------------------------
# VAE


def make_vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    z = VAE_CONFIG["z_dim"]
    return AutoencoderKLWan(**VAE_CONFIG, latents_mean=[0.0] * z, latents_std=[1.0] * z)


def _crop_around(clip: torch.Tensor, spec: world.ClipSpec, crop: int, rng: random.Random) -> torch.Tensor:
    """Crop (3, T, H, W) to crop x crop around the object's mid-path position, jittered."""
    _, t, h, w = clip.shape
    if crop >= h and crop >= w:
        return clip
    cx, cy = spec.centre((t - 1) / 2)
    x = int(cx * w - crop / 2 + rng.uniform(-crop / 4, crop / 4))
    y = int(cy * h - crop / 2 + rng.uniform(-crop / 4, crop / 4))
    x = max(0, min(w - crop, x))
    y = max(0, min(h - crop, y))
    return clip[:, :, y:y + crop, x:x + crop]


# (render size, crop size): the VAE sees every resolution the pipeline decodes (32, 64, 128 px);
# larger renders are cropped so that a step costs about the same at every resolution.
VAE_PHASES = [(32, 32), (64, 32), (128, 40), (64, 64)]


def vae_batch(step: int, seed: int, batch: int):
    rng = random.Random(seed * 1_000_003 + step)
    size, crop = VAE_PHASES[step % len(VAE_PHASES)]
    if size == crop == 64:
        batch = max(1, batch // 2)
    specs = [world.random_spec(rng) for _ in range(batch)]
    clips = [_crop_around(s.render(size, size, FRAMES), s, crop, rng) for s in specs]
    return torch.stack(clips), size


def vae_loss(vae, x: torch.Tensor, kl_weight: float, first_frame_weight: float, fg_weight: float,
             gen: torch.Generator, noise: float = 0.1):
    mean, logvar = encode_full(vae, x)
    # Posterior samples with the std scaled by ``noise``: with full-scale samples (noise=1) the
    # freshly initialised posterior (std ~ 1 against means ~ 1) drowned the code, and after 400
    # steps the VAE still rendered red and yellow as the same orange and squares as blobs.
    z = mean + noise * torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen)
    y = decode_full(vae, z)
    bg = torch.tensor(world.BACKGROUND).view(1, 3, 1, 1, 1) * 2 - 1
    fg = ((x - bg).abs().amax(1, keepdim=True) > 0.1).float()
    w = 1.0 + fg_weight * fg
    fw = torch.ones(1, 1, x.shape[2], 1, 1)
    fw[:, :, 0] = first_frame_weight
    err = y - x
    rec = (w * fw * (err.abs() + err * err)).mean()
    kl = 0.5 * (mean * mean + logvar.exp() - 1 - logvar).mean()
    return rec + kl_weight * kl, rec.detach(), kl.detach()


@torch.no_grad()
def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def evaluate_vae(vae, sizes=(32, 64, 128), n: int = 4, seed: int = 12345) -> dict:
    """PSNR (dB) of the pipeline's own chunked ``vae.encode``/``vae.decode`` on full clips, plus the
    first frame alone, per resolution."""
    res = {}
    specs = world.sample_specs(n, seed)
    for s in sizes:
        x = world.render_batch(specs, s, FRAMES)
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample
        res[str(s)] = {"psnr": round(psnr_db(x, y), 2), "psnr_first_frame": round(psnr_db(x[:, :, :1], y[:, :, :1]), 2)}
    return res


@torch.no_grad()
def latent_stats(vae, n: int = 64, size: int = 64, seed: int = 777) -> tuple[list[float], list[float]]:
    specs = world.sample_specs(n, seed)
    zs = []
    for i in range(0, n, 8):
        zs.append(encode_full(vae, world.render_batch(specs[i:i + 8], size, FRAMES))[0])
    z = torch.cat(zs).transpose(0, 1).reshape(VAE_CONFIG["z_dim"], -1)
    return [round(v, 5) for v in z.mean(1).tolist()], [round(max(v, 1e-3), 5) for v in z.std(1).tolist()]


def train_vae(out: Path, steps: int, batch: int = 4, lr: float = 2e-3, seed: int = 0,
              kl_weight: float = 1e-4, first_frame_weight: float = 3.0, fg_weight: float = 4.0,
              ckpt_every: int = 50, time_limit_min: float | None = None, stats_clips: int = 64,
              eval_clips: int = 4, eval_sizes: tuple[int, ...] = (32, 64, 128), noise: float = 0.1) -> None:
    vae = make_vae(seed)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    ck = out / "vae_ckpt"
    meta = load_checkpoint(ck, {"vae": vae}, opt)
    start = meta["step"] if meta else 0
    t0 = time.time()
    bar = tqdm(range(start, steps), desc="vae", initial=start, total=steps)
    recent: list[float] = []
    step = start
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, 20)
        x, size = vae_batch(step, seed, batch)
        gen = torch.Generator().manual_seed(seed * 7919 + step)
        loss, rec, kl = vae_loss(vae, x, kl_weight, first_frame_weight, fg_weight, gen, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        recent.append(rec.item())
        bar.set_postfix(rec=f"{sum(recent[-20:]) / len(recent[-20:]):.4f}", size=size)
        if step % 10 == 0:
            _log(out, "vae", {"step": step, "rec": rec.item(), "kl": kl.item(), "size": size,
                              "elapsed_s": round(time.time() - t0, 1)})
        if (step + 1) % ckpt_every == 0:
            save_checkpoint(ck, step + 1, {"vae": vae}, opt)
        if time_limit_min is not None and time.time() - t0 > time_limit_min * 60:
            print(f"vae: time limit reached at step {step + 1}")
            break
    final_step = step + 1 if steps > start else start
    save_checkpoint(ck, final_step, {"vae": vae}, opt)
    finalize_vae(vae, out, final_step, time.time() - t0, stats_clips, eval_clips, eval_sizes)


def finalize_vae(vae, out: Path, steps_done: int, seconds: float, stats_clips: int = 64, eval_clips: int = 4,
                 eval_sizes: tuple[int, ...] = (32, 64, 128)) -> None:
    vae.eval()
    round_to_fp16_(vae)
    mean, std = latent_stats(vae, n=stats_clips)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    metrics = {"steps": steps_done, "seconds": round(seconds, 1), "psnr": evaluate_vae(vae, eval_sizes, n=eval_clips),
               "latents_mean": mean, "latents_std": std}

    def write(d: Path) -> None:
        vae.save_pretrained(d, safe_serialization=True)
        files.write_json(d / "metrics.json", metrics, indent=1)

    files.write_folder(out / "vae", write)
    print("vae:", json.dumps(metrics["psnr"]))


# --------------------------------------------------------------------------------------------
# DiT


def make_dit(seed: int = 0, config: dict | None = None):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**(config or DIT_CONFIG))


def _load_parts(out: Path):
    """Tokenizer, text encoder and VAE from a training directory or an assembled pipeline folder (float32)."""
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    enc = UMT5EncoderModel.from_pretrained(out / "text_encoder").float().eval()
    vae = AutoencoderKLWan.from_pretrained(out / "vae").float().eval()
    return tok, enc, vae


@torch.no_grad()
def embed_prompts(tok, enc, vae, prompts: list[str]) -> torch.Tensor:
    """(N, 512, text_dim) prompt embeddings exactly as WanPipeline builds them."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    pipe = WanPipeline(tokenizer=tok, text_encoder=enc, vae=vae, transformer=None,
                       scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG))
    emb, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                max_sequence_length=MAX_SEQUENCE_LENGTH, device=torch.device("cpu"))
    return emb.float()


@torch.no_grad()
def encode_dataset(vae, n: int, size: int, seed: int, batch: int = 8, desc: str = "encode"):
    """Normalised latents (N, z, t, h, w) (as WanPipeline's transformer sees them) and prompt ids."""
    specs = world.sample_specs(n, seed)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    combos = world.all_label_combinations()
    ids = torch.tensor([combos.index((s.colour, s.shape, s.direction)) for s in specs])
    zs = []
    for i in tqdm(range(0, n, batch), desc=desc):
        x = world.render_batch(specs[i:i + batch], size, FRAMES)
        zs.append((encode_full(vae, x)[0] - mean) / std)
    return torch.cat(zs), ids


def prepare_dit_data(out: Path, n_lo: int, n_hi: int, seed: int, lo: int = 64, hi: int = 128,
                     parts: Path | None = None) -> dict:
    """Encoded training latents and prompt embeddings, cached in ``out``; ``parts`` holds the tokenizer,
    text encoder and VAE (default: ``out`` itself)."""
    from safetensors.torch import load_file

    path = out / "dit_data.safetensors"
    key = f"{n_lo}-{n_hi}-{seed}-{lo}-{hi}-{parts or out}"
    if path.exists() and (out / "dit_data.json").exists() and json.loads((out / "dit_data.json").read_text()).get("key") == key:
        return load_file(str(path))
    tok, enc, vae = _load_parts(parts or out)
    prompts = [world.prompt_for(*c) for c in world.all_label_combinations()] + [""]
    data = {"emb": embed_prompts(tok, enc, vae, prompts)}
    data["z_lo"], data["id_lo"] = encode_dataset(vae, n_lo, lo, seed + 1, desc=f"encode {lo}px")
    if n_hi:
        data["z_hi"], data["id_hi"] = encode_dataset(vae, n_hi, hi, seed + 2, desc=f"encode {hi}px")
    (out / "dit_data.json").unlink(missing_ok=True)  # the key goes with the data (see save_checkpoint)
    files.write_safetensors(path, data)
    files.write_json(out / "dit_data.json", {"key": key, "latent_std_check": data["z_lo"].std().item()})
    return data


def flow_batch(z: torch.Tensor, shift: float, gen: torch.Generator):
    """Noisy inputs, timesteps (1000 s) and velocity targets for clean latents ``z``."""
    b = z.shape[0]
    u = torch.sigmoid(torch.randn(b, generator=gen))
    s = shift * u / (1 + (shift - 1) * u)
    eps = torch.randn(z.shape, generator=gen)
    sv = s.view(b, 1, 1, 1, 1)
    return (1 - sv) * z + sv * eps, s * 1000.0, eps - z


def train_dit(out: Path, steps: int, batch: int = 8, batch_hi: int = 4, hi_every: int = 5, lr: float = 1e-3,
              seed: int = 0, n_lo: int = 768, n_hi: int = 192, cfg_drop: float = 0.1, ema_decay: float = 0.995,
              ckpt_every: int = 50, time_limit_min: float | None = None, config: dict | None = None,
              parts: Path | None = None, name: str = "dit") -> Path:
    """Flow-matching training of a toy DiT of ``config``; checkpoints in ``out/<name>_ckpt``, the EMA
    weights (fp16 values) exported to ``out/transformer`` (``name="dit"``) or ``out/<name>_transformer``."""
    data = prepare_dit_data(out, n_lo, n_hi, seed, parts=parts)
    emb, empty = data["emb"][:-1], data["emb"][-1]
    dit = make_dit(seed, config)
    dit.train()
    ema = make_dit(seed, config)
    ema.load_state_dict(dit.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(dit.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    ck = out / f"{name}_ckpt"
    meta = load_checkpoint(ck, {"dit": dit, "ema": ema}, opt)
    start = meta["step"] if meta else 0
    t0 = time.time()
    bar = tqdm(range(start, steps), desc=name, initial=start, total=steps)
    recent: dict[int, list[float]] = {64: [], 128: []}
    step = start
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, 50)
        gen = torch.Generator().manual_seed(seed * 104729 + step)
        hi = bool(n_hi) and hi_every > 0 and step % hi_every == hi_every - 1
        z_all, ids_all = (data["z_hi"], data["id_hi"]) if hi else (data["z_lo"], data["id_lo"])
        idx = torch.randint(0, z_all.shape[0], (batch_hi if hi else batch,), generator=gen)
        z, ids = z_all[idx], ids_all[idx]
        size = 128 if hi else 64
        x, t, target = flow_batch(z, SHIFT_FOR_SIZE[size], gen)
        cond = emb[ids].clone()
        drop = torch.rand(len(ids), generator=gen) < cfg_drop
        cond[drop] = empty
        pred = dit(x, t, cond, return_dict=False)[0]
        loss = (pred.float() - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dit.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), dit.parameters()):
                pe.lerp_(p, 1 - d)
        recent[size].append(loss.item())
        bar.set_postfix(l64=f"{sum(recent[64][-25:]) / max(1, len(recent[64][-25:])):.3f}",
                        l128=f"{sum(recent[128][-10:]) / max(1, len(recent[128][-10:])):.3f}")
        if step % 10 == 0 or hi:
            _log(out, name, {"step": step, "loss": loss.item(), "size": size, "elapsed_s": round(time.time() - t0, 1)})
        if (step + 1) % ckpt_every == 0:
            save_checkpoint(ck, step + 1, {"dit": dit, "ema": ema}, opt)
        if time_limit_min is not None and time.time() - t0 > time_limit_min * 60:
            print(f"{name}: time limit reached at step {step + 1}")
            break
    final_step = step + 1 if steps > start else start
    save_checkpoint(ck, final_step, {"dit": dit, "ema": ema}, opt,
                    extra={"seconds_this_run": round(time.time() - t0, 1)})
    round_to_fp16_(ema)
    export = out / ("transformer" if name == "dit" else f"{name}_transformer")
    files.write_folder(export, lambda d: ema.save_pretrained(d, safe_serialization=True))
    print(f"{name}: {final_step} steps, EMA weights -> {export}")
    return export


def ship_sibling(out: Path, dest: Path) -> Path:
    """Save the sibling's EMA transformer in fp16 into ``dest`` (shipped: the package's ``toyworld/sibling``)."""
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(out / "sibling_transformer").to(torch.float16)
    files.write_folder(dest, lambda d: model.save_pretrained(d, safe_serialization=True))
    print(f"sibling: WanTransformer3DModel ({sum(p.numel() for p in model.parameters())} parameters) -> {dest}")
    return dest


# --------------------------------------------------------------------------------------------
# assembly


def assemble(out: Path, dest: Path = PACKAGE_PIPELINE_DIR) -> Path:
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    tok, enc, vae = _load_parts(out)
    dit = WanTransformer3DModel.from_pretrained(out / "transformer").eval()
    pipe = WanPipeline(tokenizer=tok, text_encoder=enc, vae=vae, transformer=dit,
                       scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG))
    pipe.to(torch.float16)
    files.write_folder(dest, lambda d: pipe.save_pretrained(d, safe_serialization=True))
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"assemble: WanPipeline -> {dest} ({size / 1e6:.2f} MB)")
    return dest


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m surf_accel.toyworld.train", description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=["text", "vae", "dit", "assemble", "all", "sibling"],
                   help="sibling: train the small training-free refiner on the shipped pipeline's VAE and text encoder")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="training directory (not in git)")
    p.add_argument("--dest", type=Path, default=None,
                   help="where `assemble` saves the pipeline (default: the package's toyworld/pipeline) or "
                        "`sibling` its transformer (default: OUT/sibling)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 was 5-10x faster than 2 on a 2-core machine shared with other jobs)")
    p.add_argument("--vae-steps", type=int, default=600)
    p.add_argument("--vae-batch", type=int, default=4)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-stats-clips", type=int, default=64, help="64 px clips measuring latents_mean/std")
    p.add_argument("--vae-eval-clips", type=int, default=4, help="clips per resolution for the PSNR report")
    p.add_argument("--vae-eval-sizes", default="32,64,128", help="resolutions of the PSNR report")
    p.add_argument("--vae-noise", type=float, default=0.1, help="posterior sample std scale in VAE training")
    p.add_argument("--vae-minutes", type=float, default=None, help="stop the VAE stage after this long")
    p.add_argument("--dit-steps", type=int, default=1000)
    p.add_argument("--dit-batch", type=int, default=8)
    p.add_argument("--dit-batch-hi", type=int, default=4)
    p.add_argument("--hi-every", type=int, default=5, help="every k-th DiT step is at 128 px (0: never)")
    p.add_argument("--dit-lr", type=float, default=1e-3)
    p.add_argument("--dit-minutes", type=float, default=None, help="stop the DiT stage after this long")
    p.add_argument("--n-lo", type=int, default=768, help="training clips encoded at 64 px")
    p.add_argument("--n-hi", type=int, default=192, help="training clips encoded at 128 px")
    p.add_argument("--ckpt-every", type=int, default=50)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.stage in ("text", "all"):
        train_text(a.out, a.seed)
    if a.stage in ("vae", "all"):
        train_vae(a.out, a.vae_steps, a.vae_batch, a.vae_lr, a.seed, ckpt_every=a.ckpt_every,
                  time_limit_min=a.vae_minutes, stats_clips=a.vae_stats_clips, eval_clips=a.vae_eval_clips,
                  eval_sizes=tuple(int(v) for v in a.vae_eval_sizes.split(",")), noise=a.vae_noise)
    if a.stage in ("dit", "all"):
        train_dit(a.out, a.dit_steps, a.dit_batch, a.dit_batch_hi, a.hi_every, a.dit_lr, a.seed, a.n_lo, a.n_hi,
                  ckpt_every=a.ckpt_every, time_limit_min=a.dit_minutes)
    if a.stage in ("assemble", "all"):
        assemble(a.out, a.dest or PACKAGE_PIPELINE_DIR)
    if a.stage == "sibling":
        train_dit(a.out, a.dit_steps, a.dit_batch, a.dit_batch_hi, a.hi_every, a.dit_lr, a.seed, a.n_lo, a.n_hi,
                  ckpt_every=a.ckpt_every, time_limit_min=a.dit_minutes, config=SIBLING_CONFIG,
                  parts=PACKAGE_PIPELINE_DIR, name="sibling")
        ship_sibling(a.out, a.dest or a.out / "sibling")


if __name__ == "__main__":
    main()

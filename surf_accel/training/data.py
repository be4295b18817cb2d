"""HR clips and their captions, and the cached text embeddings.

A clip is a ``(3, F, H, W)`` float32 tensor in [-1, 1] (the layout diffusers' video VAEs take after
a batch axis) with a caption. Sources:

- the toy world's generator (``surf_accel.toyworld.world``): clips balanced over its labels,
  rendered at the target size; the caption is the clip's prompt;
- a folder of videos: every ``.mp4`` (read with imageio's ffmpeg plugin), frames resized so the
  short side matches the target (bilinear, antialiased), centre-cropped, the first ``num_frames``
  frames; captions from a sidecar ``NAME.txt`` or ``captions.json`` ({file name: caption}).

Text embeddings come from the base pipeline's own ``encode_prompt`` (the padded ``max_sequence_length``
tokens WanPipeline hands its transformer); the pair store keeps them beside the pairs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from surf_accel.toyworld import world
from surf_accel.training.config import DataConfig

logger = logging.getLogger("surf_accel.training")

VIDEO_EXTENSIONS = (".mp4",)


class DataError(ValueError):
    """Missing or unusable training data."""


@dataclass
class Clip:
    video: torch.Tensor  # (3, F, H, W) float32 in [-1, 1]
    caption: str
    name: str = ""


# ---------------------------------------------------------------------------- sources
class ClipSource:
    """``len(source)`` clips, read or rendered on demand (``source[i]`` -> ``Clip``), so a large set
    never sits in memory as pixels; ``captions`` are known up front (for the embedding cache)."""

    def __init__(self, captions: Sequence[str], names: Sequence[str], load):
        self.captions, self.names, self._load = list(captions), list(names), load

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> Clip:
        return Clip(self._load(i), self.captions[i], self.names[i])

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Clips ``start:stop`` as ``(B, 3, F, H, W)``."""
        return torch.stack([self._load(i) for i in range(start, min(stop, len(self)))])


def toy_source(n: int, seed: int, size: tuple[int, int], num_frames: int) -> ClipSource:
    """``n`` toy-world clips (balanced labels, seeded) rendered at ``size`` = (height, width); the
    caption is the clip's prompt."""
    specs = world.sample_specs(n, seed, num_frames)
    return ClipSource([s.prompt for s in specs], [f"toy-{seed}-{i}" for i in range(n)],
                      lambda i: specs[i].render(size[0], size[1], num_frames))


# ---------------------------------------------------------------------------- video folder
def fit_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(F, H0, W0, 3)`` uint8 -> ``(3, F, height, width)`` float in [-1, 1]: scale so the frame
    covers the target (bilinear, antialiased), then centre-crop."""
    x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (F, 3, H0, W0)
    h0, w0 = x.shape[-2:]
    scale = max(height / h0, width / w0)
    nh, nw = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    if (nh, nw) != (h0, w0):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    x = x[:, :, top:top + height, left:left + width].clamp(-1.0, 1.0)
    return x.permute(1, 0, 2, 3).contiguous()


def read_video(path: str | os.PathLike, max_frames: Optional[int] = None) -> torch.Tensor:
    """The frames of a video file as ``(F, H, W, 3)`` uint8 (at most ``max_frames``)."""
    import imageio.v2 as imageio  # optional (the video/train extras): only mp4 data needs it
    import numpy as np

    frames = []
    try:
        reader = imageio.get_reader(str(path), "ffmpeg")
    except Exception as e:  # noqa: BLE001  (imageio raises several types for unreadable files)
        raise DataError(f"{path}: cannot be read as a video ({e})") from e
    try:
        for f in reader:
            frames.append(np.asarray(f)[..., :3])
            if max_frames is not None and len(frames) >= max_frames:
                break
    finally:
        reader.close()
    if not frames:
        raise DataError(f"{path}: no frames could be read")
    return torch.from_numpy(np.stack(frames))


def count_frames(path: str | os.PathLike, need: int) -> int:
    """Frames in ``path``, counting up to ``need``."""
    return int(read_video(path, need).shape[0])


def read_captions(video_dir: Path, names: Sequence[str]) -> dict[str, str]:
    """Captions for the files ``names`` (in ``video_dir``): ``NAME.txt`` beside each, else
    ``captions.json``. A video without a caption is an error (the refiner reads text)."""
    table = {}
    cj = video_dir / "captions.json"
    if cj.is_file():
        table = json.loads(cj.read_text())
        if not isinstance(table, dict):
            raise DataError(f"{cj} must map file names to captions")
    out, missing = {}, []
    for n in names:
        side = (video_dir / n).with_suffix(".txt")
        if side.is_file():
            out[n] = side.read_text().strip()
        elif n in table:
            out[n] = str(table[n]).strip()
        else:
            missing.append(n)
    if missing:
        raise DataError(f"no caption for {len(missing)} video(s) in {video_dir} (e.g. {missing[0]}): add "
                        f"{Path(missing[0]).stem}.txt beside it or an entry in captions.json")
    return out


def video_source(video_dir: str | os.PathLike, height: int, width: int, num_frames: int,
                 limit: Optional[int] = None) -> ClipSource:
    """Clips from the ``.mp4`` files in ``video_dir`` (sorted by name); videos shorter than
    ``num_frames`` are skipped with a warning."""
    d = Path(video_dir)
    if not d.is_dir():
        raise DataError(f"data.video_dir {d} does not exist or is not a folder")
    names = sorted(p.name for p in d.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not names:
        raise DataError(f"no {'/'.join(VIDEO_EXTENSIONS)} videos in {d}")
    captions = read_captions(d, names)
    keep, short = [], []
    for n in names:
        got = count_frames(d / n, num_frames)
        if got < num_frames:
            short.append(f"{n} ({got} frames)")
            continue
        keep.append(n)
        if limit is not None and len(keep) >= limit:
            break
    if short:
        logger.warning("skipped %d video(s) shorter than %d frames: %s", len(short), num_frames, ", ".join(short[:5]))
    if not keep:
        raise DataError(f"no video in {d} has {num_frames} frames")
    return ClipSource([captions[n] for n in keep], keep,
                      lambda i: fit_frames(read_video(d / keep[i], num_frames), height, width))


def _subset(src: ClipSource, start: int, stop: int) -> ClipSource:
    idx = list(range(start, stop))
    return ClipSource([src.captions[i] for i in idx], [src.names[i] for i in idx], lambda i: src._load(idx[i]))


def load_sources(cfg: DataConfig, seed: int) -> tuple[ClipSource, ClipSource]:
    """(training clips, held-out validation clips) for ``cfg``."""
    size = (cfg.height, cfg.width)
    if cfg.source == "toy":
        return (toy_source(cfg.num_clips, seed + 1, size, cfg.num_frames),
                toy_source(cfg.val_clips, seed + 1_000_003, size, cfg.num_frames))
    src = video_source(cfg.video_dir, cfg.height, cfg.width, cfg.num_frames, limit=cfg.num_clips + cfg.val_clips)
    n = len(src)
    if n <= cfg.val_clips:
        raise DataError(f"{n} usable video(s) in {cfg.video_dir}: too few for {cfg.val_clips} held-out "
                        "validation clip(s) and a training set (lower data.val_clips or add videos)")
    return _subset(src, 0, n - cfg.val_clips), _subset(src, n - cfg.val_clips, n)


# ---------------------------------------------------------------------------- text embeddings
@torch.no_grad()
def encode_captions(pipe, captions: Sequence[str], max_sequence_length: int) -> torch.Tensor:
    """``(N, max_sequence_length, text_dim)`` embeddings exactly as the pipeline's ``encode_prompt`` makes
    them for its transformer (its dtype; no classifier-free guidance branch). Each caption is encoded
    alone, as a one-prompt call encodes it: batching captions changes the encoder's rounding."""
    device = pipe._execution_device
    out = []
    for caption in captions:
        emb, _ = pipe.encode_prompt([caption], do_classifier_free_guidance=False,
                                    max_sequence_length=max_sequence_length, device=device)
        out.append(emb.cpu())
    return torch.cat(out)


def text_encoder_id(pipe) -> str:
    """Identifies the text encoder's weights (stored embeddings are invalid for another one)."""
    h = hashlib.sha256()
    for k, v in sorted(pipe.text_encoder.state_dict().items())[:8]:
        h.update(k.encode())
        h.update(v.detach().float().cpu().flatten()[:256].numpy().tobytes())
    return h.hexdigest()[:16]

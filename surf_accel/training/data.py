"""HR clips and their captions, what they were made from, and the cached text embeddings.

A clip is a ``(3, F, H, W)`` float32 tensor in [-1, 1] (the layout diffusers' video VAEs take after
a batch axis) with a caption. Sources:

- the toy world's generator (``surf_accel.toyworld.world``): clips balanced over its labels,
  rendered at the target size; the caption is the clip's prompt;
- a folder of videos: every ``.mp4``, decoded with PyAV (FFmpeg's libraries). Each file is checked
  once when the set is read (opened, its first frame decoded, its frames counted from the container)
  and skipped, with the reason kept, when it cannot be read or is too short. A clip is ``num_frames``
  frames ``frame_stride`` apart, from the start of the video or from a random window; each frame is
  resized to cover the target times a scale factor (bilinear, antialiased) and cropped at the centre
  or at random. Clip ``i``'s draws come from a generator seeded by ``(seed, i)`` alone, so every
  process that reads the same folder cuts clip ``i`` the same way. Captions from a sidecar
  ``NAME.txt`` or ``captions.json`` ({file name: caption}); a video without one is an error.

``data_card`` summarises the clips of a run (counts, sizes, sampling, captions, skipped files) and
``write_data_card`` writes it as ``data_card.json`` and ``DATA_CARD.md``.

Text embeddings come from the base pipeline's own ``encode_prompt`` (the padded ``max_sequence_length``
tokens WanPipeline hands its transformer); the pair store keeps them beside the pairs.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from surf_accel import files
from surf_accel.toyworld import world
from surf_accel.training.config import DataConfig

logger = logging.getLogger("surf_accel.training")

VIDEO_EXTENSIONS = (".mp4",)
# where a clip's caption came from
SIDECAR, CAPTIONS_JSON, TOY_PROMPT = "NAME.txt", "captions.json", "toy prompt"


class DataError(ValueError):
    """Missing or unusable training data."""


@dataclass
class Clip:
    video: torch.Tensor  # (3, F, H, W) float32 in [-1, 1]
    caption: str
    name: str = ""


@dataclass(frozen=True)
class VideoInfo:
    """A video file as the check found it: ``frames`` from the container (its packets counted where it
    does not say), the frame size, and the timing that finds frame ``i`` after a seek (``first_pts``:
    the first frame's timestamp in ``time_base`` units; ``rate``: frames per second; ``None`` where the
    file has none, and then frames are counted from the start)."""

    bytes: int
    height: int
    width: int
    frames: int
    time_base: Fraction
    rate: Optional[Fraction]
    first_pts: Optional[int]


@dataclass(frozen=True)
class Sampling:
    """How clips are cut from videos (the ``DataConfig`` keys of the same names) and the seed of the
    per-clip draws."""

    seed: int = 0
    temporal_crop: str = "start"
    frame_stride: int = 1
    spatial_crop: str = "center"
    scale: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def of(cls, cfg: DataConfig, seed: int) -> "Sampling":
        return cls(seed, cfg.temporal_crop, cfg.frame_stride, cfg.spatial_crop, tuple(cfg.scale))

    def span(self, num_frames: int) -> int:
        """Frames of the video a clip of ``num_frames`` frames covers."""
        return (num_frames - 1) * self.frame_stride + 1


@dataclass(frozen=True)
class Crop:
    """One clip's cut: frames ``start, start + stride, ...`` (``count`` of them) of its video, each
    resized to ``resized`` = (height, width) and cut at ``(top, left)``; ``scale``: the drawn factor
    over the size that just covers the target."""

    start: int
    stride: int
    count: int
    scale: float
    resized: tuple[int, int]
    top: int
    left: int

    @property
    def indices(self) -> range:
        return range(self.start, self.start + (self.count - 1) * self.stride + 1, self.stride)


@dataclass(frozen=True)
class Skipped:
    """A file left out of a source: ``reason`` is ``"unreadable"`` or ``"too short"``."""

    name: str
    reason: str
    detail: str
    bytes: int


@dataclass(frozen=True)
class Provenance:
    """What a source was read from: ``kind`` ``"toy"`` or ``"videos"``; for a folder its candidate
    files, how many were examined (reading stops once ``limit`` clips are found), those skipped, and
    the sampling."""

    kind: str
    folder: Optional[str] = None
    files: int = 0
    examined: int = 0
    skipped: tuple[Skipped, ...] = ()
    sampling: Optional[Sampling] = None


# ---------------------------------------------------------------------------- sources
class ClipSource:
    """``len(source)`` clips, read or rendered on demand (``source[i]`` -> ``Clip``), so a large set
    never sits in memory as pixels; ``captions`` are known up front (for the embedding cache), with
    where each came from (``caption_origins``), and for videos each clip's file (``videos``) and cut
    (``crops``); ``provenance`` is the whole set's (skipped files included)."""

    def __init__(self, captions: Sequence[str], names: Sequence[str], load: Callable[[int], torch.Tensor], *,
                 caption_origins: Sequence[str], provenance: Provenance,
                 videos: Sequence[VideoInfo] = (), crops: Sequence[Crop] = ()):
        self.captions, self.names, self._load = list(captions), list(names), load
        self.caption_origins, self.provenance = list(caption_origins), provenance
        self.videos, self.crops = list(videos), list(crops)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> Clip:
        return Clip(self._load(i), self.captions[i], self.names[i])

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Clips ``start:stop`` as ``(B, 3, F, H, W)``."""
        return torch.stack([self._load(i) for i in range(start, min(stop, len(self)))])

    def subset(self, start: int, stop: int) -> "ClipSource":
        """Clips ``start:stop``, each read exactly as here (its cut is the one drawn for its index here)."""
        cut = slice(start, stop)
        return ClipSource(self.captions[cut], self.names[cut], lambda i: self._load(start + i),
                          caption_origins=self.caption_origins[cut], provenance=self.provenance,
                          videos=self.videos[cut], crops=self.crops[cut])


def toy_source(n: int, seed: int, size: tuple[int, int], num_frames: int) -> ClipSource:
    """``n`` toy-world clips (balanced labels, seeded) rendered at ``size`` = (height, width); the
    caption is the clip's prompt."""
    specs = world.sample_specs(n, seed, num_frames)
    return ClipSource([s.prompt for s in specs], [f"toy-{seed}-{i}" for i in range(n)],
                      lambda i: specs[i].render(size[0], size[1], num_frames),
                      caption_origins=[TOY_PROMPT] * n, provenance=Provenance("toy"))


# ---------------------------------------------------------------------------- video files
def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Check that ``path`` is a video whose first frame decodes and count its frames; ``DataError``
    with the reason otherwise."""
    import av  # optional (the train extra): only mp4 data needs it

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise DataError("no video stream")
            s = c.streams.video[0]
            first = next(c.decode(s), None)
            if first is None:
                raise DataError("no frame can be decoded")
            frames = s.frames
            info = (first.height, first.width, s.time_base, s.average_rate, first.pts)
        if not frames:  # the container does not say (e.g. a fragmented mp4): count the packets
            with av.open(str(path)) as c:
                frames = sum(1 for p in c.demux(c.streams.video[0]) if p.size)
    except (av.FFmpegError, OSError) as e:
        raise DataError(str(e)) from e
    h, w, time_base, rate, first_pts = info
    return VideoInfo(os.path.getsize(path), h, w, int(frames), Fraction(time_base), rate and Fraction(rate), first_pts)


def draw_crop(video: VideoInfo, height: int, width: int, num_frames: int, sampling: Sampling, index: int) -> Crop:
    """Clip ``index``'s cut of ``video``: drawn from a generator seeded by ``(sampling.seed, index)``
    alone. The defaults are the first frames, resized to just cover ``height x width``, centre crop."""
    rng = random.Random(f"surf_accel.data:{sampling.seed}:{index}")  # str seeds go through SHA-512: no hash salt
    span = sampling.span(num_frames)
    start = rng.randint(0, video.frames - span) if sampling.temporal_crop == "random" else 0
    scale = rng.uniform(*sampling.scale)  # exactly 1.0 for the default [1, 1]
    cover = max(height / video.height, width / video.width)
    nh, nw = max(height, round(video.height * cover * scale)), max(width, round(video.width * cover * scale))
    if sampling.spatial_crop == "random":
        top, left = rng.randint(0, nh - height), rng.randint(0, nw - width)
    else:
        top, left = (nh - height) // 2, (nw - width) // 2
    return Crop(start, sampling.frame_stride, num_frames, scale, (nh, nw), top, left)


def fit_frame(frame: np.ndarray, crop: Crop, height: int, width: int) -> torch.Tensor:
    """One ``(H0, W0, 3)`` uint8 frame -> ``(3, height, width)`` float in [-1, 1]: resized to
    ``crop.resized`` (bilinear, antialiased), then cut at ``(crop.top, crop.left)``."""
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 127.5 - 1.0  # (1, 3, H0, W0)
    if tuple(x.shape[-2:]) != crop.resized:
        x = F.interpolate(x, size=crop.resized, mode="bilinear", align_corners=False, antialias=True)
    return x[0, :, crop.top:crop.top + height, crop.left:crop.left + width].clamp(-1.0, 1.0)


def _decode_into(out: torch.Tensor, path: str, video: VideoInfo, crop: Crop, seek: bool) -> Optional[int]:
    """Decode the frames ``crop.indices`` of ``path`` into ``out`` ``(3, count, H, W)``; returns how
    many were found, or ``None`` where, after a seek, the timestamps do not number the frames one by
    one (a variable frame rate): the caller then counts from the start."""
    import av  # optional (the train extra), as in probe_video

    height, width = out.shape[-2:]
    wanted = crop.indices
    k = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1  # parallel work is one process per share of the clips
        index = -1
        if seek:  # to the keyframe at or before the window's first frame
            c.seek(round(video.first_pts + crop.start / (video.rate * video.time_base)), stream=s, backward=True)
        for f in c.decode(s):
            if seek:
                if f.pts is None:
                    return None
                i = round((f.pts - video.first_pts) * video.time_base * video.rate)
                if (index < 0 and i > crop.start) or (index >= 0 and i != index + 1):
                    return None
                index = i
            else:
                index += 1
            if index in wanted:  # frames before the window are decoded (the codec needs them), not converted
                out[:, k] = fit_frame(f.to_ndarray(format="rgb24"), crop, height, width)
                k += 1
                if k == len(wanted):
                    break
    return k


def read_clip(path: str | os.PathLike, video: VideoInfo, crop: Crop, height: int, width: int) -> torch.Tensor:
    """The clip ``crop`` cuts from ``path``: ``(3, crop.count, height, width)`` float32 in [-1, 1].
    Only frames up to the window's last are decoded (after a seek to the keyframe before its first
    where the file has timestamps); one decoded frame at a time is held at full size."""
    import av  # optional (the train extra), as in probe_video

    out = torch.empty(3, crop.count, height, width)
    seek = crop.start > 0 and video.first_pts is not None and video.rate is not None
    try:
        got = _decode_into(out, str(path), video, crop, seek)
        if got is None:
            got = _decode_into(out, str(path), video, crop, False)
    except (av.FFmpegError, OSError) as e:
        raise DataError(f"{path}: frames {crop.indices.start}..{crop.indices[-1]} cannot be decoded ({e}); "
                        "the file passed the check when the data set was read (header and first frame), so "
                        "it is damaged further on or has changed since") from e
    if got < crop.count:
        raise DataError(f"{path}: {got} of the {crop.count} frames {crop.indices.start}..{crop.indices[-1]} "
                        f"could be decoded (the container counts {video.frames}); the file is damaged or has "
                        "changed since the data set was read")
    return out


def read_captions(video_dir: Path, names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Caption and its origin (``SIDECAR`` or ``CAPTIONS_JSON``) for the files ``names`` (in
    ``video_dir``): ``NAME.txt`` beside each, else ``captions.json``. A video without a caption is an
    error: the refiner reads text, and a caption forgotten is better fixed than trained around."""
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
            out[n] = (side.read_text().strip(), SIDECAR)
        elif n in table:
            out[n] = (str(table[n]).strip(), CAPTIONS_JSON)
        else:
            missing.append(n)
    if missing:
        raise DataError(f"no caption for {len(missing)} video(s) in {video_dir} (e.g. {missing[0]}): add "
                        f"{Path(missing[0]).stem}.txt beside it or an entry in captions.json")
    return out


def video_source(video_dir: str | os.PathLike, height: int, width: int, num_frames: int,
                 limit: Optional[int] = None, *, sampling: Sampling = Sampling()) -> ClipSource:
    """Clips from the ``.mp4`` files in ``video_dir`` (sorted by name, at most ``limit``), cut as
    ``sampling`` says; files that cannot be read or are shorter than the clip's span are skipped
    (``provenance.skipped``, with a warning). ``DataError`` when no file is usable."""
    d = Path(video_dir)
    if not d.is_dir():
        raise DataError(f"data.video_dir {d} does not exist or is not a folder")
    names = sorted(p.name for p in d.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not names:
        raise DataError(f"no {'/'.join(VIDEO_EXTENSIONS)} videos in {d}")
    captions = read_captions(d, names)
    span = sampling.span(num_frames)
    keep: list[str] = []
    videos: list[VideoInfo] = []
    crops: list[Crop] = []
    skipped: list[Skipped] = []
    examined = 0
    for n in names:
        if limit is not None and len(keep) >= limit:
            break
        examined += 1
        try:
            v = probe_video(d / n)
        except DataError as e:
            skipped.append(Skipped(n, "unreadable", str(e), os.path.getsize(d / n)))
            continue
        if v.frames < span:
            stride = f" at stride {sampling.frame_stride}" if sampling.frame_stride > 1 else ""
            skipped.append(Skipped(n, "too short", f"{v.frames} frames, a clip of {num_frames}{stride} needs {span}",
                                   v.bytes))
            continue
        crops.append(draw_crop(v, height, width, num_frames, sampling, len(keep)))
        keep.append(n)
        videos.append(v)
    if skipped:
        logger.warning("skipped %d of %d video(s) in %s: %s", len(skipped), examined, d,
                       "; ".join(f"{s.name} ({s.reason}: {s.detail})" for s in skipped[:5]))
    if not keep:
        raise DataError(f"no usable video in {d} ({len(skipped)} skipped, e.g. {skipped[0].name}: "
                        f"{skipped[0].reason}, {skipped[0].detail})")
    prov = Provenance("videos", str(d), len(names), examined, tuple(skipped), sampling)
    return ClipSource([captions[n][0] for n in keep], keep,
                      lambda i: read_clip(d / keep[i], videos[i], crops[i], height, width),
                      caption_origins=[captions[n][1] for n in keep], provenance=prov, videos=videos, crops=crops)


def load_sources(cfg: DataConfig, seed: int) -> tuple[ClipSource, ClipSource]:
    """(training clips, held-out validation clips) for ``cfg``; video clips are cut with draws seeded
    by ``seed``."""
    size = (cfg.height, cfg.width)
    if cfg.source == "toy":
        return (toy_source(cfg.num_clips, seed + 1, size, cfg.num_frames),
                toy_source(cfg.val_clips, seed + 1_000_003, size, cfg.num_frames))
    src = video_source(cfg.video_dir, cfg.height, cfg.width, cfg.num_frames, limit=cfg.num_clips + cfg.val_clips,
                       sampling=Sampling.of(cfg, seed))
    n = len(src)
    if n <= cfg.val_clips:
        raise DataError(f"{n} usable video(s) in {cfg.video_dir}: too few for {cfg.val_clips} held-out "
                        "validation clip(s) and a training set (lower data.val_clips or add videos)")
    return src.subset(0, n - cfg.val_clips), src.subset(n - cfg.val_clips, n)


# ---------------------------------------------------------------------------- data card
def _stats(values: Sequence[float]) -> Optional[dict]:
    if not values:
        return None
    return {"min": min(values), "mean": round(sum(values) / len(values), 3), "max": max(values)}


def _counts(values) -> dict:
    return dict(sorted(Counter(values).items()))


def data_card(train_src: ClipSource, val_src: ClipSource, cfg: DataConfig) -> dict:
    """What the run's clips are (JSON-ready): counts, the clip's size and frames, the sampling
    settings, captions (where from, unique, length in words and characters), and for a folder of
    videos the files' sizes, frame counts and rates, the cuts drawn, the bytes read and every skipped
    file with its reason. ``train_src``/``val_src``: ``load_sources(cfg, seed)``."""
    both = (train_src, val_src)
    caps = train_src.captions + val_src.captions
    prov = train_src.provenance
    card: dict = {
        "source": cfg.source,
        "clips": {"train": len(train_src), "val": len(val_src)},
        "clip": {"height": cfg.height, "width": cfg.width, "num_frames": cfg.num_frames},
        "captions": {"from": _counts(o for s in both for o in s.caption_origins), "unique": len(set(caps)),
                     "words": _stats([len(c.split()) for c in caps]), "characters": _stats([len(c) for c in caps])},
    }
    if prov.kind != "videos":
        return card
    videos = [v for s in both for v in s.videos]
    crops = [c for s in both for c in s.crops]
    sm = prov.sampling
    card["sampling"] = {"seed": sm.seed, "temporal_crop": sm.temporal_crop, "frame_stride": sm.frame_stride,
                        "spatial_crop": sm.spatial_crop, "scale": list(sm.scale),
                        "drawn_start": _stats([c.start for c in crops]), "drawn_scale": _stats([c.scale for c in crops])}
    card["videos"] = {
        "folder": prov.folder, "files": prov.files, "examined": prov.examined, "used": len(videos),
        "skipped": len(prov.skipped), "not_examined": prov.files - prov.examined,
        "source_bytes": sum(v.bytes for v in videos),
        "resolutions": _counts(f"{v.width}x{v.height}" for v in videos),
        "fps": _counts(round(float(v.rate), 3) if v.rate else "unknown" for v in videos),
        "frames": _stats([v.frames for v in videos]),
    }
    card["skipped"] = [{"file": s.name, "reason": s.reason, "detail": s.detail, "bytes": s.bytes} for s in prov.skipped]
    card["skipped_by_reason"] = _counts(s.reason for s in prov.skipped)
    return card


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _range_text(st: Optional[dict], unit: str = "") -> str:
    return "-" if st is None else f"{st['min']}-{st['max']}{unit} (mean {st['mean']})"


def data_card_markdown(card: dict) -> str:
    """``card`` (``data_card``) as a short page for people."""
    c, cap = card["clip"], card["captions"]
    lines = ["# Data card", "",
             f"- Clips: {card['clips']['train']} training, {card['clips']['val']} validation; "
             f"{c['num_frames']} frames at {c['height']}x{c['width']} (source: {card['source']})",
             f"- Captions: {', '.join(f'{n} from {k}' for k, n in cap['from'].items())}; {cap['unique']} unique; "
             f"{_range_text(cap['words'])} words"]
    if "videos" in card:
        v, sm = card["videos"], card["sampling"]
        lines += [f"- Videos in `{_md(v['folder'])}`: {v['files']} files, {v['examined']} examined, {v['used']} used "
                  f"({v['source_bytes']} bytes), {v['skipped']} skipped, {v['not_examined']} not examined",
                  f"- Sizes: {', '.join(f'{k} ({n})' for k, n in v['resolutions'].items())}; frame rates: "
                  f"{', '.join(f'{k} ({n})' for k, n in v['fps'].items())}; {_range_text(v['frames'])} frames",
                  f"- Cut: {sm['temporal_crop']} window, stride {sm['frame_stride']}, {sm['spatial_crop']} crop, "
                  f"scale {sm['scale'][0]}-{sm['scale'][1]} (seed {sm['seed']}; starts drawn "
                  f"{_range_text(sm['drawn_start'])}, scales {_range_text(sm['drawn_scale'])})"]
        if card["skipped"]:
            lines += ["", "## Skipped files", "", "| file | reason | detail |", "|---|---|---|"]
            lines += [f"| {_md(s['file'])} | {s['reason']} | {_md(s['detail'])} |" for s in card["skipped"]]
    return "\n".join(lines) + "\n"


def write_data_card(folder: str | os.PathLike, card: dict) -> tuple[Path, Path]:
    """``card`` as ``folder/data_card.json`` and ``folder/DATA_CARD.md`` (each written atomically by
    ``surf_accel.files``); returns both paths."""
    folder = Path(folder)
    return (files.write_json(folder / "data_card.json", card, indent=2),
            files.write_text(folder / "DATA_CARD.md", data_card_markdown(card)))


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

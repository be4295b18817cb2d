"""Video clips read with PyAV: the frames written come back, the cuts are drawn per (seed, clip index)
and stay in bounds, unusable files are skipped with their reason, and the data card counts them.

Videos are written here with PyAV. ``libx264rgb`` at ``qp 0`` is lossless and RGB end to end (no
colour conversion), so its frames must come back exactly; ``libx264`` ``yuv444p`` at ``crf 0`` is
lossless in YUV, so only the 8-bit RGB -> YUV -> RGB rounding remains (at most 2 levels, measured).
"""

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

av = pytest.importorskip("av")

from surf_accel.training import data as D  # noqa: E402
from surf_accel.training.config import ConfigError, DataConfig, config_from_dict  # noqa: E402


def frames_for(n: int, h: int, w: int, salt: int = 0) -> np.ndarray:
    """``(n, h, w, 3)`` uint8: smooth patterns that move by a different amount in each channel (so a
    frame off by one, a shifted crop or a swapped channel all change the pixels) and compress into
    P- and B-frames (random noise would make every frame a keyframe)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(xx * 5 + t * 3 + salt) % 256, (yy * 7 + t + 2 * salt) % 256,
                               (xx + yy + 11 * t) % 256], -1) for t in range(n)]).astype(np.uint8)


def write_mp4(path, frames: np.ndarray, fps: int, *, lossless_rgb: bool = True, gop: int = 6,
              pts_ms=None, **container_options) -> None:
    """``frames`` as an H.264 mp4: exact (``libx264rgb`` qp 0) or ``yuv444p`` crf 0; a keyframe every
    ``gop`` frames; ``pts_ms``: frame times in milliseconds (a variable frame rate)."""
    with av.open(str(path), "w", options=container_options) as c:
        s = c.add_stream("libx264rgb" if lossless_rgb else "libx264", rate=fps)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "rgb24" if lossless_rgb else "yuv444p"
        # keyframes exactly every `gop` frames (no scene-cut detection: lossless coding calls every frame a cut)
        s.options = {"qp" if lossless_rgb else "crf": "0", "g": str(gop), "sc_threshold": "0"}
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            if pts_ms is not None:
                vf.pts, vf.time_base = pts_ms[i], Fraction(1, 1000)
            c.mux(s.encode(vf))
        c.mux(s.encode())


def as_clip(frames: np.ndarray) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 -> ``(3, F, H, W)`` float64 in [-1, 1]."""
    return torch.from_numpy(frames).double().permute(3, 0, 1, 2) / 127.5 - 1.0


def close(got: torch.Tensor, ref: torch.Tensor) -> bool:
    """float32 results against a float64 reference: a thousandth of a level (one level is 2/255), far
    below any frame, pixel or channel mix-up."""
    return got.shape == ref.shape and (got.double() - ref).abs().max().item() < 1e-5


def whole(video: D.VideoInfo) -> D.Crop:
    """The cut that takes every frame as it is."""
    return D.Crop(0, 1, video.frames, 1.0, (video.height, video.width), 0, 0)


def oracle(frames: np.ndarray, crop: D.Crop, height: int, width: int) -> torch.Tensor:
    """What ``crop`` should give, in float64 on the whole stack at once: the frames ``crop.indices``,
    resized together to ``crop.resized``, then sliced."""
    x = as_clip(frames[list(crop.indices)]).permute(1, 0, 2, 3)  # (F, 3, H0, W0)
    if tuple(x.shape[-2:]) != crop.resized:
        x = F.interpolate(x, size=crop.resized, mode="bilinear", align_corners=False, antialias=True)
    return x[:, :, crop.top:crop.top + height, crop.left:crop.left + width].clamp(-1, 1).permute(1, 0, 2, 3)


# ---------------------------------------------------------------------------- decoding
def test_decoded_frames_are_the_frames_written(tmp_path):
    """Odd frame sizes and frame rates: the container's frame count, the size, and every pixel."""
    exact = frames_for(13, 47, 81)
    write_mp4(tmp_path / "rgb.mp4", exact, fps=7)
    v = D.probe_video(tmp_path / "rgb.mp4")
    assert (v.frames, v.height, v.width, v.rate, v.first_pts) == (13, 47, 81, 7, 0)
    assert v.bytes == (tmp_path / "rgb.mp4").stat().st_size
    assert close(D.read_clip(tmp_path / "rgb.mp4", v, whole(v), 47, 81), as_clip(exact))

    yuv = frames_for(11, 33, 50, salt=9)
    write_mp4(tmp_path / "yuv.mp4", yuv, fps=30, lossless_rgb=False)
    v = D.probe_video(tmp_path / "yuv.mp4")
    assert (v.frames, v.rate) == (11, 30)
    levels = ((D.read_clip(tmp_path / "yuv.mp4", v, whole(v), 33, 50).double() - as_clip(yuv)) * 127.5).abs().max()
    assert levels <= 2.0 + 1e-3  # 8-bit YUV rounding both ways; a frame off by one differs by >= 3 levels

    # a fragmented mp4 does not say how many frames it holds: they are counted
    write_mp4(tmp_path / "frag.mp4", exact, fps=5, movflags="frag_keyframe+empty_moov")
    with av.open(str(tmp_path / "frag.mp4")) as c:
        assert c.streams.video[0].frames == 0  # the case being tested
    v = D.probe_video(tmp_path / "frag.mp4")
    assert v.frames == 13 and close(D.read_clip(tmp_path / "frag.mp4", v, whole(v), 47, 81), as_clip(exact))


class CountingOpen:
    """``av.open`` that counts the frames each decoder hands out."""

    def __init__(self, real):
        self.real, self.decoded = real, 0

    def __call__(self, *a, **k):
        counter, c = self, self.real(*a, **k)

        class Container:
            streams = c.streams

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                c.close()

            def seek(self, *a, **k):
                return c.seek(*a, **k)

            def decode(self, *a, **k):
                for f in c.decode(*a, **k):
                    counter.decoded += 1
                    yield f

        return Container()


def test_windows_decode_from_the_keyframe_before_them(tmp_path, monkeypatch):
    """A window is the same frames as in a decode from the start, and only frames from the keyframe
    before it to its last frame are decoded."""
    frames = frames_for(40, 32, 48)
    write_mp4(tmp_path / "a.mp4", frames, fps=24, gop=6)
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert [i for i, p in enumerate(c.demux(video=0)) if p.is_keyframe] == list(range(0, 40, 6))
    v = D.probe_video(tmp_path / "a.mp4")
    counting = CountingOpen(av.open)
    monkeypatch.setattr(av, "open", counting)
    for start, stride, count, decoded in ((0, 1, 5, 5), (10, 1, 5, 9), (35, 1, 5, 10), (13, 3, 4, 11)):
        counting.decoded = 0
        crop = D.Crop(start, stride, count, 1.0, (32, 48), 0, 0)
        assert close(D.read_clip(tmp_path / "a.mp4", v, crop, 32, 48), oracle(frames, crop, 32, 48)), start
        assert counting.decoded == decoded, (start, counting.decoded)


def test_variable_frame_rate_windows_are_counted_from_the_start(tmp_path):
    """Where timestamps do not number the frames (irregular gaps), frame i is still the i-th decoded."""
    frames = frames_for(30, 32, 48)
    pts = np.cumsum([0] + [50 if i % 3 else 170 for i in range(29)]).tolist()
    write_mp4(tmp_path / "vfr.mp4", frames, fps=10, gop=4, pts_ms=pts)
    v = D.probe_video(tmp_path / "vfr.mp4")
    assert v.frames == 30
    for start in range(1, 26, 4):
        crop = D.Crop(start, 1, 5, 1.0, (32, 48), 0, 0)
        assert close(D.read_clip(tmp_path / "vfr.mp4", v, crop, 32, 48), oracle(frames, crop, 32, 48)), start


def test_damage_found_only_when_reading_is_named(tmp_path):
    """A file whose header and first frame are fine but whose data stops early passes the check and
    fails when its frames are read, naming the file."""
    frames = frames_for(30, 32, 48)
    write_mp4(tmp_path / "a.mp4", frames, fps=8, movflags="faststart")  # the index first: a cut keeps it
    v = D.probe_video(tmp_path / "a.mp4")
    data = (tmp_path / "a.mp4").read_bytes()
    (tmp_path / "a.mp4").write_bytes(data[:len(data) // 3])
    assert D.probe_video(tmp_path / "a.mp4").frames == 30
    with pytest.raises(D.DataError, match="a.mp4.*frames 20..29"):
        D.read_clip(tmp_path / "a.mp4", v, D.Crop(20, 1, 10, 1.0, (32, 48), 0, 0), 32, 48)


# ---------------------------------------------------------------------------- cuts
def test_default_output_is_unchanged(tmp_path):
    """Defaults: the first ``num_frames`` frames, scaled to just cover the target, centre crop, in the
    float32 arithmetic clips were always made with, bit for bit. References by hand: 48x80 -> 32x32
    scales by 2/3 to 32x53 (53.33 rounded) and keeps columns 10..41; 32x40 -> 32x32 needs no resize
    and keeps columns 4..35 of the written pixels."""
    wide, narrow = frames_for(9, 48, 80), frames_for(7, 32, 40, salt=5)
    write_mp4(tmp_path / "a.mp4", wide, fps=8)
    write_mp4(tmp_path / "b.mp4", narrow, fps=12)
    (tmp_path / "captions.json").write_text('{"a.mp4": "wide", "b.mp4": "narrow"}')
    src = D.video_source(tmp_path, 32, 32, 5)
    x = torch.from_numpy(wide[:5]).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (F, 3, H, W) float32
    ref = F.interpolate(x, size=(32, 53), mode="bilinear", align_corners=False, antialias=True)[..., 10:42]
    assert torch.equal(src[0].video, ref.clamp(-1, 1).permute(1, 0, 2, 3))
    y = torch.from_numpy(narrow[:5, :, 4:36]).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    assert torch.equal(src[1].video, y)
    assert [c.start for c in src.crops] == [0, 0] and [c.scale for c in src.crops] == [1.0, 1.0]


def folder_of_videos(tmp_path, sizes=((47, 81, 23, 7), (64, 64, 30, 24), (36, 100, 17, 12), (90, 52, 26, 30))):
    """Videos of different sizes, lengths and rates, each with a sidecar caption; returns their frames."""
    out = {}
    for k, (h, w, n, fps) in enumerate(sizes):
        out[f"v{k}.mp4"] = frames_for(n, h, w, salt=17 * k)
        write_mp4(tmp_path / f"v{k}.mp4", out[f"v{k}.mp4"], fps=fps)
        (tmp_path / f"v{k}.txt").write_text(f"clip number {k}\n")
    return out


def test_random_cuts_are_reproducible_per_clip_and_in_bounds(tmp_path):
    written = folder_of_videos(tmp_path)
    sm = D.Sampling(seed=3, temporal_crop="random", frame_stride=2, spatial_crop="random", scale=(1.0, 1.5))
    a = D.video_source(tmp_path, 32, 32, 5, sampling=sm)
    b = D.video_source(tmp_path, 32, 32, 5, sampling=sm)  # another process reading the same folder
    assert a.crops == b.crops
    for i in range(len(a)):
        clip = a[i].video
        assert torch.equal(clip, b[i].video)
        c, v = a.crops[i], a.videos[i]
        # the recorded cut is the one applied
        assert close(clip, oracle(written[a.names[i]], c, 32, 32)), i
        assert c.indices[-1] < v.frames and c.stride == 2 and len(c.indices) == 5
        assert 1.0 <= c.scale <= 1.5
        assert c.top + 32 <= c.resized[0] and c.left + 32 <= c.resized[1]
    assert len({(c.start, c.scale, c.top, c.left) for c in a.crops}) == len(a)  # each clip its own draw
    other = D.video_source(tmp_path, 32, 32, 5, sampling=D.Sampling(**{**sm.__dict__, "seed": 4}))
    assert other.crops != a.crops
    # a clip's cut depends on (seed, its index) only: the validation subset keeps them
    assert a.subset(2, 4).crops == a.crops[2:4] and torch.equal(a.subset(2, 4)[1].video, a[3].video)


def test_draws_cover_their_ranges():
    """Over many indices every start and offset is drawn, the ends included, and scale spans [min, max]."""
    v = D.VideoInfo(0, 40, 60, 20, Fraction(1, 1000), Fraction(10), 0)
    sm = D.Sampling(seed=0, temporal_crop="random", spatial_crop="random", scale=(1.0, 1.25))
    crops = [D.draw_crop(v, 32, 32, 5, sm, i) for i in range(600)]
    assert {c.start for c in crops} == set(range(16))  # 20 frames, a span of 5
    for c in crops:  # cover: 32/40 of 40x60 is 32x48; times the scale
        assert c.resized == (max(32, round(32 * c.scale)), max(32, round(48 * c.scale)))
    for axis, size in ((0, 32), (1, 32)):
        offsets = {(c.resized[axis], (c.top, c.left)[axis]) for c in crops}
        assert all(0 <= o <= n - size for n, o in offsets)
        assert any(o == 0 < n - size for n, o in offsets) and any(o == n - size > 0 for n, o in offsets)
    scales = [c.scale for c in crops]
    assert 1.0 <= min(scales) < 1.01 and 1.24 < max(scales) <= 1.25
    assert D.draw_crop(v, 32, 32, 5, sm, 7) == crops[7]  # drawn alone, the same


# ---------------------------------------------------------------------------- skips and the card
def test_unusable_files_are_skipped_and_the_card_says_so(tmp_path):
    written = folder_of_videos(tmp_path, sizes=((47, 81, 9, 7), (64, 64, 12, 24), (36, 100, 9, 12)))
    write_mp4(tmp_path / "short.mp4", frames_for(3, 32, 32), fps=8)
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    write_mp4(tmp_path / "cut.mp4", frames_for(9, 32, 32), fps=8)  # moov at the end: a cut file loses it
    data = (tmp_path / "cut.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    (tmp_path / "captions.json").write_text(json.dumps(
        {"short.mp4": "short", "garbage.mp4": "noise", "cut.mp4": "cut", "v2.mp4": "a much longer caption here"}))
    (tmp_path / "v2.txt").unlink()  # its caption from captions.json
    cfg = DataConfig(source="videos", video_dir=str(tmp_path), num_clips=10, val_clips=1, height=32, width=32,
                     num_frames=5)
    train, val = D.load_sources(cfg, seed=0)
    assert (train.names, val.names) == (["v0.mp4", "v1.mp4"], ["v2.mp4"])
    assert close(val[0].video, oracle(written["v2.mp4"], val.crops[0], 32, 32))
    card = D.data_card(train, val, cfg)
    assert card["clips"] == {"train": 2, "val": 1}
    assert {s["file"]: s["reason"] for s in card["skipped"]} == {
        "cut.mp4": "unreadable", "garbage.mp4": "unreadable", "short.mp4": "too short"}
    short = next(s for s in card["skipped"] if s["file"] == "short.mp4")
    assert short["detail"].startswith("3 frames") and short["bytes"] == (tmp_path / "short.mp4").stat().st_size
    assert card["skipped_by_reason"] == {"too short": 1, "unreadable": 2}
    vid = card["videos"]
    assert (vid["files"], vid["examined"], vid["used"], vid["skipped"], vid["not_examined"]) == (6, 6, 3, 3, 0)
    assert vid["source_bytes"] == sum((tmp_path / f"v{k}.mp4").stat().st_size for k in range(3))
    assert vid["resolutions"] == {"100x36": 1, "64x64": 1, "81x47": 1}
    assert vid["fps"] == {7.0: 1, 12.0: 1, 24.0: 1}
    assert vid["frames"] == {"min": 9, "mean": 10.0, "max": 12}
    cap = card["captions"]
    assert cap["from"] == {D.CAPTIONS_JSON: 1, D.SIDECAR: 2} and cap["unique"] == 3
    assert cap["words"] == {"min": 3, "mean": round(11 / 3, 3), "max": 5}  # "clip number 0", "... 1", 5 words
    assert card["sampling"]["temporal_crop"] == "start" and card["sampling"]["drawn_start"]["max"] == 0

    js, md = D.write_data_card(tmp_path / "out", card)
    assert js.name == "data_card.json" and md.name == "DATA_CARD.md"
    assert json.loads(js.read_text()) == json.loads(json.dumps(card))
    page = md.read_text()
    assert "2 training, 1 validation" in page and "| garbage.mp4 | unreadable |" in page
    assert "| short.mp4 | too short | 3 frames" in page

    # reading stops once enough clips are found; the rest are counted as not examined
    small = D.video_source(tmp_path, 32, 32, 5, limit=1)
    assert small.names == ["v0.mp4"] and small.provenance.examined == 4  # after cut, garbage and short
    assert D.data_card(small, small.subset(1, 1), cfg)["videos"]["not_examined"] == 2


def test_a_set_without_usable_clips_or_captions_is_an_error(tmp_path):
    write_mp4(tmp_path / "short.mp4", frames_for(3, 32, 32), fps=8)
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    (tmp_path / "captions.json").write_text('{"short.mp4": "s", "bad.mp4": "b"}')
    with pytest.raises(D.DataError, match="no usable video.*2 skipped"):
        D.video_source(tmp_path, 32, 32, 5)
    write_mp4(tmp_path / "new.mp4", frames_for(9, 32, 32), fps=8)
    with pytest.raises(D.DataError, match="no caption.*new.mp4"):
        D.video_source(tmp_path, 32, 32, 5)
    (tmp_path / "new.txt").write_text("fine")
    assert D.video_source(tmp_path, 32, 32, 5).names == ["new.mp4"]
    # a stride that makes the span longer than the video skips it too
    with pytest.raises(D.DataError, match="no usable video"):
        D.video_source(tmp_path, 32, 32, 5, sampling=D.Sampling(frame_stride=3))


def test_toy_card():
    cfg = DataConfig(num_clips=4, val_clips=1, height=32, width=32, num_frames=5)
    train, val = D.load_sources(cfg, seed=0)
    card = D.data_card(train, val, cfg)
    assert card["clips"] == {"train": 4, "val": 1} and card["captions"]["from"] == {D.TOY_PROMPT: 5}
    assert "videos" not in card and "skipped" not in card


# ---------------------------------------------------------------------------- config keys
def test_data_config_cut_keys(tmp_path):
    base = {"source": "videos", "video_dir": str(tmp_path)}
    d = DataConfig(**base, temporal_crop="random", frame_stride=2, spatial_crop="random", scale=[1.0, 1.3])
    assert d.scale == (1.0, 1.3) and D.Sampling.of(d, 5) == D.Sampling(5, "random", 2, "random", (1.0, 1.3))
    assert DataConfig(**base, scale=1.2).scale == (1.2, 1.2)
    for bad, match in (({"temporal_crop": "middle"}, "temporal_crop"), ({"spatial_crop": "centre"}, "spatial_crop"),
                       ({"frame_stride": 0}, "frame_stride"), ({"scale": [0.5, 1.0]}, "data.scale"),
                       ({"scale": [1.3, 1.1]}, "data.scale")):
        with pytest.raises(ConfigError, match=match):
            DataConfig(**base, **bad)
    with pytest.raises(ConfigError, match="apply to source 'videos'"):
        DataConfig(temporal_crop="random")
    with pytest.raises(ConfigError, match="unknown key.*temporal_crops"):
        config_from_dict({"output_dir": str(tmp_path), "data": {**base, "temporal_crops": "random"}})

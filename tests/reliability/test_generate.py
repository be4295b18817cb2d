"""``surf-accel generate``: a failed write is an error that names the file and keeps the previous one
(findings 2, 3); bad requests stop before the model loads, in one line, exit code 2 (findings 5, 11);
``--baseline`` is the unpatched pipeline without the cache (finding 11). Oracles: the files on disk,
ffmpeg reading them back, and the unpatched pipeline loaded here by diffusers itself."""

import errno
import os

import numpy as np
import pytest
import torch

from surf_accel import cli

# 32 px, 5 frames, 4 steps: SURF's three stages in a few seconds on the tiny Wan
ARGS = ["--prompt", "a red circle", "--height", "32", "--width", "32", "--frames", "5", "--steps", "4",
        "--guidance", "3", "--max-sequence-length", "16", "--dtype", "float32", "--device", "cpu",
        "--preset", "fast", "--optimal-size", "32", "32", "--preview-steps", "4", "--switch-step", "2",
        "--refine-steps", "1", "--handoff", "latent"]


def generate(folder, out, *extra):
    return cli.main(["generate", str(folder), *ARGS, "--output", str(out), *extra])


def one_line_error(capsys, *words):
    err = capsys.readouterr().err.strip()
    assert err.startswith("surf-accel generate: error:") and "\n" not in err, err
    for w in words:
        assert w in err, err
    return err


def fake_writer(monkeypatch, behaviour):
    """diffusers' export_to_video (the writer generate uses) replaced: ``"silent"`` leaves a 4 KB
    unreadable file and returns as if it had worked (what ffmpeg does on a full disk); ``"enospc"``
    writes 4 KB and then fails with ENOSPC."""
    import diffusers.utils

    def export(frames, path, fps=10, **kw):
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
        if behaviour == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return path

    monkeypatch.setattr(diffusers.utils, "export_to_video", export)


@pytest.mark.parametrize("behaviour", ["silent", "enospc"])
def test_a_failed_video_write_is_an_error_and_leaves_nothing(wan_folder, tmp_path, monkeypatch, capsys, behaviour):
    fake_writer(monkeypatch, behaviour)
    out = tmp_path / "v.mp4"
    rc = generate(wan_folder, out)
    captured = capsys.readouterr()
    assert rc == 1, captured.out
    assert "wrote" not in captured.out
    assert str(out) in captured.err and ("disk full" in captured.err if behaviour == "enospc" else True)
    assert os.listdir(tmp_path) == []  # no partial file, no temporary left behind


def test_a_failed_write_keeps_the_previous_video(wan_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "v.mp4"
    out.write_bytes(b"the previous video")
    fake_writer(monkeypatch, "enospc")
    assert generate(wan_folder, out, "--overwrite") == 1
    assert "disk full" in capsys.readouterr().err
    assert out.read_bytes() == b"the previous video" and os.listdir(tmp_path) == ["v.mp4"]


def test_unwritable_output_folder_is_refused_before_loading(wan_folder, tmp_path, no_loading, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the output folder should be")
    assert generate(wan_folder, blocker / "v.mp4") == 2
    one_line_error(capsys, str(blocker / "v.mp4"), "not a directory")


def test_read_only_folder_is_refused_before_loading(wan_folder, tmp_path, no_loading, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("chmod has no effect for this user (root)")
        assert generate(wan_folder, ro / "v.mp4") == 2
        one_line_error(capsys, str(ro / "v.mp4"), "permission denied")
    finally:
        ro.chmod(0o755)


def test_existing_outputs_are_refused_unless_overwrite(wan_folder, tmp_path, no_loading, capsys):
    out = tmp_path / "v.mp4"
    (tmp_path / "v_baseline.mp4").write_bytes(b"an earlier baseline")
    assert generate(wan_folder, out, "--baseline") == 2
    one_line_error(capsys, "v_baseline.mp4 exists", "--overwrite")
    out.write_bytes(b"an earlier video")
    assert generate(wan_folder, out) == 2
    one_line_error(capsys, "v.mp4 exists", "--overwrite")
    assert out.read_bytes() == b"an earlier video"
    assert (tmp_path / "v_baseline.mp4").read_bytes() == b"an earlier baseline"


def test_overwrite_replaces_and_names_every_file(wan_folder, tmp_path, capsys):
    import imageio_ffmpeg

    out = tmp_path / "v.mp4"
    for p in (out, tmp_path / "v_baseline.mp4"):
        p.write_bytes(b"old")
    assert generate(wan_folder, out, "--baseline", "--overwrite") == 0
    printed = capsys.readouterr().out
    for p in (out, tmp_path / "v_baseline.mp4"):
        assert f"wrote {p}" in printed
        assert imageio_ffmpeg.count_frames_and_secs(str(p))[0] == 5  # ffmpeg reads the new video back
    assert sorted(os.listdir(tmp_path)) == ["v.mp4", "v_baseline.mp4"]


@pytest.mark.parametrize("extra, words", [
    (["--baseline", "--preset", "bogus"], ["unknown preset 'bogus'"]),
    (["--cache", "deepcache:1"], ["unknown form"]),
    (["--height", "40"], ["16-pixel grid"]),
    (["--device", "cuda:7"], ["--device cuda:7"]),
    (["--image", "/nonexistent.png"], ["/nonexistent.png"]),
], ids=["preset", "cache", "size", "device", "image"])
def test_bad_arguments_stop_before_loading(wan_folder, tmp_path, no_loading, capsys, extra, words):
    if extra[:1] == ["--device"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    assert generate(wan_folder, tmp_path / "v.mp4", *extra) == 2
    one_line_error(capsys, *words)
    assert os.listdir(tmp_path) == []


def test_output_that_is_a_folder_or_no_video_stops_before_loading(wan_folder, tmp_path, no_loading, capsys):
    assert generate(wan_folder, tmp_path) == 2
    one_line_error(capsys, "a video file name")
    assert generate(wan_folder, tmp_path / "v.txt") == 2
    one_line_error(capsys, "v.txt", ".mp4")


def test_folder_that_is_no_model_is_one_line(tmp_path, no_loading, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("not a model")
    assert generate(tmp_path / "model", tmp_path / "v.mp4") == 2
    one_line_error(capsys, "no model_index.json")


def test_cuda_on_a_cpu_torch_is_one_line(wan_folder, tmp_path, no_loading, capsys):
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    assert generate(wan_folder, tmp_path / "v.mp4", "--device", "cuda") == 2
    one_line_error(capsys, "--device cuda", "no CUDA device")


@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_sequence_length_must_be_positive(wan_folder, tmp_path, no_loading, capsys, value):
    with pytest.raises(SystemExit) as e:
        generate(wan_folder, tmp_path / "v.mp4", "--max-sequence-length", value)
    assert e.value.code == 2
    assert "--max-sequence-length: must be at least 1" in capsys.readouterr().err


def test_baseline_is_the_unpatched_pipeline_without_the_cache(wan_folder, tmp_path, monkeypatch, capsys):
    import diffusers.utils
    from diffusers import DiffusionPipeline

    written = []
    real = diffusers.utils.export_to_video

    def export(frames, path, fps=10, **kw):
        written.append((os.path.basename(path), np.stack(frames)))
        return real(frames, path, fps=fps, **kw)

    monkeypatch.setattr(diffusers.utils, "export_to_video", export)
    assert generate(wan_folder, tmp_path / "v.mp4", "--baseline", "--cache", "fbc:0.6") == 0
    pipe = DiffusionPipeline.from_pretrained(str(wan_folder), torch_dtype=torch.float32)
    want = pipe(prompt="a red circle", height=32, width=32, num_frames=5, num_inference_steps=4, guidance_scale=3.0,
                max_sequence_length=16, output_type="np", generator=torch.Generator().manual_seed(0)).frames[0]
    baseline = next(frames for name, frames in written if "baseline" in name)
    assert np.array_equal(baseline, want)
    assert "no cache" in capsys.readouterr().out

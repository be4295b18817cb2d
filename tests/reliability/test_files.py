"""``surf_accel.files``, the one way the package writes: a full disk (``os.write`` failing with ENOSPC,
as the kernel reports it) or a writer that fails raises naming the path and "disk full", and the
previous file or folder stays as it was; nothing temporary is left behind."""

import errno
import os

import pytest

from surf_accel import files


@pytest.fixture
def full_disk(monkeypatch):
    """``os.write`` writes 100 bytes, then fails with ENOSPC."""
    real = os.write
    budget = {"left": 100}

    def write(fd, data):
        if budget["left"] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real(fd, bytes(data[:budget["left"]]))
        budget["left"] -= n
        return n

    monkeypatch.setattr(os, "write", write)


def test_full_disk_keeps_the_previous_file(tmp_path, full_disk):
    target = tmp_path / "results.md"
    target.write_text("previous results")
    with pytest.raises(files.WriteError, match=rf"{target}: disk full .*previous file is unchanged") as e:
        files.write_text(target, "x" * 1000)
    assert e.value.errno == errno.ENOSPC
    assert target.read_text() == "previous results" and os.listdir(tmp_path) == ["results.md"]


def test_failed_folder_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "export"
    files.write_folder(target, lambda d: (d / "a.json").write_text("1"))

    def half(d):
        (d / "a.json").write_text("2")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(files.WriteError, match="disk full"):
        files.write_folder(target, half)
    assert (target / "a.json").read_text() == "1" and os.listdir(tmp_path) == ["export"]
    with pytest.raises(files.WriteError, match="a.json, which the new folder would drop"):
        files.write_folder(target, lambda d: (d / "b.json").write_text("3"))
    files.write_folder(target, lambda d: [(d / n).write_text("4") for n in ("a.json", "b.json")])
    assert sorted(os.listdir(target)) == ["a.json", "b.json"] and os.listdir(tmp_path) == ["export"]
    assert (target / "a.json").read_text() == "4"


def test_torch_style_failure_on_a_full_file_system_is_called_disk_full(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 ** 9, 10 ** 9, 0))

    def torch_save(tmp):
        tmp.write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 2")

    with pytest.raises(files.WriteError, match=r"disk full \(0 bytes free; RuntimeError: .*unexpected pos"):
        files.write_file(tmp_path / "optimizer.bin", torch_save)

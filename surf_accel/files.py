"""How surf_accel writes a file: never half of one, never over a good one, never silently.

Every file and folder the package produces (videos, ``compare.png``, benchmark results, refiner
exports, training checkpoints and their ``trainer_state.json``, caches) is written here: under a
temporary name beside its target (the same file system, so the rename is atomic), flushed and
fsynced, checked (not empty; a video must read back with its frames), then renamed over the target.
A failure raises ``WriteError`` naming the path and the operating system's reason (``ENOSPC`` is
called a full disk) and leaves the previous file, or its absence, as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

# containers diffusers' export_to_video (imageio's ffmpeg, libx264) writes
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")

_REASONS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.ENOTDIR: "not a directory",
            errno.EISDIR: "is a directory", errno.ENOENT: "no such file or directory"}
# below this many free bytes a writer that failed without an errno (torch.save's "unexpected pos") is
# reported as having filled the disk
_NEARLY_FULL = 1 << 20


class WriteError(OSError):
    """A file or folder could not be written; the message names the path and the reason."""

    def __str__(self) -> str:
        return str(self.strerror)


def reason(exc: BaseException, path: str | os.PathLike | None = None) -> str:
    """The cause of a failed write in words: the errno's name for it (``ENOSPC``: "disk full") and the
    original message; a writer that lost the errno is called out as a full disk when the file system
    of ``path`` has (almost) no free space left."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and code in _REASONS:
        return f"{_REASONS[code]} ({exc.strerror or exc})"
    said = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
    free = None if path is None else _free_bytes(path)
    if free is not None and free < _NEARLY_FULL:
        return f"disk full ({free} bytes free; {said})"
    return said


def _free_bytes(path: str | os.PathLike) -> Optional[int]:
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _temp_name(path: Path, kind: str) -> Path:
    # the target's suffix last, so that writers choosing a format by extension (imageio, PIL) still do
    return path.with_name(f".{path.stem}.{kind}-{uuid.uuid4().hex[:8]}{path.suffix}")


def _make_folder(folder: Path) -> None:
    """``folder`` and its parents made where missing; ``ENOTDIR`` naming a file that stands in the way."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{blocker} is a file")
    folder.mkdir(parents=True, exist_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries to disk (a folder: so that a rename in it survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def _writing(path: Path, tmp: Path, what: str) -> Iterator[None]:
    """Around the writing of ``path`` (a ``what``: file or folder) through ``tmp``: on a failure ``tmp``
    is removed and ``WriteError`` names ``path`` and the reason (an interruption stays one)."""
    try:
        yield
    except BaseException as e:
        _remove(tmp)
        if not isinstance(e, Exception):
            raise
        state = f"the previous {what} is unchanged" if path.exists() else "nothing was written"
        raise WriteError(getattr(e, "errno", None) or errno.EIO,
                         f"could not write {path}: {reason(e, path)}; {state}") from e


def write_file(path: str | os.PathLike, write: Callable[[Path], Any], *,
               check: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` writes a temporary file beside it (any writer that takes
    a path), which is fsynced, must not be empty, passes ``check(tmp)`` (raise to refuse it) and then
    replaces ``path``. ``WriteError`` naming ``path`` on any failure; the previous ``path`` is untouched."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, f"cannot write {path}: it is a directory")
    tmp = _temp_name(path, "tmp")
    with _writing(path, tmp, "file"):
        _make_folder(path.absolute().parent)
        write(tmp)
        if not tmp.is_file():
            raise OSError(errno.EIO, "the writer produced no file")
        if tmp.stat().st_size == 0:
            raise OSError(errno.EIO, "the writer produced an empty file")
        _fsync(tmp)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``data`` as the whole of ``path`` (``write_file``)."""
    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    return write_file(path, write)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> Path:
    return write_text(path, json.dumps(obj, **dump_kwargs))


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: Optional[dict[str, str]] = None) -> Path:
    """Tensors as a safetensors file (``write_bytes``: serialised in memory first, so that a short
    write is seen here with its errno rather than inside safetensors' own writer)."""
    from safetensors.torch import save  # imports torch: only where tensors are written

    return write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata))


def write_video(path: str | os.PathLike, frames: Sequence, fps: int) -> Path:
    """``frames`` (arrays in [0, 1] or PIL images) as a video with diffusers' ``export_to_video``; the
    file must read back with as many frames (ffmpeg writers can fail without raising)."""
    from diffusers.utils import export_to_video  # imports diffusers: only where a video is written

    frames = list(frames)

    def check(tmp: Path) -> None:
        found = video_frame_count(tmp)
        if found is not None and found != len(frames):
            raise OSError(errno.EIO, f"the video reads back with {found} of its {len(frames)} frames")

    return write_file(path, lambda tmp: export_to_video(frames, str(tmp), fps=fps), check=check)


def video_frame_count(path: str | os.PathLike) -> Optional[int]:
    """Frames in the video at ``path`` as ffmpeg reads them (``None``: imageio-ffmpeg is not installed);
    ``OSError`` when it cannot be read."""
    try:
        import imageio_ffmpeg  # optional (the video extra)
    except ImportError:
        return None
    try:
        return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
    except RuntimeError as e:
        raise OSError(errno.EIO, f"the video cannot be read back ({str(e).splitlines()[0]})") from None


def write_image(path: str | os.PathLike, image: Any) -> Path:
    """A PIL image, in the format of ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or None
    return write_file(path, lambda tmp: image.save(tmp, format=fmt))


def write_folder(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write the folder ``path`` as a whole: ``write(tmp)`` fills a temporary folder beside it, which then
    takes the place of ``path`` (the previous folder is moved aside first and removed once the new one is
    in place; put back if the swap fails). ``WriteError`` naming ``path`` on any failure, and where the
    previous folder holds an entry the new one does not (it would be lost); the previous folder stays as
    it was."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(errno.ENOTDIR, f"cannot write the folder {path}: a file of that name exists")
    tmp = _temp_name(path, "tmp")
    old = _temp_name(path, "old")
    with _writing(path, tmp, "folder"):
        _make_folder(path.absolute().parent)
        tmp.mkdir()
        write(tmp)
        sync_folder(tmp)
        if path.exists():
            lost = sorted(set(os.listdir(path)) - set(os.listdir(tmp)))
            if lost:
                raise OSError(errno.EEXIST, f"it holds {', '.join(lost)}, which the new folder would drop; "
                                            "write into a new or empty folder")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old.exists():
                os.replace(old, path)
            raise
        _fsync(path.parent)
    _remove(old)
    return path


def sync_folder(folder: str | os.PathLike) -> None:
    """fsync every file under ``folder`` and the folder itself (files another library wrote there)."""
    folder = Path(folder)
    for f in folder.rglob("*"):
        if f.is_file():
            _fsync(f)
    _fsync(folder)


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``WriteError`` unless a file can be created beside ``path`` (its folder exists or can be
    made, and accepts a new file): a probe, so that a long job fails before it starts, not at its end."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, f"{path} is a directory, not a file name")
    folder = path.absolute().parent
    try:
        _make_folder(folder)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}.probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise WriteError(e.errno or errno.EIO, f"cannot write {path}: {reason(e)}") from None

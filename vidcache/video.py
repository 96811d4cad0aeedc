"""MP4 and JSON writing that never leaves a half-written or unchecked file under a final name.

Every file is written beside its target under a temp name, synced, checked, then renamed over it.
Temp names say who wrote them, ``.STEM.vc<pid>-<host>.<random><suffix>``, so that a later run can
remove those whose process is gone (``outputs.sweep``) and leave a live run's alone.

The MP4 is encoded by ffmpeg (imageio-ffmpeg's binary) run here directly, so that its exit status
and its error output are ours to check: a full disk or a failing encoder is an ``OutputError`` that
names the cause, and a written file that does not decode to every frame at its size is one too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputError

TEMP_NAME = re.compile(
    r"^\.(?P<stem>.+)\.vc(?P<pid>\d+)-(?P<host>[A-Za-z0-9-]+)\.[A-Za-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)$"
)


def host_tag() -> str:
    """This machine's name as it appears in temp names and claims (letters, digits and '-')."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def owner_tag() -> str:
    return f"vc{os.getpid()}-{host_tag()}"


def temp_beside(path: Path, suffix: str) -> Path:
    """An empty temp file in ``path``'s folder, named for ``path`` and for this process."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{owner_tag()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make finished videos private
    return Path(tmp)


def sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable (a no-op where the file system cannot sync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def to_uint8(frames: Any) -> np.ndarray:
    """Pipeline output (T, H, W, 3) floats in [0, 1] to uint8."""
    arr = np.asarray(frames)
    if arr.ndim == 5:  # (batch, T, H, W, C)
        arr = arr[0]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return arr


def _ffmpeg_command(path: Path, width: int, height: int, fps: int) -> list[str]:
    """H.264 yuv420p at CRF 18, no resizing: the arguments imageio-ffmpeg's writer used to build."""
    import imageio_ffmpeg

    return [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{width}x{height}",
            "-pix_fmt", "rgb24", "-r", str(Fraction(fps)), "-i", "-", "-an", "-vcodec", "libx264",
            "-pix_fmt", "yuv420p", "-v", "error", "-crf", "18", str(path)]


def encode_mp4(path: Path, arr: np.ndarray, fps: int, label: str | None = None) -> None:
    """Encode uint8 frames (T, H, W, 3) into ``path`` and sync it; ``OutputError`` unless ffmpeg
    took every frame and exited 0. ``label``: the file name errors give (the final one, not the temp)."""
    label = label or path.name
    t, h, w, _ = arr.shape
    with tempfile.TemporaryFile() as err:
        # a session of its own: a Ctrl-C meant for vidcache must not kill the encoder mid-file
        proc = subprocess.Popen(_ffmpeg_command(path, w, h, fps), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            try:
                for frame in arr:
                    proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                proc.stdin.close()
            except BrokenPipeError:  # ffmpeg stopped early; its status and message say why
                pass
            status = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        err.seek(0)
        lines = [ln.strip() for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
    if status != 0:
        why = f": {lines[-1]}" if lines else ""
        raise OutputError(f"{label} not written: ffmpeg exited with status {status}{why}")
    sync_file(path)


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """(frames, (width, height)) of an MP4, by decoding all of it."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(gen)
        return sum(1 for _ in gen), tuple(meta["size"])
    finally:
        gen.close()


def check_mp4(path: Path, frames: int, width: int, height: int, label: str | None = None) -> None:
    """``OutputError`` unless ``path`` decodes to ``frames`` frames of ``width`` x ``height``."""
    label = label or path.name
    try:
        n, size = count_frames(path)
    except Exception as err:  # noqa: BLE001 - whatever the reader says, the file is not a video
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OutputError(f"{label} not written: the written file cannot be decoded ({first})") from None
    if n != frames or size != (width, height):
        raise OutputError(f"{label} not written: the written file decodes to {n} of {frames} frames "
                          f"at {size[0]}x{size[1]} (expected {width}x{height}); disk full?")


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def write_mp4(path: str | Path, frames: Any, fps: int) -> Path:
    """H.264 MP4 of ``frames``: encoded beside ``path``, checked to decode whole, then renamed."""
    path = Path(path)
    arr = to_uint8(frames)
    t, h, w, _ = arr.shape
    tmp = temp_beside(path, ".mp4")
    try:
        encode_mp4(tmp, arr, fps, path.name)
        check_mp4(tmp, t, w, h, path.name)
        os.replace(tmp, path)
        sync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_mp4(path: str | Path) -> np.ndarray:
    """All frames as uint8 (T, H, W, 3): what tests and the bench compare."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    meta = gen.__next__()
    w, h = meta["size"]
    frames = [np.frombuffer(b, dtype=np.uint8).reshape(h, w, 3) for b in gen]
    return np.stack(frames)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """``data`` under ``path``, written beside it, synced, then renamed over it."""
    path = Path(path)
    tmp = temp_beside(path, path.suffix)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        sync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) under ``path``, written beside it, synced, then renamed over it."""
    return write_bytes(path, text.encode("utf-8"))


def _non_finite(data: Any, where: str = "") -> str | None:
    """Where in ``data`` a NaN or infinity sits (``cache.stats.x``), or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return f"{data} at {where or 'the top'}"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def dumps(data: Any) -> str:
    """Strict JSON (no NaN, no Infinity: they are not JSON); a ValueError names where one was."""
    try:
        return json.dumps(data, indent=2, allow_nan=False) + "\n"
    except ValueError:
        where = _non_finite(data)
        if where is None:
            raise
        raise ValueError(f"not JSON: {where}") from None


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, dumps(data))

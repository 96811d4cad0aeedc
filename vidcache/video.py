"""MP4 and JSON writing that never leaves a half-written file under a final name."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _tmp_beside(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make finished videos private
    return Path(tmp)


def to_uint8(frames: Any) -> np.ndarray:
    """Pipeline output (T, H, W, 3) floats in [0, 1] to uint8."""
    arr = np.asarray(frames)
    if arr.ndim == 5:  # (batch, T, H, W, C)
        arr = arr[0]
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return arr


def write_mp4(path: str | Path, frames: Any, fps: int) -> Path:
    """H.264, yuv420p, through imageio-ffmpeg; written beside the target, then renamed."""
    import imageio_ffmpeg

    path = Path(path)
    arr = to_uint8(frames)
    t, h, w, _ = arr.shape
    tmp = _tmp_beside(path, ".mp4")
    try:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (w, h),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            quality=None,
            output_params=["-crf", "18"],
            ffmpeg_log_level="error",
        )
        try:
            writer.send(None)
            for frame in arr:
                writer.send(np.ascontiguousarray(frame))
        finally:
            writer.close()  # waits for ffmpeg: after this nothing writes to tmp any more
        os.replace(tmp, path)
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
    tmp = _tmp_beside(path, path.suffix)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) under ``path``, written beside it, synced, then renamed over it."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")

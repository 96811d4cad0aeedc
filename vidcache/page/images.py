"""The small pictures beside a report page: a poster frame per video and a difference heat strip per
compared pair, written as files (not data: URIs) so that a page of thousands of videos stays small and
the browser loads only the ones in view."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..video import write_bytes

POSTER_WIDTH = 320  # px at most; the contact sheet shows ~200 px, the detail view scales the video itself
STRIP_HEIGHT = 24  # px per frame cell of the heat strip
STRIP_FULL_SCALE = 0.15  # |difference| (of the 0..1 range, mean over RGB) drawn at full heat
# dark -> purple -> red -> orange -> pale yellow: the heat strip's colours from 0 to STRIP_FULL_SCALE
HEAT_STOPS = np.array([[0, 0, 0], [80, 18, 123], [220, 50, 50], [252, 165, 30], [252, 255, 164]], dtype=np.float32)


def middle_frame(path: Path, frames: int | None) -> np.ndarray:
    """The middle frame of an MP4 (uint8 H, W, 3), decoding no further than it."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(gen)
        w, h = meta["size"]
        want = max(0, (frames or 1) // 2)
        last = None
        for i, raw in enumerate(gen):
            last = raw
            if i >= want:
                break
        if last is None:
            raise ValueError("no frames")
        return np.frombuffer(last, dtype=np.uint8).reshape(h, w, 3)
    finally:
        gen.close()


def _encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_poster(frame: np.ndarray, path: Path) -> Path:
    """A JPEG of ``frame``, at most ``POSTER_WIDTH`` wide."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(frame))
    if img.width > POSTER_WIDTH:
        img = img.resize((POSTER_WIDTH, max(1, round(img.height * POSTER_WIDTH / img.width))), Image.LANCZOS)
    return write_bytes(path, _encode(img, "JPEG", quality=82))


def heat(values: np.ndarray) -> np.ndarray:
    """``values`` in [0, 1] to RGB uint8 along ``HEAT_STOPS``."""
    pos = np.clip(values, 0.0, 1.0) * (len(HEAT_STOPS) - 1)
    lo = np.minimum(pos.astype(np.int64), len(HEAT_STOPS) - 2)
    frac = (pos - lo)[..., None]
    return np.round(HEAT_STOPS[lo] * (1 - frac) + HEAT_STOPS[lo + 1] * frac).astype(np.uint8)


def write_heat_strip(ref: np.ndarray, test: np.ndarray, path: Path) -> Path:
    """Frames side by side, left to right in time: each a small map of where ``test`` differs from
    ``ref`` (mean |difference| over RGB; black = equal, pale yellow = ``STRIP_FULL_SCALE`` or more)."""
    from PIL import Image

    t, h, w, _ = ref.shape
    cell_w = max(4, round(STRIP_HEIGHT * w / h))
    diff = np.abs(ref.astype(np.int16) - test.astype(np.int16)).mean(axis=-1).astype(np.float32) / 255.0
    cells = [np.asarray(Image.fromarray(d).resize((cell_w, STRIP_HEIGHT), Image.BOX)) for d in diff]
    strip = heat(np.concatenate(cells, axis=1) / STRIP_FULL_SCALE)
    return write_bytes(path, _encode(Image.fromarray(strip), "PNG", optimize=True))

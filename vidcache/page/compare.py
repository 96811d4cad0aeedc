"""``--against``: each video beside the reference folder's video of the same job, and how far apart
they are (PSNR / SSIM per frame, vidcache.metrics), with a cache of those numbers so that rebuilding
the page of a growing farm folder only decodes the videos that are new.

Videos pair by ``jobs.pair_key``: the same prompt, seed and settings apart from the cache. Several
videos of one key in one run (the same prompt and seed twice in one prompt file) pair in batch order;
they have the same inputs, so nothing is guessed. A video with no partner is listed, never matched
to a near miss.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..jobs import pair_key
from .folder import Video


@dataclass
class Pair:
    video: Video
    ref: Video


def key_of(video: Video) -> str | None:
    r = video.report
    if not isinstance(r.get("job"), dict) or not isinstance(r.get("model"), dict):
        return None
    return pair_key(r["job"], r["model"], r.get("dtype"))


def pair_up(videos: list[Video], refs: list[Video]) -> tuple[list[Pair], list[Video], list[Video]]:
    """(pairs, videos with no reference, references with no video); each list in batch order.

    Each folder of ``videos`` (one run: renders/pab, renders/teacache) pairs with the references on its
    own, so several caches can stand against one uncached run."""
    by_key: dict[str, list[Video]] = defaultdict(list)
    for ref in refs:
        k = key_of(ref)
        if k is not None:
            by_key[k].append(ref)
    pairs, alone = [], []
    left: dict[Path, dict[str, list[Video]]] = {}
    for video in videos:
        k = key_of(video)
        free = left.setdefault(video.folder, {key: list(rs) for key, rs in by_key.items()}).get(k)
        if free:
            pairs.append(Pair(video, free.pop(0)))
        else:
            alone.append(video)
    used = {id(p.ref) for p in pairs}
    return pairs, alone, [r for r in refs if id(r) not in used]


def stamp(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class QualityCache:
    """Per-frame PSNR / SSIM of earlier builds, by both MP4s' path, size and modification time."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, Any] = {}
        self.used: dict[str, Any] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("pairs"), dict):
                self.entries = data["pairs"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass

    def get(self, key: str) -> dict[str, list[float]] | None:
        hit = self.entries.get(key)
        if isinstance(hit, dict) and isinstance(hit.get("psnr"), list) and isinstance(hit.get("ssim"), list):
            self.used[key] = hit
            return hit
        return None

    def put(self, key: str, value: dict[str, list[float]]) -> None:
        self.used[key] = value

    def save(self) -> None:
        from ..video import write_json

        write_json(self.path, {"pairs": self.used})  # only what the page shows: entries of gone videos drop


def frame_quality(ref: np.ndarray, test: np.ndarray) -> dict[str, list[float]]:
    """Per-frame PSNR (dB) and SSIM of two uint8 videos of one shape."""
    from .. import metrics

    a, b = ref.astype(np.float32) / 255.0, test.astype(np.float32) / 255.0
    return {"psnr": [round(x, 3) for x in metrics.psnr_frames(a, b)],
            "ssim": [round(x, 5) for x in metrics.ssim_frames(a, b)]}

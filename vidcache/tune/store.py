"""What ``vidcache tune`` keeps on disk between runs: the uncached references and the measured points.

References. Every (prompt, seed, settings) is generated uncached once and kept as
``<refs>/<key>.safetensors``, ``key`` being ``Job.key`` of the uncached job (which leaves out the
job's name and position: a prompt's reference is found whatever its place in the prompt file) over the model,
the requested and the resolved dtype, the device and the attention backend: anything that changes
the pixels changes the key. What is stored is the **decoded video as uint8** (T, H, W, 3), not the
latents, because quality is measured on decoded frames (what ``vidcache bench`` and a viewer see):
a stored latent would need a VAE decode of every reference in every session and tie the comparison
to that machine's VAE numerics, while uint8 frames are what the MP4 holds and are compared with a
plain tensor operation. Quantisation to 8 bits limits a PSNR only above ~58 dB, far past any
tuning target; the cached video is quantised the same way before it is compared, so an identical
video scores ``metrics.PSNR_CAP``. Size: 1.2 MB for the tiny model's 25 x 128 x 128 clip, 97 MB for
Wan's 81 x 480 x 832. Beside the frames: TeaCache's indicator changes and output changes between
consecutive forwards of each branch (``calibrate.Recording``, for fitting coefficients and for the
threshold range), and the run's denoising time.

Measured points. ``<refs>/progress.json`` (strict JSON, rewritten atomically after every video) maps
the ``Job.key`` of each cached job (method and full parameters in its context) to what it measured:
PSNR, SSIM, compute ratios, denoising time, speedup. A rerun (another target, an interrupted run,
more methods) measures only what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..video import write_text

PROGRESS = "progress.json"
FORMAT = 1


@dataclass
class Reference:
    """One uncached video: its frames (uint8), TeaCache's recorded pairs, its denoising time."""

    key: str
    frames: np.ndarray
    tea_x: list[float]
    tea_y: list[float]
    branches: int  # TeaCache pairs are interleaved over this many branches
    denoise_s: float
    timesteps: list[float]  # the run's schedule


def job_key(job: Any, context: dict[str, Any]) -> str:
    """``Job.key``, which leaves out the job's name and position: the same prompt, seed and settings
    give the same key in any prompt file."""
    return job.key(context)


class Store:
    """The references folder: ``<key>.safetensors`` files and ``progress.json``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.points: dict[str, dict[str, Any]] = {}

    def open(self, fresh: bool = False) -> Store:
        """Create the folder; read the measured points (none with ``fresh``)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"--refs {self.folder}: cannot create it ({err.strerror})") from None
        path = self.folder / PROGRESS
        if fresh or not path.is_file():
            return self
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"{path}: unreadable ({err}); remove it or pass --overwrite") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("points"), dict):
            raise UsageError(f"{path}: not a vidcache tune progress file (format {FORMAT}); remove it or pass "
                             "--overwrite")
        self.points = data["points"]
        return self

    # -- references ---------------------------------------------------------------------------
    def ref_path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def has_ref(self, key: str) -> bool:
        return self.ref_path(key).is_file()

    def load_ref(self, key: str) -> Reference:
        from safetensors import SafetensorError, safe_open
        from safetensors.numpy import load_file

        path = self.ref_path(key)
        try:
            arrays = load_file(str(path))
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
            return Reference(key, arrays["frames"], arrays["tea_x"].tolist(), arrays["tea_y"].tolist(),
                             int(meta.get("branches", "1")), float(meta["denoise_s"]), arrays["timesteps"].tolist())
        except (SafetensorError, KeyError, ValueError, OSError) as err:
            raise UsageError(f"{path}: unreadable reference ({err}); remove it or pass --overwrite") from None

    def save_ref(self, ref: Reference, about: dict[str, Any]) -> None:
        from safetensors.numpy import save_file

        path = self.ref_path(ref.key)
        tmp = path.with_name(f".{path.name}.tmp")
        meta = {"branches": str(ref.branches), "denoise_s": repr(ref.denoise_s), "job": json.dumps(about)}
        save_file({"frames": np.ascontiguousarray(ref.frames, dtype=np.uint8),
                   "tea_x": np.asarray(ref.tea_x, dtype=np.float64),
                   "tea_y": np.asarray(ref.tea_y, dtype=np.float64),
                   "timesteps": np.asarray(ref.timesteps, dtype=np.float64)}, str(tmp), metadata=meta)
        tmp.replace(path)

    # -- measured points ----------------------------------------------------------------------
    def point(self, key: str) -> dict[str, Any] | None:
        return self.points.get(key)

    def add_point(self, key: str, values: dict[str, Any]) -> None:
        self.points[key] = values
        text = json.dumps({"format": FORMAT, "points": self.points}, indent=1, allow_nan=False)
        write_text(self.folder / PROGRESS, text + "\n")

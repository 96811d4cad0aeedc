"""Quality numbers for cached runs, and a prompt-adherence probe for the tiny reference model.

A cache is only worth its speed-up if the video stays close to the uncached one, so every method is
scored with PSNR / SSIM (and LPIPS when its weights are already on disk; nothing is downloaded)
against the uncached video of the same seed. Closeness alone cannot tell whether the uncached video
was any good, so the tiny reference model also gets a probe that checks a clip against its prompt:
is the moving object the named colour, and does it move the named way. The probe knows the world of
``vidcache.reference`` (a single object over a plain dark background) and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import reference as R

PSNR_CAP = 100.0  # dB reported for identical videos (instead of inf)


def _video(x: Any) -> torch.Tensor:
    """(T, H, W, 3) float32 tensor from a numpy array or a tensor (a leading batch of 1 dropped)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    if t.ndim == 5 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected frames shaped (T, H, W, 3), got {tuple(t.shape)}")
    return t


def _pair(ref: Any, test: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _video(ref), _video(test)
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a.permute(0, 3, 1, 2).contiguous(), b.permute(0, 3, 1, 2).contiguous()


def psnr_frames(ref: Any, test: Any) -> list[float]:
    """PSNR in dB of every frame (data range 1); identical frames count as ``PSNR_CAP``. A clip's
    mean hides one broken frame (Wan's first frame, decoded alone by the causal VAE, breaks first
    under step reuse): the bench reports the worst frame beside the mean."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _pair(ref, test)
    per_frame = peak_signal_noise_ratio(b, a, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return torch.nan_to_num(per_frame, posinf=PSNR_CAP).clamp(max=PSNR_CAP).tolist()


def psnr(ref: Any, test: Any) -> float:
    """Mean per-frame PSNR in dB (data range 1); identical frames count as ``PSNR_CAP``."""
    return float(np.mean(psnr_frames(ref, test)))


def ssim_frames(ref: Any, test: Any) -> list[float]:
    """SSIM of each frame (Gaussian window 11, data range 1)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _pair(ref, test)
    vals = [
        structural_similarity_index_measure(
            b[i : i + 32], a[i : i + 32], data_range=1.0, reduction="none"
        )
        for i in range(0, a.shape[0], 32)
    ]
    return torch.cat([v.reshape(-1) for v in vals]).tolist()


def ssim(ref: Any, test: Any) -> float:
    """Mean per-frame SSIM (Gaussian window 11, data range 1)."""
    return float(np.mean(ssim_frames(ref, test)))


@lru_cache(maxsize=1)
def _lpips_model():
    """torchmetrics' LPIPS (AlexNet) if torchvision and AlexNet's weights are on disk, else None."""
    try:
        import torchvision
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity
    except ImportError:
        return None
    url = torchvision.models.AlexNet_Weights.DEFAULT.url
    if not (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file():
        return None
    try:
        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).eval()
    except Exception:  # noqa: BLE001 - any failure to build it means "not available"
        return None


def lpips(ref: Any, test: Any) -> float | None:
    """Mean per-frame LPIPS (AlexNet), or None when its weights are not available locally."""
    model = _lpips_model()
    if model is None:
        return None
    a, b = _pair(ref, test)
    with torch.no_grad():
        vals = [float(model(b[i : i + 1], a[i : i + 1])) for i in range(a.shape[0])]
    return float(np.mean(vals))


# --- adherence probe ---------------------------------------------------------------------------

FG_THRESHOLD = 0.2  # a pixel is "object" when some channel differs this much from the background
MIN_TRAVEL = 0.06  # of the frame's smaller side: less centroid travel than this is "not moving"


def track(frames: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Centroids (T, 2) (x, y in pixels; NaN where no object) and the object's median colour."""
    v = _video(frames)
    t, h, w, _ = v.shape
    bg = v.reshape(t, -1, 3).median(dim=1).values  # the object covers well under half a frame
    diff = (v - bg[:, None, None, :]).abs().amax(dim=-1)
    fg = diff > FG_THRESHOLD
    count = fg.sum(dim=(1, 2)).float()
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    cx = (fg.float().sum(dim=1) * xs).sum(dim=1) / count
    cy = (fg.float().sum(dim=2) * ys).sum(dim=1) / count
    enough = count >= max(4, 0.001 * h * w)
    centre = torch.stack([cx, cy], dim=1)
    centre[~enough] = float("nan")
    colour = v[fg].median(dim=0).values if fg.any() else None
    return centre, colour


def classify_colour(rgb: torch.Tensor | None) -> str | None:
    """The nearest palette colour of ``vidcache.reference`` to an RGB triple."""
    if rgb is None:
        return None
    palette = torch.tensor(list(R.COLOURS.values()))
    return R.COLOUR_NAMES[int((palette - rgb).pow(2).sum(dim=1).argmin())]


def classify_direction(centre: torch.Tensor, size: int) -> str | None:
    """The dominant direction of a centroid track (least-squares slope); None if it barely moves."""
    ok = ~torch.isnan(centre[:, 0])
    if int(ok.sum()) < max(2, centre.shape[0] // 2):
        return None
    t = torch.arange(centre.shape[0], dtype=torch.float32)[ok]
    c = centre[ok]
    tc = t - t.mean()
    slope = (tc[:, None] * (c - c.mean(dim=0))).sum(dim=0) / tc.pow(2).sum()
    travel = slope * (centre.shape[0] - 1)
    if float(travel.abs().max()) < MIN_TRAVEL * size:
        return None
    if travel[0].abs() >= travel[1].abs():
        return "right" if travel[0] > 0 else "left"
    return "down" if travel[1] > 0 else "up"


def adherence(frames: Any, prompt: str) -> dict[str, Any]:
    """Does a clip (T, H, W, 3 in [0, 1]) show its prompt's colour moving its prompt's way?

    Returns ``colour_ok``, ``direction_ok``, ``ok`` (both), plus what was seen (``colour``,
    ``direction``; None when no object or no motion was found).
    """
    _, want_colour, want_direction = R.parse_prompt(prompt)
    v = _video(frames)
    centre, rgb = track(v)
    colour = classify_colour(rgb)
    direction = classify_direction(centre, min(v.shape[1], v.shape[2]))
    colour_ok = colour is not None and colour == want_colour
    direction_ok = direction is not None and direction == want_direction
    return {
        "colour_ok": colour_ok,
        "direction_ok": direction_ok,
        "ok": colour_ok and direction_ok,
        "colour": colour,
        "direction": direction,
    }


def adherence_accuracy(samples: Iterable[tuple[Any, str]]) -> dict[str, dict[str, float]]:
    """Adherence rates over (frames, prompt) pairs, reported apart for training and held-out combos.

    Returns ``{"train": {...}, "held_out": {...}}``, each with ``n`` and the ``colour``,
    ``direction`` and ``ok`` rates (NaN for a split with no samples).
    """
    tallies = {"train": [], "held_out": []}
    for frames, prompt in samples:
        split = "held_out" if R.is_held_out(prompt) else "train"
        tallies[split].append(adherence(frames, prompt))
    out = {}
    for split, rows in tallies.items():
        n = len(rows)
        out[split] = {"n": n}
        for key, field in (("colour", "colour_ok"), ("direction", "direction_ok"), ("ok", "ok")):
            out[split][key] = sum(r[field] for r in rows) / n if n else math.nan
    return out

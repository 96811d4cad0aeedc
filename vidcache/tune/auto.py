"""``--cache auto``: the fastest method whose measured quality meets the run's bar.

Why here and not in the CLI: every command that chooses a cache goes through ``runner.plan_run``,
which calls ``choose``, so ``gen``, ``bench`` and a notebook's ``plan_run`` pick alike. The choice
reads only what the merged presets carry: the method tables and the ``[tuned]`` measurements that
``vidcache tune`` wrote beside them (``presets.merge`` drops a measurement when a later file changes
its table). Nothing is loaded and no torch is imported.

Rule: among the methods with a table and a ``[tuned.METHOD]`` measurement, those whose measured mean
PSNR is at least ``quality`` (default: the file's ``target_psnr``); of these the fastest, which is
the lowest compute ratio (an exact count of the blocks run), then the lowest attention compute ratio
(PAB and FasterCache reuse attention inside blocks), then the highest measured speedup (a timing, so
the noisiest of the three). A file tuned for a speedup (``target_speedup``, no ``target_psnr``) and no
``quality`` given: the best PSNR among the methods that reached that speedup.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import UsageError


def check_quality(quality: float | None) -> float | None:
    if quality is not None and not (math.isfinite(quality) and quality > 0):
        raise UsageError(f"--quality {quality}: expected a PSNR in dB above 0")
    return quality


def measured(preset: Any) -> dict[str, dict[str, Any]]:
    """method -> its ``[tuned.METHOD]`` measurement, for the methods that also have a table."""
    return {m: v for m, v in preset.tuned.items() if isinstance(v, dict) and m in preset.methods}


def speed_key(values: dict[str, Any]) -> tuple[float, float, float]:
    """Smaller is faster: compute ratio, attention compute ratio, then 1 / measured speedup."""
    speedup = values.get("speedup") or 0.0
    return (values["compute_ratio"], values.get("attention_compute_ratio", values["compute_ratio"]),
            1.0 / speedup if speedup > 0 else math.inf)


def choose(preset: Any, quality: float | None = None) -> tuple[str, dict[str, Any]]:
    """(method, why) for ``--cache auto``; ``UsageError`` (one line) when nothing qualifies."""
    check_quality(quality)
    found = measured(preset)
    if not found:
        raise UsageError("--cache auto: no method of the presets carries a measurement ([tuned] table): "
                         "run `vidcache tune` and pass the file it writes with --preset")
    bar = quality if quality is not None else preset.tuned.get("target_psnr")
    if bar is None:
        speed = preset.tuned.get("target_speedup")
        if speed is None:
            raise UsageError("--cache auto: the [tuned] table names no target; give --quality DB")
        fast = {m: v for m, v in found.items() if (v.get("speedup") or 0) >= speed}
        if not fast:
            raise UsageError(f"--cache auto: no tuned method reached its {speed}x")
        method = max(fast, key=lambda m: fast[m]["psnr"])
        return method, {**fast[method], "target_speedup": speed}
    good = {m: v for m, v in found.items() if v["psnr"] >= bar}
    if not good:
        best = max(found, key=lambda m: found[m]["psnr"])
        raise UsageError(f"--cache auto: no tuned method meets PSNR {bar:g} dB (the best measured: {best} at "
                         f"{found[best]['psnr']:.2f} dB); lower --quality or tune for it")
    method = min(good, key=lambda m: speed_key(good[m]))
    return method, {**good[method], "quality": bar}


def describe(method: str, why: dict[str, Any]) -> str:
    """One line for the user: what auto chose and on what measurement."""
    bar = f">= {why['quality']:g} dB" if "quality" in why else f"best PSNR at >= {why['target_speedup']:g}x"
    speed = f", {why['speedup']:.2f}x" if why.get("speedup") else ""
    return (f"--cache auto: {method} (measured {why['psnr']:.2f} dB {bar}, compute ratio "
            f"{why['compute_ratio']:.3f}{speed})")

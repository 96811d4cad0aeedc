"""The timing report of one video, the run summary, and the table shown at the end of a run."""

from __future__ import annotations

import platform
from typing import Any

import torch

from . import __version__


def versions() -> dict[str, str]:
    import diffusers

    return {"vidcache": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version()}


def device_info(device: str) -> dict[str, Any]:
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return {"type": "cuda", "name": props.name, "memory_bytes": props.total_memory}
    return {"type": "cpu", "name": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}


# what happened to each video of a run: done (written now), skipped (already done), claimed (being
# rendered by another live process), failed (not written; the others went on), interrupted (a signal
# stopped the run during it: nothing of it is kept)
STATUSES = ("done", "skipped", "claimed", "failed", "interrupted")
_STYLE = {"done": "[green]done", "skipped": "[cyan]skipped", "claimed": "[yellow]claimed", "failed": "[red]failed",
          "interrupted": "[magenta]interrupted"}


def video_row(report: dict[str, Any]) -> dict[str, Any]:
    """One line of the run summary."""
    timing = report.get("timing", {})
    steps = max(len(timing.get("step_s", [])), 1)
    return {
        "name": report["name"],
        "status": report.get("status", "done"),
        "seconds": timing.get("total_s"),
        "seconds_per_step": (timing.get("denoise_s") or 0.0) / steps if timing else None,
        "compute_ratio": report.get("cache", {}).get("stats", {}).get("compute_ratio"),
        "mp4": report.get("mp4"),
        "error": report.get("error"),
    }


def summary_table(rows: list[dict[str, Any]], title: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    for col, justify in (("video", "left"), ("status", "left"), ("seconds", "right"),
                         ("s/step", "right"), ("compute ratio", "right")):
        table.add_column(col, justify=justify)

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        status = _STYLE.get(r["status"], r["status"])
        table.add_row(escape(r["name"]), status, num(r["seconds"], ".2f"), num(r["seconds_per_step"], ".3f"),
                      num(r["compute_ratio"], ".3f"))
    return table

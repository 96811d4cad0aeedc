"""The farm's live view: the batch's counts and ETA over one line per worker (rich renderables)."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``12s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def headline(farm: Any) -> str:
    b, now = farm.board, farm.now()
    live = sum(s.state in ("idle", "busy") for s in farm.workers)
    total = len(b.tasks)
    return (f"{b.count('done') + b.count('skipped')}/{total} done ({b.count('skipped')} skipped) · "
            f"{b.count('running')} running · {b.count('queued')} queued · {b.count('failed')} failed · "
            f"{duration(now)} · ETA {duration(b.eta_s(now, live))}")


def farm_view(farm: Any):
    """What the driver shows while it runs."""
    now = farm.now()
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col, justify in (("worker", "left"), ("node", "left"), ("GPU", "left"), ("state", "left"),
                         ("video", "left"), ("done", "right"), ("videos/min", "right"), ("busy", "right")):
        table.add_column(col, justify=justify)
    for s in farm.workers:
        task = s.task
        video = f"{escape(task.job.name)} ({duration(now - (task.start_s or now))})" if task else "-"
        rate = s.throughput(now)
        busy = now - (s.ready_s or now)
        table.add_row(s.incarnation, escape(str(s.info.get("node") or s.info.get("host") or "-")),
                      ",".join(s.info.get("gpus") or []) or "-", s.state, video, str(s.videos),
                      "-" if rate is None else f"{rate:.1f}",
                      "-" if busy <= 0 else f"{min(s.busy_s / busy, 1.0):.0%}")
    return Group(Text(headline(farm)), table)

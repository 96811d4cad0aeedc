"""Fault points for the tests: a process that signals itself at a named stage of the run.

``VIDCACHE_TEST_FAULT=STAGE[:N][:SIGNAL][,...]`` sends SIGNAL (``KILL`` unless given: ``TERM``,
``INT``) to this process the N-th time (default 1) it reaches STAGE. The stages, in the order a video
passes them: ``load`` (before the model loads), ``step`` (each
denoising step), ``frames`` (generated, nothing written), ``mp4-temp`` (the MP4 written to its temp
file, not yet checked), ``report-temp`` (the report's temp file written), ``mp4`` (the MP4 renamed,
its report not yet), ``report`` (the report renamed, the claim still held). Unset, this costs one
dictionary lookup per call.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def point(stage: str) -> None:
    spec = os.environ.get("VIDCACHE_TEST_FAULT")
    if not spec:
        return
    _seen[stage] = _seen.get(stage, 0) + 1
    for item in spec.split(","):
        name, *rest = item.strip().split(":")
        count = int(rest[0]) if rest and rest[0].isdigit() else 1
        sig = rest[-1] if rest and not rest[-1].isdigit() else "KILL"
        if name == stage and _seen[stage] == count:
            os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))

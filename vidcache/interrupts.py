"""SIGINT and SIGTERM as one clean stop.

SIGTERM is what Slurm and Kubernetes send; it is handled like Ctrl-C: the signal raises
``Interrupted`` (a ``KeyboardInterrupt``) in the main thread, except inside ``deferred()`` blocks (a
video being written, the run summary), which finish first. A second signal during such a block
stops at once (the block's own cleanup still removes its temp files). The CLI turns ``Interrupted``
into one line and exit status 128 + the signal (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_depth = 0
_pending: int | None = None


def _handle(signum, frame) -> None:
    global _pending
    if _depth and _pending is None:
        _pending = signum
        return
    _pending = None  # a second signal: stop now (the one raised here is the one that counts)
    raise Interrupted(signum)


_previous: dict[int, object] = {}


def _handled() -> tuple[signal.Signals, ...]:
    """SIGINT always; SIGTERM in one process only. Under torchrun (WORLD_SIZE > 1) SIGTERM keeps its
    default: torchrun sends it to stop the ranks, and a rank waiting inside a collective could not run
    a Python handler until the collective gave up (its writes are crash-safe without one)."""
    return SIGNALS if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 else (signal.SIGINT,)


def install() -> None:
    """Route the handled signals through ``_handle`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        for sig in _handled():
            _previous.setdefault(sig, signal.signal(sig, _handle))


def restore() -> None:
    """The handlers that were there before ``install`` (for callers that run a command in-process)."""
    if threading.current_thread() is threading.main_thread():
        while _previous:
            sig, handler = _previous.popitem()
            signal.signal(sig, handler)


def uninstall() -> None:
    """Default dispositions: once the command has said its last word, a signal ends the process
    quietly instead of raising into interpreter shutdown (the console script's last act)."""
    if threading.current_thread() is threading.main_thread():
        _previous.clear()
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block to its end before a signal that arrives meanwhile takes effect."""
    global _depth, _pending
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)

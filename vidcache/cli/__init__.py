"""The ``vidcache`` command. Parsing and printing only: the work lives in importable modules.

One module per command registers itself on ``app``; ``options`` holds the flags they share and
``gen.gen_options`` gives a command every ``vidcache gen`` flag with the same meaning.
"""

from __future__ import annotations

from . import bench, calibrate, farm, gen, info, report, tune  # noqa: F401 - each registers its command on ``app``
from .app import app


def main() -> None:
    from .. import interrupts

    try:
        app()
    finally:  # the command has said its last word: a signal now ends the process without a traceback
        interrupts.uninstall()


__all__ = ["app", "main"]

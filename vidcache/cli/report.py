"""``vidcache report``: one static page to look at a batch, or to compare two caches by eye."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import app, guarded, note, progress, warn
from .options import DebugOpt, JsonOpt


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A gen, farm or bench output folder (subfolders included).")],
    against: Annotated[Path | None, typer.Option(
        help="A reference run's folder (e.g. --cache none): the same jobs side by side, with PSNR / SSIM "
             "and speedup.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="The page to write (default FOLDER/report.html; pictures go to <page>_files/).")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one self-contained HTML page of a folder's videos: contact sheet, stats, side by side."""
    from ..page import build

    with guarded(debug):
        with progress() as bars:
            task = bars.add_task("report", total=None)

            def on_video(position, total, name):
                bars.update(task, completed=position, total=total, description=f"report {name}")

            built = build(folder, against, out, on_video)
    for line in built.problems:
        warn(line)
    unpaired = built.summary["unpaired"]
    if unpaired and (unpaired["here"] or unpaired["against"]):
        note(f"{len(unpaired['here'])} job(s) only in {folder}, {len(unpaired['against'])} only in {against}: "
             "listed on the page, not compared")
    if json_out:
        sys.stdout.write(json.dumps(built.summary, indent=2) + "\n")
        return
    counts = ", ".join(f"{n} {s}" for s, n in built.summary["counts"].items() if n)
    note(f"wrote {built.page} ({len(built.summary['videos'])} videos: {counts or 'none'}"
         f"{f'; {len(built.problems)} problems' if built.problems else ''})")

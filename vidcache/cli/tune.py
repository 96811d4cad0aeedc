"""``vidcache tune``: the fastest setting of each method that meets a quality (or speed) target.

No ``from __future__ import annotations`` here: ``gen_options`` hands Typer the annotation objects.
"""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .app import app, err_console, fail, guarded, note, out_console, progress, warn
from .gen import GenArgs, gen_options

TUNE_METHODS = "pab,fastercache,teacache,adacache,mixcache"


@app.command()
@gen_options
def tune(
    *,
    prompts_file: Annotated[str | None, typer.Option(
        "--prompts", help="Tuning prompts: .txt (one a line) or .jsonl; '-' reads stdin. A few (4) do.")] = None,
    cache: Annotated[str, typer.Option(
        help="Comma-separated methods to tune (METHOD.VARIANT starts from that preset variant).")] = TUNE_METHODS,
    target_psnr: Annotated[float | None, typer.Option(
        help="Keep the fastest setting whose mean PSNR vs uncached is at least this (dB).")] = None,
    target_speedup: Annotated[float | None, typer.Option(
        help="Or: keep the best PSNR among settings at least this much faster than uncached.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="TOML preset fragment to write.")] = Path("tuned.toml"),
    refs: Annotated[Path | None, typer.Option(
        help="Folder for the uncached references and the measured points (default: OUT's folder/.vidcache-tune).",
    )] = None,
    overwrite: Annotated[bool, typer.Option(
        help="Make new references and measure every point again (the kept ones are ignored).")] = False,
    # gen's options that mean nothing here: hidden, and refused when given
    quality: Annotated[float | None, typer.Option(hidden=True)] = None,
    shard: Annotated[str | None, typer.Option(hidden=True)] = None,
    ulysses: Annotated[int | None, typer.Option(hidden=True)] = None,
    ring: Annotated[int | None, typer.Option(hidden=True)] = None,
    cfg_parallel: Annotated[bool, typer.Option("--cfg-parallel", hidden=True)] = False,
    args: GenArgs,
) -> None:
    """Tune each method for a model, its settings and a target; writes a preset fragment."""
    from ..tune.fragment import render
    from ..tune.tuner import check_target, plan_tune, run_tune
    from ..video import write_text

    debug = args.debug
    with guarded(debug):
        if shard or ulysses or ring or cfg_parallel:
            raise UsageError("tune runs in one process: --shard, --ulysses, --ring and --cfg-parallel do not apply")
        if quality is not None:
            raise UsageError("--quality is for --cache auto under gen; tune takes --target-psnr")
        target = check_target(target_psnr, target_speedup)
        cfg = args.run_config()
        plan = plan_tune(cfg, args.prompts(), cache, target, out, refs, overwrite)
        methods = ", ".join(m.spec for m in plan.methods)
        note(f"tune {methods} on {len(plan.base.jobs)} prompts for {target.words()}: about {plan.estimate()} "
             f"videos ({len(plan.base.jobs)} references, unless kept in {plan.refs})")
        with progress(transient=True) as bars:
            task = bars.add_task("tune", total=plan.estimate())

            class Events:
                def status(self, text: str) -> None:
                    bars.update(task, description=text)

                def video(self, done: int, total: int) -> None:
                    bars.update(task, completed=done, total=total)

                def note(self, text: str) -> None:
                    bars.console.print(text, highlight=False, markup=False)

            try:
                result = run_tune(plan, Events())
            except KeyboardInterrupt:
                err_console.print("[red]interrupted[/red]: the references and measured points are kept in "
                                  f"{plan.refs}; run again to resume")
                raise typer.Exit(130) from None
        summary = result.summary()
        note(f"took {result.videos} videos in {result.seconds:.0f} s ({result.reused} measured points reused)")
        if not result.met:
            if args.json_out:
                sys.stdout.write(json.dumps(summary, indent=2) + "\n")
            fail(result.failure(), debug, 1)
        write_text(out, render(result))
    for r in result.results:
        if r.chosen is None:
            warn(f"{r.method}: no setting meets {target.words()}; left out of {out}")
    if args.json_out:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"vidcache tune: {plan.base.model.name}, {target.words()}")
    for col in ("method", "setting", "PSNR", "worst", "SSIM", "compute", "attention", "speedup"):
        table.add_column(col, justify="left" if col in ("method", "setting") else "right")
    for r in result.met:
        s = r.chosen.summary()
        table.add_row(r.method, r.chosen.label, f"{s['psnr']:.2f}", f"{s['psnr_min']:.2f}", f"{s['ssim']:.3f}",
                      f"{s['compute_ratio']:.3f}", f"{s['attention_compute_ratio']:.3f}", f"{s['speedup']:.2f}x")
    out_console.print(table)
    note(f"wrote {out} ({len(result.met)} methods); use: vidcache gen --preset {out} --cache auto")

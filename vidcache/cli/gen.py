"""``vidcache gen``, and the generation options other commands share with it (``gen_options``).

This module does not use ``from __future__ import annotations``: ``gen_options`` hands Typer the
real annotation objects of ``_gen_template``'s parameters.
"""

import functools
import inspect
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..errors import EXIT_OK, EXIT_SOME_FAILED, RankLost, VidcacheError, one_line
from .app import app, err_console, fail, note, out_console, progress
from .options import (
    Attention,
    AttentionOpt,
    CacheOpt,
    CompileOpt,
    DebugOpt,
    Device,
    DeviceOpt,
    DType,
    DTypeOpt,
    Fit,
    FitOpt,
    FlowShiftOpt,
    FpsOpt,
    FramesOpt,
    GuidanceOpt,
    HeightOpt,
    ImageOpt,
    ModelOpt,
    NegativeOpt,
    PresetOpt,
    PromptOpt,
    QualityOpt,
    Quantize,
    QuantizeOpt,
    SeedOpt,
    SetOpt,
    StepsOpt,
    WidthOpt,
)

RANK_EXIT_GRACE_S = 3.0  # under torchrun: how long ranks other than 0 wait before exiting on a refusal


def _gen_template(
    prompts_file: Annotated[str | None, typer.Argument(
        help="Prompt file: .txt (one prompt a line, # comments) or .jsonl; '-' reads stdin.",
    )] = None,
    prompt: PromptOpt = [],  # noqa: B006
    model: ModelOpt = "tiny",
    image: ImageOpt = None,
    fit: FitOpt = Fit.crop,
    cache: CacheOpt = "none",
    quality: QualityOpt = None,
    preset: PresetOpt = None,
    set_: SetOpt = [],  # noqa: B006
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("outputs"),
    frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    negative_prompt: NegativeOpt = None,
    flow_shift: FlowShiftOpt = None,
    fps: FpsOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    attention: AttentionOpt = Attention.auto,
    quantize: QuantizeOpt = Quantize.none,
    offload: Annotated[bool, typer.Option(help="Model CPU offload: one component on the GPU at a time.")] = False,
    sequential_offload: Annotated[bool, typer.Option(
        help="Sequential CPU offload: least GPU memory, slowest.")] = False,
    group_offload: Annotated[bool, typer.Option(
        help="Group offload: one block on the GPU at a time, the next prefetched on a side stream.")] = False,
    compile_: CompileOpt = False,
    overwrite: Annotated[bool, typer.Option(help="Redo videos that are already finished.")] = False,
    shard: Annotated[str | None, typer.Option(help="Render only share i of n (i/n), for render farms.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON on stdout.")] = False,
    ulysses: Annotated[int | None, typer.Option(
        help="Under torchrun: ranks that split each sequence with Ulysses all-to-all (default: all).")] = None,
    ring: Annotated[int | None, typer.Option(
        help="Under torchrun: ranks that split each sequence with ring attention (GPU only).")] = None,
    cfg_parallel: Annotated[bool, typer.Option(
        "--cfg-parallel", help="Under torchrun: half the ranks run the cond branch, half the uncond.")] = False,
    debug: DebugOpt = False,
) -> None:
    """The parameters of ``vidcache gen`` (never called)."""


GEN_PARAMETERS = inspect.signature(_gen_template).parameters


@dataclass(frozen=True)
class GenArgs:
    """``vidcache gen``'s options as given, for any command that renders like gen."""

    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def run_config(self):
        """The ``RunConfig`` these options describe (no check yet: ``plan_run`` checks)."""
        from ..loading import LoadOptions
        from ..parallel import ParallelOptions
        from ..runner import RunConfig

        v = self.values
        flags = {k: v[k] for k in ("frames", "height", "width", "steps", "guidance", "negative_prompt",
                                   "flow_shift", "fps")}
        return RunConfig(
            model=v["model"], cache=v["cache"], quality=v["quality"],
            preset_file=str(v["preset"]) if v["preset"] else None,
            sets=list(v["set_"]), out=v["out"], overwrite=v["overwrite"], shard=v["shard"], seed=v["seed"],
            flags=flags,
            load=LoadOptions(device=v["device"].value, dtype=v["dtype"].value, attention=v["attention"].value,
                             offload=v["offload"], sequential_offload=v["sequential_offload"],
                             group_offload=v["group_offload"], compile=v["compile_"],
                             quantize=v["quantize"].value),
            parallel=ParallelOptions(ulysses=v["ulysses"], ring=v["ring"], cfg=v["cfg_parallel"]),
            image=str(v["image"]) if v["image"] is not None else None, fit=v["fit"].value,
        )

    def prompts(self):
        from .. import jobs

        return jobs.read_prompts(self.values["prompts_file"], list(self.values["prompt"]))


def gen_options(fn):
    """Give ``fn`` every ``vidcache gen`` option it does not declare itself; it receives them as
    ``args: GenArgs``. Its own parameters (other than ``args``) come first and win on a name clash,
    so a command can change a default or a help text and still mean the same thing."""
    own = {n: p for n, p in inspect.signature(fn).parameters.items() if n != "args"}
    shared = {n: p for n, p in GEN_PARAMETERS.items() if n not in own}
    params = list(own.values()) + list(shared.values())
    params.sort(key=lambda p: p.default is not inspect.Parameter.empty)  # arguments without default first
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        given = {n: kwargs.pop(n) for n in list(kwargs) if n in shared}
        values = {n: p.default for n, p in GEN_PARAMETERS.items()} | given
        for n in own:
            if n in GEN_PARAMETERS:
                values[n] = kwargs[n]
        return fn(args=GenArgs(values), **kwargs)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # Typer must read the signature above, not ``fn``'s
    return command


class RichEvents:
    """Two bars: the prompts, and the steps of the current video."""

    def __init__(self, progress):
        self.progress = progress
        self.videos = progress.add_task("videos", total=None)
        self.steps = progress.add_task("steps", total=None, visible=False)

    def video_start(self, job, position, total):
        self.progress.update(self.videos, total=total, completed=position, description=f"[bold]{escape(job.name)}")
        self.progress.update(self.steps, total=job.steps, completed=0, visible=True)

    def step(self, done, total):
        self.progress.update(self.steps, completed=done, total=total)

    def video_end(self, row):
        self.progress.advance(self.videos)
        self.progress.update(self.steps, visible=False)

    def warn(self, message):
        self.progress.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


def print_summary(summary: dict[str, Any], title: str, json_out: bool) -> None:
    """The run summary: JSON on stdout, or the table, where the files are, and one line per video
    that failed or was left to another process."""
    from ..report import summary_table
    from ..video import dumps

    if json_out:
        sys.stdout.write(dumps(summary))
        return
    out = summary["out"]
    out_console.print(summary_table(summary["videos"], title))
    where = f"videos and reports (NAME.mp4, NAME.json) in {out}"
    if summary.get("summary_file"):
        where += f"; this run's summary: {os.path.join(out, summary['summary_file'])} (also {out}/run.json)"
    out_console.print(escape(where), highlight=False, soft_wrap=True)
    for row in summary["videos"]:
        if row["status"] == "failed":
            err_console.print(f"[red]failed[/red] {escape(row['name'])}: {escape(row['error'])}", highlight=False,
                              soft_wrap=True)
        elif row["status"] == "claimed":
            err_console.print(f"[yellow]claimed[/yellow] {escape(row['name'])}: being rendered by "
                              f"{escape(row['owner'])}; a later run reports its outcome", highlight=False,
                              soft_wrap=True)


@app.command()
@gen_options
def gen(*, args: GenArgs) -> None:
    """Generate one MP4 and one timing report per prompt."""
    from .. import interrupts

    interrupts.install()  # SIGTERM like Ctrl-C, from here on: one line, 128 + the signal
    try:
        _gen(args)
    finally:
        interrupts.restore()


def _gen(args: GenArgs) -> None:
    import contextlib

    from .. import interrupts

    debug = args.debug
    main = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 prints (parallel.is_main)
    try:
        with interrupts.deferred():  # a signal during the imports takes effect after them, cleanly
            from ..runner import Runner, plan_run
        plan = plan_run(args.run_config(), args.prompts())
        if plan.auto is not None and main:
            from ..tune.auto import describe

            note(describe(plan.method, plan.auto))
        with progress() if main else contextlib.nullcontext() as bars:
            runner = Runner(plan, RichEvents(bars) if main else None)
            try:
                summary = runner.run(debug=debug)
            finally:
                runner.close()
    except RankLost as err:  # every rank that saw it says so; the group is left as it is (a peer may
        # still wait in a collective) and the process ends now, so that torchrun stops the others
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(err.exit_code)
    except VidcacheError as err:
        if not main:  # every rank refuses alike; rank 0 says why: leave it time to, before torchrun,
            time.sleep(RANK_EXIT_GRACE_S)  # seeing this rank's exit, stops it
        fail(err, debug, err.exit_code, show=main)
    except KeyboardInterrupt as err:
        by = f" by {err.name}" if isinstance(err, interrupts.Interrupted) else ""
        if main:
            err_console.print(f"[red]interrupted{by}[/red]: finished videos are kept; run again to resume",
                              highlight=False, soft_wrap=True)
        raise typer.Exit(getattr(err, "exit_code", 130)) from None
    except Exception as err:  # noqa: BLE001 - a traceback only with --debug
        fail(one_line(err), debug, 1, show=main)
    if main:
        print_summary(summary, f"vidcache: {plan.model.name}, cache {plan.method if plan.auto else args.cache}",
                      args.json_out)
    raise typer.Exit(EXIT_SOME_FAILED if summary["counts"]["failed"] else EXIT_OK)

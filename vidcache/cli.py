"""The ``vidcache`` command. Parsing and printing only: the work lives in importable modules."""

from __future__ import annotations

import json
import os
import sys
import traceback
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from .errors import EXIT_OK, EXIT_SOME_FAILED, RankLost, UsageError, VidcacheError, one_line

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Generate videos with Wan, HunyuanVideo and CogVideoX, fast, with feature caching.",
)
err_console = Console(stderr=True)
out_console = Console()


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class Attention(str, Enum):
    auto = "auto"
    sdpa = "sdpa"
    xformers = "xformers"
    flash = "flash"
    sage = "sage"


# Options shared by the commands that plan videos without writing them (bench, calibrate).
PromptsOpt = Annotated[str | None, typer.Option(help="Prompt file (.txt / .jsonl), '-' for stdin.")]
PromptOpt = Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeatable).")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Known name, hub id or local folder.")]
PresetOpt = Annotated[Path | None, typer.Option(help="TOML file merged over the model's preset.")]
SetOpt = Annotated[list[str], typer.Option("--set", help="defaults.KEY=VALUE overrides.")]
FramesOpt = Annotated[int | None, typer.Option(help="Frames per video.")]
HeightOpt = Annotated[int | None, typer.Option(help="Height in pixels.")]
WidthOpt = Annotated[int | None, typer.Option(help="Width in pixels.")]
StepsOpt = Annotated[int | None, typer.Option(help="Denoising steps.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for every prompt without its own.")]
DeviceOpt = Annotated[Device, typer.Option(help="Where to run.")]
DTypeOpt = Annotated[DType, typer.Option(help="Precision.")]
DebugOpt = Annotated[bool, typer.Option(help="Show tracebacks.")]


def _fail(err: BaseException, debug: bool, code: int, show: bool = True) -> None:
    if debug:
        traceback.print_exc()
    if show:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


class RichEvents:
    """Two bars: the prompts, and the steps of the current video."""

    def __init__(self, progress):
        self.progress = progress
        self.videos = progress.add_task("videos", total=None)
        self.steps = progress.add_task("steps", total=None, visible=False)

    def video_start(self, job, position, total):
        self.progress.update(self.videos, total=total, completed=position, description=f"[bold]{job.name}")
        self.progress.update(self.steps, total=job.steps, completed=0, visible=True)

    def step(self, done, total):
        self.progress.update(self.steps, completed=done, total=total)

    def video_end(self, row):
        self.progress.advance(self.videos)
        self.progress.update(self.steps, visible=False)

    def warn(self, message):
        self.progress.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


@app.command()
def gen(
    prompts_file: Annotated[str | None, typer.Argument(
        help="Prompt file: .txt (one prompt a line, # comments) or .jsonl; '-' reads stdin.",
    )] = None,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = [],  # noqa: B006
    model: Annotated[str, typer.Option(
        "--model", "-m", help="Known name (see `vidcache models`), hub id or local diffusers folder.")] = "tiny",
    cache: Annotated[str, typer.Option(
        help="Caching method (none, pab, teacache, ...); METHOD.VARIANT picks a preset variant.")] = "none",
    preset: Annotated[Path | None, typer.Option(help="TOML file merged over the model's preset.")] = None,
    set_: Annotated[list[str], typer.Option(
        "--set", help="Override a parameter: key=value (cache params; defaults.KEY for defaults).")] = [],  # noqa: B006
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("outputs"),
    frames: Annotated[int | None, typer.Option(help="Frames per video (model default from its preset).")] = None,
    height: Annotated[int | None, typer.Option(help="Height in pixels.")] = None,
    width: Annotated[int | None, typer.Option(help="Width in pixels.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt (models with CFG).")] = None,
    flow_shift: Annotated[float | None, typer.Option(help="Scheduler flow shift (Wan, HunyuanVideo).")] = None,
    fps: Annotated[int | None, typer.Option(help="Frames per second of the MP4.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for every job without its own.")] = 0,
    device: Annotated[Device, typer.Option(help="Where to run.")] = Device.auto,
    dtype: Annotated[DType, typer.Option(
        help="Weights and compute precision (auto: bf16 on CUDA, fp32 on CPU).")] = DType.auto,
    attention: Annotated[Attention, typer.Option(
        help="Attention backend (auto: PyTorch SDPA; FlashAttention-3 for Wan on Hopper when installed).",
    )] = Attention.auto,
    offload: Annotated[bool, typer.Option(help="Model CPU offload: one component on the GPU at a time.")] = False,
    sequential_offload: Annotated[bool, typer.Option(
        help="Sequential CPU offload: least GPU memory, slowest.")] = False,
    group_offload: Annotated[bool, typer.Option(
        help="Group offload: one block on the GPU at a time, the next prefetched on a side stream.")] = False,
    compile_: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the transformer blocks (the first video compiles).")] = False,
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
    """Generate one MP4 and one timing report per prompt."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import jobs
    from .loading import LoadOptions
    from .parallel import ParallelOptions, is_main
    from .report import summary_table
    from .runner import RunConfig, Runner, plan_run

    flags: dict[str, Any] = {"frames": frames, "height": height, "width": width, "steps": steps,
                             "guidance": guidance, "negative_prompt": negative_prompt,
                             "flow_shift": flow_shift, "fps": fps}
    cfg = RunConfig(
        model=model, cache=cache, preset_file=str(preset) if preset else None, sets=list(set_),
        out=out, overwrite=overwrite, shard=shard, seed=seed, flags=flags,
        load=LoadOptions(device=device.value, dtype=dtype.value, attention=attention.value,
                         offload=offload, sequential_offload=sequential_offload,
                         group_offload=group_offload, compile=compile_),
        parallel=ParallelOptions(ulysses=ulysses, ring=ring, cfg=cfg_parallel),
    )
    main = is_main()  # under torchrun only rank 0 prints
    try:
        plan = plan_run(cfg, jobs.read_prompts(prompts_file, list(prompt)))
        progress = (Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=err_console, transient=True)
                    if main else contextlib.nullcontext())
        with progress:
            runner = Runner(plan, RichEvents(progress) if main else None)
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
        _fail(err, debug, err.exit_code, show=main)
    except KeyboardInterrupt:
        if main:
            err_console.print("[red]interrupted[/red]: finished videos are kept; run again to resume")
        raise typer.Exit(130) from None
    except Exception as err:  # noqa: BLE001 - a traceback only with --debug
        _fail(one_line(err), debug, 1, show=main)
    if not main:
        pass
    elif json_out:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        out_console.print(summary_table(summary["videos"], f"vidcache: {plan.model.name}, cache {cache}"))
        for row in summary["videos"]:
            if row["status"] == "failed":
                err_console.print(f"[red]failed[/red] {escape(row['name'])}: {escape(row['error'])}", highlight=False)
    raise typer.Exit(EXIT_SOME_FAILED if summary["counts"]["failed"] else EXIT_OK)


@app.command()
def bench(
    caches: Annotated[str, typer.Option(
        help="Comma-separated methods (METHOD.VARIANT for a preset variant); the uncached baseline always runs.",
    )] = "pab,fastercache,teacache",
    prompts: PromptsOpt = None,
    prompt: PromptOpt = [],  # noqa: B006
    model: ModelOpt = "tiny",
    repeat: Annotated[int, typer.Option(min=1, help="Timed pairs per prompt and method.")] = 3,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for bench.json, bench.md, pareto.png.")] = Path(
        "bench"),
    preset: PresetOpt = None,
    set_: SetOpt = [],  # noqa: B006
    frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    attention: Annotated[Attention, typer.Option(help="Attention backend.")] = Attention.auto,
    compile_: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the transformer blocks (a method's first video compiles).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Speed and quality of each cache against the uncached run, side by side."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from . import bench as bench_mod
    from . import jobs
    from .loading import LoadOptions
    from .runner import RunConfig, Runner

    cfg = RunConfig(
        model=model, preset_file=str(preset) if preset else None, sets=list(set_), out=out, seed=seed,
        flags={"frames": frames, "height": height, "width": width, "steps": steps},
        load=LoadOptions(device=device.value, dtype=dtype.value, attention=attention.value, compile=compile_),
    )
    try:
        plan, contenders = bench_mod.plan_bench(cfg, jobs.read_prompts(prompts, list(prompt)), caches)
        runner = Runner(plan)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err_console, transient=True) as progress:
            task = progress.add_task("bench", total=None)

            class Ev(bench_mod.QuietEvents):
                def video_start(self, job, position, total):
                    progress.update(task, completed=position, total=total, description=f"bench {job.name}")

            try:
                rows = bench_mod.run_bench(runner, contenders, repeat, Ev())
            finally:
                runner.close()
        context = {"model": plan.model.name, "jobs": len(plan.jobs), "repeat": repeat, "device": runner.device,
                   "lpips_available": any(r["lpips"] is not None for r in rows[1:])}
        paths = bench_mod.write_outputs(rows, context, out)
    except VidcacheError as err:
        _fail(err, debug, err.exit_code)
    except Exception as err:  # noqa: BLE001
        _fail(one_line(err), debug, 1)
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title=f"vidcache bench: {plan.model.name} ({len(plan.jobs)} prompts x {repeat})")
    for col, head in zip(bench_mod.MD_COLUMNS, bench_mod.SHORT_HEADERS):
        table.add_column(head, justify="left" if col in ("method", "preset") else "right")
    for r in rows:
        table.add_row(*(bench_mod._fmt(r.get(c), c) for c in bench_mod.MD_COLUMNS))
    out_console.print(table)
    err_console.print(escape(f"wrote {paths['json']}, {paths['md']}, {paths['png']}"), highlight=False)


@app.command()
def calibrate(
    prompts: PromptsOpt = None,
    prompt: PromptOpt = [],  # noqa: B006
    model: ModelOpt = "tiny",
    out: Annotated[Path, typer.Option("--out", "-o", help="TOML preset fragment to write.")] = Path(
        "teacache-calibrated.toml"),
    retention: Annotated[bool, typer.Option(
        "--retention", help="Wan only: fit the retention-mode indicator (timestep_proj).")] = False,
    preset: PresetOpt = None,
    set_: SetOpt = [],  # noqa: B006
    frames: FramesOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    steps: StepsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    json_out: Annotated[bool, typer.Option("--json", help="Print the fit as JSON on stdout.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Fit TeaCache's coefficients to a model from uncached runs; writes a preset fragment."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import calibrate as calib
    from . import jobs
    from .loading import LoadOptions
    from .runner import RunConfig, Runner, plan_run
    from .video import write_text

    cfg = RunConfig(
        model=model, cache="none", preset_file=str(preset) if preset else None, sets=list(set_), out=out.parent,
        seed=seed, flags={"frames": frames, "height": height, "width": width, "steps": steps},
        load=LoadOptions(device=device.value, dtype=dtype.value),
    )
    try:
        if out.suffix != ".toml":
            raise UsageError(f"--out {out}: expected a .toml file")
        if not out.parent.is_dir():
            raise UsageError(f"--out {out}: no such folder {out.parent}")
        plan = plan_run(cfg, jobs.read_prompts(prompts, list(prompt)))
        runner = Runner(plan)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err_console, transient=True) as progress:
            task = progress.add_task("calibrate", total=len(plan.jobs))

            def on_video(job, position, total):
                progress.update(task, completed=position, description=f"calibrate {job.name}")

            try:
                result = calib.calibrate(runner, retention=retention, on_video=on_video)
            finally:
                runner.close()
        write_text(out, result.toml(plan.model.name))
    except VidcacheError as err:
        _fail(err, debug, err.exit_code)
    except Exception as err:  # noqa: BLE001
        _fail(one_line(err), debug, 1)
    summary = result.summary() | {"out": str(out)}
    for warning in result.warnings():
        err_console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    if json_out:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    err_console.print(escape(
        f"teacache coefficients for {plan.model.name}: {len(result.x)} pairs from {result.videos} videos, "
        f"mean relative fit error {summary['mean_rel_error']:.3f}; wrote {out} (use: --cache teacache "
        f"--preset {out})"), highlight=False)


@app.command()
def models(json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Known model names, their families, defaults and input constraints."""
    from rich.table import Table

    from . import presets
    from .models import FAMILIES, NAMES

    rows = []
    for n in NAMES.values():
        fam = FAMILIES[n.family]
        d = presets.load(n.preset).defaults
        rows.append({
            "name": n.name, "family": fam.name, "source": n.source, "description": n.description,
            "aliases": list(n.aliases), "defaults": d, "cfg": fam.cfg_layout,
            "constraints": {"frames": fam.frame_rule,
                            "size_multiple": n.size_multiple or fam.size_multiple},
        })
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="vidcache models")
    for col in ("name", "family", "source", "defaults", "constraints"):
        table.add_column(col)
    for r in rows:
        d = r["defaults"]
        table.add_row(
            r["name"], f"{r['family']} ({r['cfg']} CFG)", r["source"],
            f"{d['frames']}f {d['height']}x{d['width']}, {d['steps']} steps, cfg {d['guidance']}, {d['fps']} fps",
            f"{r['constraints']['frames']}; sizes multiple of {r['constraints']['size_multiple']}",
        )
    out_console.print(table)


@app.command("presets")
def presets_cmd(
    model: Annotated[str | None, typer.Argument(help="A model name; all models when left out.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The shipped presets: each model's defaults and cache method tables."""
    from . import presets

    try:
        names = [model] if model else presets.available()
        loaded = {n: presets.load(n) for n in names}
    except VidcacheError as err:
        _fail(err, False, err.exit_code)
    data = {n: {"defaults": p.defaults, **p.methods} for n, p in loaded.items()}
    if json_out:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    for n in loaded:
        out_console.rule(f"[bold]{n}")
        out_console.print((presets.PRESET_DIR / f"{n}.toml").read_text(), highlight=False, markup=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

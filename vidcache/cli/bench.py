"""``vidcache bench``: speed and quality of each cache against the uncached run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .app import app, guarded, note, out_console, progress
from .options import (
    Attention,
    AttentionOpt,
    CompileOpt,
    DebugOpt,
    Device,
    DeviceOpt,
    DType,
    DTypeOpt,
    FramesOpt,
    HeightOpt,
    ModelOpt,
    PresetOpt,
    PromptOpt,
    PromptsOpt,
    SeedOpt,
    SetOpt,
    StepsOpt,
    WidthOpt,
)


@app.command()
def bench(
    caches: Annotated[str, typer.Option(
        help="Comma-separated methods (METHOD.VARIANT for a preset variant; METHOD@int8 or @fp8 on quantized "
             "weights, none@int8 for quantization alone); the uncached, unquantized baseline always runs.",
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
    seed: SeedOpt = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    attention: AttentionOpt = Attention.auto,
    compile_: CompileOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Speed and quality of each cache against the uncached run, side by side."""
    from rich.table import Table

    from .. import bench as bench_mod
    from .. import jobs
    from ..loading import LoadOptions
    from ..runner import RunConfig, Runner

    cfg = RunConfig(
        model=model, preset_file=str(preset) if preset else None, sets=list(set_), out=out, seed=seed,
        flags={"frames": frames, "height": height, "width": width, "steps": steps},
        load=LoadOptions(device=device.value, dtype=dtype.value, attention=attention.value, compile=compile_),
    )
    with guarded(debug):
        plan, contenders = bench_mod.plan_bench(cfg, jobs.read_prompts(prompts, list(prompt)), caches)
        runner = Runner(plan)
        with progress() as bars:
            task = bars.add_task("bench", total=None)

            class Ev(bench_mod.QuietEvents):
                def video_start(self, job, position, total):
                    bars.update(task, completed=position, total=total, description=f"bench {job.name}")

            try:
                rows = bench_mod.run_bench(runner, contenders, repeat, Ev())
            finally:
                runner.close()
        context = {"model": plan.model.name, "jobs": len(plan.jobs), "repeat": repeat, "device": runner.device,
                   "lpips_available": any(r["lpips"] is not None for r in rows[1:])}
        paths = bench_mod.write_outputs(rows, context, out)
    if json_out:
        from ..video import dumps

        sys.stdout.write(dumps(rows))
        return
    table = Table(title=f"vidcache bench: {plan.model.name} ({len(plan.jobs)} prompts x {repeat})")
    cols, heads = bench_mod.columns(rows)
    for col, head in zip(cols, heads):
        table.add_column(head, justify="left" if col in ("method", "preset", "quantize") else "right")
    for r in rows:
        table.add_row(*(bench_mod._fmt(r.get(c), c) for c in cols))
    out_console.print(table)
    note(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")

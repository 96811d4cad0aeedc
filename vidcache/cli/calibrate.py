"""``vidcache calibrate``: fit TeaCache's coefficients to a model from uncached runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from .app import app, guarded, note, progress, warn
from .options import (
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
    seed: SeedOpt = None,
    device: DeviceOpt = Device.auto,
    dtype: DTypeOpt = DType.auto,
    json_out: Annotated[bool, typer.Option("--json", help="Print the fit as JSON on stdout.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Fit TeaCache's coefficients to a model from uncached runs; writes a preset fragment."""
    from .. import calibrate as calib
    from .. import jobs
    from ..loading import LoadOptions
    from ..runner import RunConfig, Runner, plan_run
    from ..video import write_text

    cfg = RunConfig(
        model=model, cache="none", preset_file=str(preset) if preset else None, sets=list(set_), out=out.parent,
        seed=seed, flags={"frames": frames, "height": height, "width": width, "steps": steps},
        load=LoadOptions(device=device.value, dtype=dtype.value),
    )
    with guarded(debug):
        if out.suffix != ".toml":
            raise UsageError(f"--out {out}: expected a .toml file")
        if not out.parent.is_dir():
            raise UsageError(f"--out {out}: no such folder {out.parent}")
        plan = plan_run(cfg, jobs.read_prompts(prompts, list(prompt)))
        runner = Runner(plan)
        with progress() as bars:
            task = bars.add_task("calibrate", total=len(plan.jobs))

            def on_video(job, position, total):
                bars.update(task, completed=position, description=f"calibrate {job.name}")

            try:
                result = calib.calibrate(runner, retention=retention, on_video=on_video)
            finally:
                runner.close()
        write_text(out, result.toml(plan.model.name))
    summary = result.summary() | {"out": str(out)}
    for warning in result.warnings():
        warn(warning)
    if json_out:
        from ..video import dumps

        sys.stdout.write(dumps(summary))
        return
    note(f"teacache coefficients for {plan.model.name}: {len(result.x)} pairs from {result.videos} videos, "
         f"mean relative fit error {summary['mean_rel_error']:.3f}; wrote {out} (use: --cache teacache "
         f"--preset {out})")

"""``vidcache farm``: ``vidcache gen`` over the workers of a Ray cluster, with a live view.

No ``from __future__ import annotations`` here: ``gen_options`` hands Typer the real annotation objects.
"""

import contextlib
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import EXIT_OK, EXIT_SOME_FAILED
from .app import app, err_console, guarded, note, warn
from .gen import GenArgs, gen_options, print_summary


class OnInterrupt(str, Enum):
    finish = "finish"
    cancel = "cancel"


@app.command()
@gen_options
def farm(
    *,
    args: GenArgs,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output folder; on several nodes, shared storage every node sees at the same path.",
    )] = Path("outputs"),
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (auto: the one started on this machine; HOST:6379). "
             "Default: $RAY_ADDRESS, else a local cluster of this machine.")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="Workers (Ray actors), each loading the model once. Default: one per GPU of the cluster "
                    "(one per --cpus-per-worker CPUs with --device cpu or no GPU).")] = None,
    gpus_per_worker: Annotated[int, typer.Option(
        min=1, help="GPUs per worker; only 1 for now (context parallelism inside a worker is refused).")] = 1,
    cpus_per_worker: Annotated[int, typer.Option(
        min=1, help="CPU cores per worker (its torch threads when it renders on CPU).")] = 1,
    retries: Annotated[int, typer.Option(
        min=0, help="Times a job is tried again after a failed attempt or its worker dying.")] = 2,
    on_interrupt: Annotated[OnInterrupt, typer.Option(
        help="On Ctrl-C or SIGTERM: let running videos finish, or cancel them (a rerun redoes those).",
    )] = OnInterrupt.finish,
) -> None:
    """Render a prompt file over many GPUs and nodes (Ray): every gen option, dynamic scheduling, retries."""
    from rich.live import Live

    from ..farm.driver import Farm, FarmOptions, check_options, import_ray
    from ..farm.view import farm_view
    from ..runner import plan_run

    debug = args.debug
    opts = FarmOptions(address=address, workers=workers, gpus_per_worker=gpus_per_worker,
                       cpus_per_worker=cpus_per_worker, retries=retries, on_interrupt=on_interrupt.value, debug=debug)
    with guarded(debug), _interruptible():
        import_ray()
        cfg = args.run_config()
        check_options(cfg, opts)
        prompts = args.prompts()
        plan = plan_run(cfg, prompts)
        # Ray prints its workers' deaths on stdout from a thread of its own: keep stdout for the summary
        with contextlib.redirect_stdout(sys.stderr), Live(console=err_console, transient=True,
                                                          refresh_per_second=4) as live:

            class LiveEvents:
                def update(self, farm):
                    live.update(farm_view(farm))

                def warn(self, message):
                    live.console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)

                def note(self, message):
                    live.console.print(message, markup=False, highlight=False)

            batch = Farm(plan, prompts, opts, LiveEvents())
            summary = batch.run()
    title = f"vidcache farm: {plan.model.name}, cache {args.cache}, {len(batch.workers)} workers"
    print_summary(summary, title, args.json_out)
    if not args.json_out and batch.workers:
        err_console.print(farm_view(batch))  # the live view's last state: who did what, how fast
    if batch.exit_signal is not None:
        note("interrupted: finished videos are kept; run again to resume")
        raise typer.Exit(batch.exit_signal)
    if summary["counts"]["failed"]:
        warn(f"{summary['counts']['failed']} video(s) failed after their retries")
    raise typer.Exit(EXIT_SOME_FAILED if summary["counts"]["failed"] else EXIT_OK)


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C before the farm has its own handlers (while Ray starts): the same line and status as gen's."""
    try:
        yield
    except KeyboardInterrupt:
        note("interrupted: finished videos are kept; run again to resume")
        raise typer.Exit(130) from None

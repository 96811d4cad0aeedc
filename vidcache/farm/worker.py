"""The farm's worker: one Ray actor that loads the model once and renders the jobs it is handed,
one at a time, through the same ``plan_run`` and ``Runner`` as ``vidcache gen``.

The class is plain Python (the driver wraps it with ``ray.remote``), so it runs and is tested
without Ray as well. What crosses the wire is JSON-like: the run's configuration, the prompts, job
indices and keys one way, summary rows and the worker's whereabouts the other. Every worker plans
the batch itself from the same prompts and checks that it arrives at the driver's job keys, so a
node with another vidcache, preset or model folder refuses instead of rendering something else.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from ..jobs import Job, Prompt
    from ..runner import RunConfig, Runner

PAUSE_DIR_ENV = "VIDCACHE_FARM_PAUSE_DIR"


# -- the wire ---------------------------------------------------------------------------------
def config_to_wire(cfg: RunConfig) -> dict[str, Any]:
    """A ``RunConfig`` as plain values."""
    wire = asdict(cfg)
    wire["out"] = str(cfg.out)
    return wire


def config_from_wire(wire: dict[str, Any]) -> RunConfig:
    from ..loading import LoadOptions
    from ..parallel import ParallelOptions
    from ..runner import RunConfig

    return RunConfig(**(wire | {"out": Path(wire["out"]), "load": LoadOptions(**wire["load"]),
                                "parallel": ParallelOptions(**wire["parallel"])}))


def prompts_to_wire(prompts: list[Prompt]) -> list[dict[str, Any]]:
    return [asdict(p) for p in prompts]


def prompts_from_wire(wire: list[dict[str, Any]]) -> list[Prompt]:
    from ..jobs import Prompt

    return [Prompt(**p) for p in wire]


def keys_digest(keys: list[str]) -> str:
    """One hash over every job key of the batch, in job order: equal plans give equal digests."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def batch_keys(runner: Runner) -> list[str]:
    context = runner.job_context()
    return [job.key(context) for job in runner.plan.jobs]


# -- the test hook ----------------------------------------------------------------------------
def pause_point(job_name: str, stage: str) -> None:
    """The fault tests' hook: with ``$VIDCACHE_FARM_PAUSE_DIR/<job>.pause`` present and naming this
    stage (``start``: before rendering; ``step``: after the first denoising step), the first worker
    to get here takes the file, writes its pid to ``<job>.pid`` and waits for ``<job>.go`` (or to be
    killed). The file is taken once, so a retry of the job runs straight through."""
    root = os.environ.get(PAUSE_DIR_ENV)
    if not root:
        return
    wanted = Path(root) / f"{job_name}.pause"
    try:
        if (wanted.read_text().strip() or "start") != stage:
            return
        os.rename(wanted, Path(root) / f"{job_name}.taken")
    except OSError:  # no such file, or another worker took it first
        return
    from ..video import write_text

    write_text(Path(root) / f"{job_name}.pid", str(os.getpid()))
    go, deadline = Path(root) / f"{job_name}.go", time.monotonic() + 600
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class _WorkerEvents:
    """What a Runner tells the worker: warnings are kept for the driver, the first step is a pause point."""

    def __init__(self):
        self.job_name = ""
        self.warnings: list[str] = []

    def video_start(self, job, position, total): ...

    def step(self, done, total):
        if done == 1:
            pause_point(self.job_name, "step")

    def video_end(self, row): ...

    def warn(self, message):
        self.warnings.append(message)


def run_job(runner: Runner, job: Job, debug: bool, dead: list[dict[str, Any]]) -> dict[str, Any]:
    """One job the way a ``vidcache gen`` batch does it (``Runner.run_job``: skipped when done, left
    to a live claimer, else claimed, rendered, published), as a summary row. ``dead``: the workers
    (pid, host) that died in this job before; their claims are taken away first, which on another
    machine would otherwise hold the job for ``VIDCACHE_CLAIM_STALE_S``."""
    from .. import outputs

    if dead:
        outputs.release_dead(runner.target(job), dead)
    return runner.run_job(job, debug)


# -- the actor --------------------------------------------------------------------------------
class FarmWorker:
    """One worker of the farm. ``start`` loads the model; ``render`` does one job; the driver calls
    them one at a time (a Ray actor runs its calls in order)."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.runner = None
        self.events = _WorkerEvents()

    def start(self) -> dict[str, Any]:
        """Plan the batch, check it is the driver's, load the model; returns where this worker runs."""
        from ..runner import Runner, plan_run

        t0 = time.perf_counter()
        spec = self.spec
        cfg = config_from_wire(spec["config"])
        if spec.get("threads") and cfg.load.device == "cpu":
            import torch

            torch.set_num_threads(int(spec["threads"]))
        marker = Path(cfg.out) / spec["marker"]
        if not marker.is_file():
            raise UsageError(f"--out {cfg.out} is not the driver's folder on {socket.gethostname()} "
                             f"(no {marker.name}): the farm needs --out on storage every node shares")
        plan = plan_run(cfg, prompts_from_wire(spec["prompts"]))
        self.runner = Runner(plan, self.events)
        if keys_digest(batch_keys(self.runner)) != spec["digest"]:
            raise UsageError(f"{socket.gethostname()} plans the batch differently from the driver (another "
                             "vidcache version, preset or model folder on this node?)")
        self.runner.load()  # here, not on the first job: a worker that cannot load is refused as a whole
        return self.where() | {"device": self.runner.device, "load_s": time.perf_counter() - t0}

    def where(self) -> dict[str, Any]:
        """pid, host, node and GPUs of this process (Ray's names when it runs as an actor)."""
        info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(), "node": None,
                                "node_id": None, "gpus": []}
        try:
            import ray

            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                info.update(node=ray.util.get_node_ip_address(), node_id=ctx.get_node_id(),
                            gpus=[str(g) for g in ray.get_gpu_ids()])
        except ImportError:
            pass
        return info

    def render(self, index: int, key: str, dead: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Render job ``index`` (skipped when its MP4 and report are already there); the summary row."""
        runner = self.runner
        job = runner.plan.jobs[index]
        if job.key(runner.job_context()) != key:
            raise UsageError(f"job {index} differs between the driver and this worker")
        self.events.job_name, self.events.warnings = job.name, []
        pause_point(job.name, "start")
        row = run_job(runner, job, bool(self.spec.get("debug")), dead or [])
        return {"row": row, "warnings": list(self.events.warnings)}

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()

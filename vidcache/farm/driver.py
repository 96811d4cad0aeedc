"""The farm's driver: one process that plans the batch, starts the workers on a Ray cluster, hands
each free worker the longest job left, retries the jobs of workers that died, and writes ``run.json``.

The workers write every MP4 and report themselves (atomically, as ``vidcache gen`` does) into
``--out``, which must be the same folder on every node; the driver only reads it to skip finished
jobs and gathers where and when each video was made. Ctrl-C or SIGTERM stops the scheduling: the
running videos finish (``--on-interrupt finish``, a second signal cancels them) or are cancelled
by killing their workers (``cancel``); either way no half file is left under a final name and a
rerun resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import UsageError, VidcacheError, one_line
from .schedule import Board, Task, WorkerStats, job_cost

if TYPE_CHECKING:
    from ..jobs import Prompt
    from ..runner import Plan, RunConfig

RAY_MISSING = "vidcache farm needs Ray, which is not installed: pip install 'vidcache[ray]'"
MULTI_GPU = ("workers of several GPUs (context parallelism inside a worker: --gpus-per-worker above 1, --ulysses, "
             "--ring, --cfg-parallel) are not supported by vidcache farm yet: run one worker per GPU "
             "(--gpus-per-worker 1), or one CP group with torchrun (docs/parallelism.md)")
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def import_ray():
    """Ray, or the one line that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


@dataclass
class FarmOptions:
    """What ``vidcache farm`` adds to ``vidcache gen``'s options."""

    address: str | None = None  # a Ray cluster to join; None: RAY_ADDRESS, else a local one
    workers: int | None = None  # None: as many as the cluster holds
    gpus_per_worker: int = 1
    cpus_per_worker: int = 1
    retries: int = 2
    on_interrupt: str = "finish"  # or "cancel"
    debug: bool = False


def check_options(cfg: RunConfig, opts: FarmOptions) -> None:
    """Refuse, before anything starts, what the farm cannot do (yet)."""
    if cfg.shard:
        raise UsageError(f"--shard {cfg.shard}: the farm hands out the whole prompt file itself (static shares are "
                         "for `vidcache gen --shard`); drop --shard")
    par = cfg.parallel
    if opts.gpus_per_worker > 1 or (par.ulysses or 1) > 1 or (par.ring or 1) > 1 or par.cfg:
        raise UsageError(MULTI_GPU)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("vidcache farm is one driver process: start it without torchrun")
    for flag, value, least in (("--workers", opts.workers, 1), ("--cpus-per-worker", opts.cpus_per_worker, 1),
                               ("--retries", opts.retries, 0)):
        if value is not None and value < least:
            raise UsageError(f"{flag} {value}: must be at least {least}")
    if opts.on_interrupt not in ("finish", "cancel"):
        raise UsageError(f"--on-interrupt {opts.on_interrupt}: expected finish or cancel")


def worker_config(cfg: RunConfig, device: str) -> RunConfig:
    """The configuration the workers plan with: paths made absolute (a worker's working folder is
    not the driver's) and the device the driver chose for them."""
    def absolute(value: str | None) -> str | None:
        return str(Path(value).resolve()) if value and Path(value).exists() else value

    load = dataclasses.replace(cfg.load, device=device)
    return dataclasses.replace(cfg, out=Path(cfg.out).resolve(), model=absolute(cfg.model),
                               preset_file=absolute(cfg.preset_file), image=absolute(cfg.image), load=load)


def worker_prompts(prompts: list[Prompt]) -> list[Prompt]:
    """The prompts as the workers plan them: a line's image by its absolute path (like --image, it
    must be on storage every node sees)."""
    def absolute(p):
        image = p.overrides.get("image")
        if image is None:
            return p
        return dataclasses.replace(p, overrides=p.overrides | {"image": str(Path(image).resolve())})

    return [absolute(p) for p in prompts]


class FarmEvents(Protocol):
    """What a front end is told while the farm runs (the CLI's live view, or nothing)."""

    def update(self, farm: Farm) -> None: ...
    def warn(self, message: str) -> None: ...
    def note(self, message: str) -> None: ...


class QuietFarmEvents:
    def update(self, farm): ...
    def warn(self, message): ...
    def note(self, message): ...


def _cause_line(err: BaseException) -> str:
    """The line to show for an error raised inside a worker: vidcache's own as is, others typed."""
    cause = getattr(err, "cause", None) or err
    return str(cause) if isinstance(cause, VidcacheError) else one_line(cause)


class Farm:
    """One batch over a Ray cluster. ``run`` returns the summary that it also writes to run.json."""

    def __init__(self, plan: Plan, prompts: list[Prompt], opts: FarmOptions, events: FarmEvents | None = None):
        from ..runner import Runner

        self.plan, self.prompts, self.opts = plan, prompts, opts
        self.events = events or QuietFarmEvents()
        self.runner = Runner(plan)  # never loaded here: job keys, resume checks, the summary
        context = self.runner.job_context()
        self.board = Board([Task(j, j.key(context), job_cost(j)) for j in plan.jobs], opts.retries)
        self.workers: list[WorkerStats] = []
        self.handles: dict[str, Any] = {}
        self.pending: dict[Any, tuple[str, WorkerStats, Task | None]] = {}
        self.stop_signal: int | None = None
        self.cancelling = False
        self._told: bool | None = None  # the interrupt mode the user was last told of
        self.device: str | None = None
        self.address: str | None = None
        self.remote: Any = None  # the worker's Ray actor class, with its resources
        self.spec: dict[str, Any] = {}  # what every worker is started with (vidcache.farm.worker)
        self.t0, self.started = time.monotonic(), datetime.now(timezone.utc)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Skip what is finished in --out (no Ray at all when that is everything), farm out the rest."""
        from .. import outputs
        from ..report import video_row

        out = Path(self.plan.config.out)
        outputs.check_out(out)
        outputs.sweep(out)  # what gone processes left: their temp files and stale claims
        for task in self.board.tasks:
            done = self.runner.finished(task.job)
            if done is not None:
                self.board.finish(task, video_row(done) | {"status": "skipped"}, 0.0, {})
        if not self.board.settled():
            self._on_cluster(import_ray(), out)
        return self._summary()

    def _on_cluster(self, ray, out: Path) -> None:
        started = self._connect(ray)
        marker = out / f".vidcache-farm-{uuid.uuid4().hex[:12]}"
        try:
            self._run_workers(ray, marker)
        finally:
            for handle in self.handles.values():
                with contextlib.suppress(Exception):
                    ray.kill(handle)
            marker.unlink(missing_ok=True)
            if started:
                ray.shutdown()

    def _run_workers(self, ray, marker: Path) -> None:
        """Start the workers and hand out the jobs until every one is settled or the run is stopped."""
        from ..video import write_text
        from .worker import FarmWorker, batch_keys, config_to_wire, keys_digest, prompts_to_wire

        with self._signals():  # after ray.init, whose own SIGTERM handler would end the process
            count, resources = self._size(ray)
            write_text(marker, marker.name)  # each worker checks it sees this file: --out is shared
            self.spec = {"config": config_to_wire(worker_config(self.plan.config, self.device)),
                         "prompts": prompts_to_wire(worker_prompts(self.prompts)),
                         "digest": keys_digest(batch_keys(self.runner)), "marker": marker.name,
                         "threads": self.opts.cpus_per_worker, "debug": self.opts.debug}
            # Ray never restarts or retries on its own: the driver decides (another worker, a fresh actor)
            self.remote = ray.remote(FarmWorker).options(max_restarts=0, max_task_retries=0, **resources)
            for i in range(count):
                slot = WorkerStats(f"w{i}", f"w{i}")
                self.workers.append(slot)
                self._launch(slot)
            self._loop(ray)

    def _connect(self, ray) -> bool:
        """Join the cluster (``--address``, else RAY_ADDRESS, else start one here); True when this
        call connected (and so disconnects at the end)."""
        import logging

        if ray.is_initialized():
            self.address = ray.get_runtime_context().gcs_address
            return False
        level = logging.INFO if self.opts.debug else logging.ERROR
        address = self.opts.address or os.environ.get("RAY_ADDRESS")
        try:
            if address:
                ray.init(address=address, log_to_driver=self.opts.debug, logging_level=level)
            else:  # "local": a new cluster here, never one a stale /tmp/ray file points at
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(address="local", include_dashboard=False, log_to_driver=self.opts.debug,
                         logging_level=level)
        except Exception as err:  # noqa: BLE001 - Ray says why in many types
            where = f"--address {address}" if address else "a local Ray cluster"
            raise UsageError(f"{where}: cannot connect ({one_line(err)})") from None
        self.address = ray.get_runtime_context().gcs_address
        return True

    def _size(self, ray) -> tuple[int, dict[str, float]]:
        """How many workers, with which Ray resources each; the device they render on."""
        total = ray.cluster_resources()
        gpus, cpus = total.get("GPU", 0.0), total.get("CPU", 0.0)
        per_gpu, per_cpu = self.opts.gpus_per_worker, self.opts.cpus_per_worker
        device = self.plan.config.load.device
        if device == "auto":
            device = "cuda" if gpus >= per_gpu else "cpu"
        if device == "cuda" and gpus < per_gpu:
            raise UsageError(f"--device cuda: the Ray cluster has {gpus:g} GPUs, a worker needs {per_gpu}")
        if cpus < per_cpu:
            raise UsageError(f"--cpus-per-worker {per_cpu}: the Ray cluster has {cpus:g} CPUs")
        self.device = device
        fits = int(gpus // per_gpu) if device == "cuda" else int(cpus // per_cpu)
        todo = sum(t.status == "queued" for t in self.board.tasks)
        count = min(self.opts.workers or fits, todo)
        if count > fits:
            self.events.warn(f"{count} workers asked for, the cluster holds {fits} now: the others start "
                             "when it has room")
        return count, {"num_cpus": per_cpu, "num_gpus": per_gpu if device == "cuda" else 0}

    def _launch(self, slot: WorkerStats) -> None:
        handle = self.remote.remote(self.spec)
        self.handles[slot.name] = handle
        slot.state, slot.task, slot.info = "starting", None, {}
        self.pending[handle.start.remote()] = ("start", slot, None)

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self, ray) -> None:
        while not self.board.settled():
            if self.stop_signal is not None:
                self._stop(ray)
            else:
                self._dispatch()
            if not self.pending:
                if self.stop_signal is None:
                    self._no_worker_left()
                break
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=0.25)
            for ref in ready:
                self._settle(ray, ref)
            self.events.update(self)
        for task in self.board.tasks:
            if task.status == "queued":
                self.board.cancel(task)
        self.events.update(self)

    def _dispatch(self) -> None:
        live = {s.incarnation for s in self.workers if s.state in ("idle", "busy")}
        for slot in self.workers:
            if slot.state != "idle":
                continue
            task = self.board.next_for(slot.incarnation, live)
            if task is None:
                continue
            self.board.start(task, slot.incarnation, self.now())
            slot.state, slot.task = "busy", task
            ref = self.handles[slot.name].render.remote(task.job.index, task.key, task.dead)
            self.pending[ref] = ("render", slot, task)

    def _settle(self, ray, ref) -> None:
        kind, slot, task = self.pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # raised inside a live worker
            if kind == "start":
                self._retire(ray, slot, "failed", _cause_line(err))
            else:
                self._free(slot)
                self._attempt_failed(slot, task, _cause_line(err))
            return
        except ray.exceptions.RayError as err:  # the worker's process or node is gone
            self._died(ray, slot, task, err)
            return
        if kind == "start":
            slot.state, slot.info = "idle", result
            slot.ready_s = self.now() if slot.ready_s is None else slot.ready_s
            return
        for message in result["warnings"]:
            self.events.warn(message)
        row = result["row"]
        self._free(slot)
        if row["status"] == "failed":
            self._attempt_failed(slot, task, row["error"])
            return
        slot.deaths_in_row = 0
        slot.videos += row["status"] == "done"
        self.board.finish(task, row, self.now(), self._where(slot))

    def _free(self, slot: WorkerStats) -> None:
        if slot.task is not None and slot.task.start_s is not None:
            slot.busy_s += self.now() - slot.task.start_s
        slot.state, slot.task = "idle", None

    def _where(self, slot: WorkerStats) -> dict[str, Any]:
        info = slot.info
        return {"worker": slot.incarnation, "node": info.get("node"), "host": info.get("host"),
                "gpus": info.get("gpus", []), "pid": info.get("pid")}

    def _attempt_failed(self, slot: WorkerStats, task: Task, error: str) -> None:
        again = self.board.attempt_failed(task, error, slot.incarnation, self.now())
        if not again:
            task.where = self._where(slot)
        tries = f"attempt {task.attempts} of {self.opts.retries + 1}"
        self.events.warn(f"{task.job.name}: {error} ({tries}{', retrying' if again else ', giving up'})")

    def _died(self, ray, slot: WorkerStats, task: Task | None, err: BaseException) -> None:
        """A worker's process is gone: its job is retried elsewhere, the worker restarted (a fresh
        actor, which loads the model again) up to --retries times in a row without a video done."""
        pid, node = slot.info.get("pid", "?"), slot.info.get("node") or slot.info.get("host") or "?"
        error = f"worker {slot.incarnation} (pid {pid} on {node}) died: {str(err).strip().splitlines()[0]}"
        if task is not None:
            task.dead.append({"pid": slot.info.get("pid"), "host": slot.info.get("host")})
            self._free(slot)
            self._attempt_failed(slot, task, error)
        slot.deaths_in_row += 1
        if self.stop_signal is None and self.board.queued() and slot.deaths_in_row <= self.opts.retries:
            with contextlib.suppress(Exception):
                ray.kill(self.handles[slot.name])
            slot.restarts += 1
            slot.incarnation = f"{slot.name}.{slot.restarts}"
            self._launch(slot)
        else:
            self._retire(ray, slot, "dead", error)

    def _retire(self, ray, slot: WorkerStats, state: str, error: str) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self.handles[slot.name])
        slot.state, slot.error, slot.task = state, error, None
        if state == "failed":
            self.events.warn(f"worker {slot.incarnation} could not start: {error}")

    def _no_worker_left(self) -> None:
        """Every worker is gone with work queued: when none ever started (the same refusal on each,
        say --out not shared), that is the run's one line (exit 2); else the queued jobs fail."""
        errors = [s.error for s in self.workers if s.error]
        if all(s.state == "failed" for s in self.workers) and errors:
            raise UsageError(errors[-1])
        self.board.fail_queued(f"no worker left to run it ({errors[-1] if errors else 'every worker is gone'})")

    # -- interrupt ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals(self):
        """SIGINT and SIGTERM stop the scheduling (a second one cancels the running videos)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum, frame):
            if self.stop_signal is None:
                self.stop_signal = signum
            else:
                self.cancelling = True

        old = {s: signal.signal(s, on_signal) for s in EXIT_SIGNAL}
        try:
            yield
        finally:
            for s, handler in old.items():  # None: a handler set outside Python (Ray's), not restorable
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def _stop(self, ray) -> None:
        """No more jobs start; starting workers are stopped, and running ones too when cancelling."""
        cancel = self.cancelling or self.opts.on_interrupt == "cancel"
        if self._told != cancel:
            self._told = cancel
            running = len(self.board.running())
            self.events.note(f"interrupted: {'cancelling' if cancel else 'finishing'} {running} running video(s), "
                             "starting no more" + ("" if cancel else "; interrupt again to cancel them"))
        for ref, (kind, slot, task) in list(self.pending.items()):
            if kind == "start" or cancel:
                del self.pending[ref]
                self._retire(ray, slot, "stopped", "interrupted")
                if task is not None:
                    self.board.cancel(task)

    @property
    def exit_signal(self) -> int | None:
        """The exit status the run's interrupt asks for (130 SIGINT, 143 SIGTERM); None: not interrupted."""
        return EXIT_SIGNAL.get(self.stop_signal) if self.stop_signal is not None else None

    # -- the summary -------------------------------------------------------------------------
    def _summary(self) -> dict[str, Any]:
        rows = []
        for t in self.board.tasks:
            row = dict(t.row or {"name": t.job.name, "status": t.status, "error": None})
            rows.append(row | {"attempts": t.attempts, "errors": t.errors, **(t.where or {"worker": None}),
                               "start_s": t.start_s, "end_s": t.end_s})
        now = self.now()
        workers = [{"name": s.name, "restarts": s.restarts, "state": s.state, "videos": s.videos,
                    "busy_s": s.busy_s, "videos_per_min": s.throughput(now), "error": s.error, **s.info}
                   for s in self.workers]
        farm = {"address": self.address, "device": self.device, "retries": self.opts.retries,
                "order": "longest first (frames x height x width x steps)", "workers": workers,
                "interrupted": signal.Signals(self.stop_signal).name if self.stop_signal is not None else None}
        status = "interrupted" if self.stop_signal is not None else "finished"
        return self.runner.summary(rows, now, status, self.started, farm=farm)

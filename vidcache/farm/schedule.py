"""The farm's bookkeeping, without Ray: which job goes next, what each job and worker went through,
and when the batch should end.

Jobs go longest first (frames x height x width x steps) to whichever worker frees up: the big videos
start while every worker is free and the small ones fill the gaps at the end, so the makespan
follows the total work instead of the unluckiest static share (list scheduling in this order ends
within 4/3 of the best possible makespan on identical workers, Graham 1969).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..jobs import Job

FINAL = ("done", "skipped", "claimed", "failed", "interrupted")  # the statuses of vidcache.report


def job_cost(job: Job) -> int:
    """The work of one video in pixel-steps: what the longest-first order sorts by."""
    return job.frames * job.height * job.width * job.steps


@dataclass
class Task:
    """One job of the batch and its history on the farm."""

    job: Job
    key: str
    cost: int
    status: str = "queued"  # queued, running, then one of FINAL
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    avoid: set[str] = field(default_factory=set)  # worker incarnations it failed on
    dead: list[dict[str, Any]] = field(default_factory=list)  # pid and host of workers that died in it
    worker: str | None = None  # the incarnation running it, or that finished it
    start_s: float | None = None  # seconds since the farm started, of the last attempt
    end_s: float | None = None
    row: dict[str, Any] | None = None  # the summary row (vidcache.report.video_row) once final
    where: dict[str, Any] = field(default_factory=dict)  # node, GPU, pid of the worker that finished it


@dataclass
class WorkerStats:
    """One worker slot: its current Ray actor (an incarnation) and what it did over the run."""

    name: str  # w0, w1, ...
    incarnation: str  # w0, then w0.1, w0.2 after restarts
    state: str = "starting"  # starting, idle, busy, dead (no restart left), failed (could not start)
    info: dict[str, Any] = field(default_factory=dict)  # pid, node, host, gpus, device, load_s
    task: Task | None = None
    videos: int = 0
    busy_s: float = 0.0
    ready_s: float | None = None  # when its first incarnation finished loading
    restarts: int = 0
    deaths_in_row: int = 0
    error: str | None = None

    @property
    def live(self) -> bool:
        return self.state in ("starting", "idle", "busy")

    def throughput(self, now_s: float) -> float | None:
        """Videos per minute since it was ready; None before it finished one."""
        if not self.videos or self.ready_s is None or now_s <= self.ready_s:
            return None
        return self.videos * 60.0 / (now_s - self.ready_s)


class Board:
    """The queue (longest first), the attempts, and the counts the live view shows."""

    def __init__(self, tasks: list[Task], retries: int):
        self.tasks = tasks
        self.retries = retries
        self.order = sorted(tasks, key=lambda t: (-t.cost, t.job.index))

    # -- what runs next ----------------------------------------------------------------------
    def next_for(self, incarnation: str, live: set[str]) -> Task | None:
        """The longest queued job this worker may take: not one that already failed on this very
        incarnation, unless every live worker has failed it (then any may try again)."""
        for task in self.order:
            if task.status == "queued" and (incarnation not in task.avoid or live <= task.avoid):
                return task
        return None

    def start(self, task: Task, incarnation: str, now_s: float) -> None:
        task.status, task.worker, task.start_s, task.end_s = "running", incarnation, now_s, None
        task.attempts += 1

    def finish(self, task: Task, row: dict[str, Any], now_s: float, where: dict[str, Any]) -> None:
        task.status, task.row, task.end_s, task.where = row["status"], row, now_s, where

    def attempt_failed(self, task: Task, error: str, incarnation: str, now_s: float) -> bool:
        """Record a failed attempt; True when the job goes back in the queue for another try."""
        task.errors.append(error)
        task.avoid.add(incarnation)
        task.end_s = now_s
        if task.attempts <= self.retries:
            task.status = "queued"
            return True
        task.status = "failed"
        task.row = {"name": task.job.name, "status": "failed", "error": error}
        return False

    def fail_queued(self, error: str) -> None:
        """No worker is left to run what is queued: those jobs fail with the reason."""
        for task in self.tasks:
            if task.status == "queued":
                task.errors.append(error)
                task.status = "failed"
                task.row = {"name": task.job.name, "status": "failed", "error": error}

    def cancel(self, task: Task) -> None:
        """An interrupted run: the job was never finished (a rerun renders it)."""
        task.status = "interrupted"
        task.row = {"name": task.job.name, "status": "interrupted", "error": None}

    # -- state -------------------------------------------------------------------------------
    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.tasks)

    def queued(self) -> bool:
        return any(t.status == "queued" for t in self.tasks)

    def running(self) -> list[Task]:
        return [t for t in self.tasks if t.status == "running"]

    def settled(self) -> bool:
        return all(t.status in FINAL for t in self.tasks)

    def eta_s(self, now_s: float, live_workers: int) -> float | None:
        """Seconds until the batch ends, from the render seconds per pixel-step seen so far; None
        before the first video is done or when no worker is left."""
        done = [t for t in self.tasks if t.status == "done" and t.row and t.row.get("seconds")]
        if not done or live_workers < 1:
            return None
        per_cost = sum(t.row["seconds"] for t in done) / sum(t.cost for t in done)
        left = sum(t.cost * per_cost for t in self.tasks if t.status == "queued")
        left += sum(max(t.cost * per_cost - (now_s - (t.start_s or now_s)), 0.0) for t in self.running())
        return left / live_workers

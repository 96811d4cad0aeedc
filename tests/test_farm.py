"""`vidcache farm` on a real local Ray cluster (one for the module) with the embedded tiny model:
every job once, longest first; a worker killed mid-job; a job failing on every attempt; Ctrl-C and
SIGTERM; resume; reports equal to gen's."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray
from typer.testing import CliRunner

from vidcache.cli import app
from vidcache.farm.schedule import Board, Task, WorkerStats, job_cost
from vidcache.farm.worker import PAUSE_DIR_ENV
from vidcache.video import read_mp4

# the frames as a default, not a flag: a flag would win over the prompt files' own lengths
SMALL = ["--set", "defaults.frames=5", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu"]


@dataclass
class Cluster:
    address: str
    pause: Path  # the workers' VIDCACHE_FARM_PAUSE_DIR


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray cluster of 2 CPUs for the module; its workers see the pause folder."""
    pause = tmp_path_factory.mktemp("pause")
    saved = {k: os.environ.get(k) for k in (PAUSE_DIR_ENV, "RAY_USAGE_STATS_ENABLED")}
    os.environ[PAUSE_DIR_ENV] = str(pause)  # before ray.init: the workers inherit the raylet's environment
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    try:
        yield Cluster(ray.get_runtime_context().gcs_address, pause)
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def farm(*args):
    return CliRunner().invoke(app, ["farm", *map(str, args)])


def batch(path: Path, frames: dict[str, int]) -> Path:
    """A prompt file of named jobs of different lengths (the uneven batch a farm is for)."""
    lines = [json.dumps({"prompt": f"a red ball moving left {i}", "name": name, "frames": f})
             for i, (name, f) in enumerate(frames.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def outputs(out: Path) -> list[Path]:
    """The videos and reports in ``out`` (not run.json, runs/, claims or temp files)."""
    return sorted(p for p in out.iterdir() if p.suffix in (".mp4", ".json") and p.name != "run.json"
                  and not p.name.startswith("."))


def videos(summary: dict) -> dict[str, dict]:
    return {v["name"]: v for v in summary["videos"]}


def when_paused(cluster: Cluster, job: str, then, timeout: float = 180.0) -> threading.Thread:
    """In the background: wait until a worker pauses in ``job`` (its pid file), then ``then(pid)``."""
    pid_file = cluster.pause / f"{job}.pid"

    def watch():
        deadline = time.monotonic() + timeout
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_file.exists():
            then(int(pid_file.read_text()))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def pause(cluster: Cluster, job: str, stage: str) -> None:
    (cluster.pause / f"{job}.pause").write_text(stage)


def test_every_job_once_longest_first_reports_equal_gen_and_rerun_renders_nothing(cluster, tmp_path):
    prompts = batch(tmp_path / "p.jsonl", {"a": 5, "b": 13, "c": 9, "d": 5})
    out, ref = tmp_path / "farm", tmp_path / "gen"
    cache = ["--cache", "teacache", "--set", "thresh=0.6", "--steps", "6"]
    r = farm(prompts, "--out", out, *SMALL, *cache, "--workers", 2, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["counts"] == {"done": 4, "skipped": 0, "claimed": 0, "failed": 0, "interrupted": 0}
    rows = videos(summary)
    assert all(v["attempts"] == 1 and v["worker"] in ("w0", "w1") and v["pid"] for v in rows.values())
    assert [v["name"] for v in sorted(rows.values(), key=lambda v: v["start_s"])] == ["b", "c", "a", "d"]
    assert json.loads((out / "run.json").read_text())["videos"] == summary["videos"]
    assert {w["name"] for w in summary["farm"]["workers"]} == {"w0", "w1"}

    g = CliRunner().invoke(app, ["gen", str(prompts), "--out", str(ref), *SMALL, *cache])
    assert g.exit_code == 0, g.output
    for name in rows:
        mine, theirs = (json.loads((d / f"{name}.json").read_text()) for d in (out, ref))
        assert mine["job_key"] == theirs["job_key"] and mine["frames"] == theirs["frames"]
        assert mine["cache"]["stats"] == theirs["cache"]["stats"]
        assert np.array_equal(read_mp4(out / f"{name}.mp4"), read_mp4(ref / f"{name}.mp4"))
    assert any(json.loads((out / f"{n}.json").read_text())["cache"]["stats"]["compute_ratio"] < 1 for n in rows)

    stamps = {p.name: p.stat().st_mtime_ns for p in outputs(out)}
    r = farm(prompts, "--out", out, *SMALL, *cache, "--workers", 2, "--json")
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert again["counts"]["skipped"] == 4 and again["counts"]["done"] == 0 and again["farm"]["workers"] == []
    assert {p.name: p.stat().st_mtime_ns for p in outputs(out)} == stamps


def test_worker_killed_mid_job_is_retried_and_nothing_else_redone(cluster, tmp_path):
    prompts = batch(tmp_path / "p.jsonl", {"k1": 9, "k2": 13, "k3": 5})
    out = tmp_path / "out"
    pause(cluster, "k2", "step")  # the longest job: its worker stops after the first denoising step
    killed = []
    when_paused(cluster, "k2", lambda pid: (killed.append(pid), os.kill(pid, signal.SIGKILL)))
    r = farm(prompts, "--out", out, *SMALL, "--workers", 2, "--json")
    assert r.exit_code == 0, r.output
    assert killed, "the worker never reached the pause point"
    rows = videos(json.loads(r.stdout))
    assert rows["k2"]["status"] == "done" and rows["k2"]["attempts"] == 2
    assert f"(pid {killed[0]} on" in rows["k2"]["errors"][0] and "died" in rows["k2"]["errors"][0]
    assert rows["k2"]["pid"] != killed[0]
    assert [rows[n]["attempts"] for n in ("k1", "k3")] == [1, 1]
    assert read_mp4(out / "k2.mp4").shape == (13, 32, 32, 3)
    assert [p.name for p in outputs(out)] == ["k1.json", "k1.mp4", "k2.json", "k2.mp4", "k3.json", "k3.mp4"]
    assert not list((out / ".claims").iterdir())  # the killed worker's claim was taken over, then released
    workers = json.loads(r.stdout)["farm"]["workers"]
    assert sum(w["restarts"] for w in workers) == 1  # the killed worker was replaced by a fresh actor


def test_job_failing_every_attempt_exit_1_others_written(cluster, tmp_path):
    prompts = batch(tmp_path / "p.jsonl", {"f1": 5, "f2": 9, "f3": 5})
    out = tmp_path / "out"
    (out / "f2.mp4").mkdir(parents=True)  # its MP4 can never be written: every attempt fails
    r = farm(prompts, "--out", out, *SMALL, "--workers", 2, "--retries", 1, "--json")
    assert r.exit_code == 1, r.output
    rows = videos(json.loads(r.stdout))
    assert rows["f2"]["status"] == "failed" and rows["f2"]["attempts"] == 2 and len(rows["f2"]["errors"]) == 2
    assert "directory" in rows["f2"]["error"].lower()
    assert [rows[n]["status"] for n in ("f1", "f3")] == ["done", "done"]
    assert (out / "f1.mp4").is_file() and (out / "f3.mp4").is_file() and not (out / "f2.json").exists()
    assert "giving up" in r.stderr and "Traceback" not in r.output


def test_interrupt_finishes_or_cancels_and_the_rerun_resumes(cluster, tmp_path):
    prompts = batch(tmp_path / "p.jsonl", {"i1": 13, "i2": 9, "i3": 5})
    out = tmp_path / "out"
    args = [prompts, "--out", out, *SMALL, "--workers", 1]

    # Ctrl-C while the longest video renders: it finishes, nothing else starts (exit 130)
    pause(cluster, "i1", "step")

    def interrupt(pid):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        (cluster.pause / "i1.go").write_text("")

    when_paused(cluster, "i1", interrupt)
    r = farm(*args, "--json")
    assert r.exit_code == 130, r.output
    summary = json.loads(r.stdout)
    assert summary["farm"]["interrupted"] == "SIGINT"
    assert [videos(summary)[n]["status"] for n in ("i1", "i2", "i3")] == ["done", "interrupted", "interrupted"]
    assert summary["status"] == "interrupted" and summary["counts"]["interrupted"] == 2
    assert [p.name for p in outputs(out)] == ["i1.json", "i1.mp4"]
    assert "run again to resume" in r.stderr

    # the rerun resumes (i1 is skipped); SIGTERM (what Slurm sends) to this driver, joined by --address
    # with --on-interrupt cancel, stops the running video with its worker: no file of it is left (exit 143)
    pause(cluster, "i2", "step")
    proc = subprocess.Popen([sys.executable, "-m", "vidcache", "farm", *map(str, args), "--address", cluster.address,
                             "--on-interrupt", "cancel", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    paused = []
    when_paused(cluster, "i2", lambda pid: (paused.append(pid), proc.send_signal(signal.SIGTERM))).join()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    summary = json.loads(stdout)
    assert summary["farm"]["interrupted"] == "SIGTERM" and summary["farm"]["address"] == cluster.address
    assert [videos(summary)[n]["status"] for n in ("i1", "i2", "i3")] == ["skipped", "interrupted", "interrupted"]
    assert [p.name for p in outputs(out)] == ["i1.json", "i1.mp4"]
    deadline = time.monotonic() + 30
    while _alive(paused[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(paused[0]), "the cancelled video's worker is still running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_gen_never_imports_ray(tmp_path):
    code = ("import sys; from typer.testing import CliRunner; from vidcache.cli import app; "
            f"r = CliRunner().invoke(app, ['gen', '-p', 'a red ball', '--out', {str(tmp_path)!r}, *{SMALL!r}]); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'vidcache.farm'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert len(list(tmp_path.glob("a-red-ball-0-*.mp4"))) == 1


def test_without_ray_one_line_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does when it is not installed
    r = farm("-p", "a red ball", "--out", tmp_path / "out", *SMALL)
    assert r.exit_code == 2
    assert r.output.strip() == "error: vidcache farm needs Ray, which is not installed: pip install 'vidcache[ray]'"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--shard", "0/2"], "--shard 0/2: the farm hands out the whole prompt file itself"),
    (["--gpus-per-worker", "2"], "workers of several GPUs (context parallelism inside a worker"),
    (["--ulysses", "2"], "not supported by vidcache farm yet"),
    (["--cfg-parallel"], "run one worker per GPU (--gpus-per-worker 1)"),
    (["--frames", "6"], "6 frames not allowed"),
    (["--on-interrupt", "later"], "'later' is not one of"),
    (["--retries", "-1"], "Invalid value for '--retries'"),
])
def test_refusals_one_line_exit_2_before_anything_starts(tmp_path, monkeypatch, args, message):
    import vidcache.farm.driver as driver

    def no_cluster(*a, **k):
        raise AssertionError("the farm started")

    monkeypatch.setattr(driver.Farm, "run", no_cluster)
    r = farm("-p", "a red ball", "--out", tmp_path / "out", *SMALL, *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def _spec(tmp_path, **change):
    from vidcache.farm.worker import config_to_wire, prompts_to_wire
    from vidcache.jobs import Prompt
    from vidcache.runner import RunConfig

    (tmp_path / ".marker").write_text("x")
    cfg = RunConfig(out=tmp_path, flags={"frames": 5, "height": 32, "width": 32, "steps": 2})
    return {"config": config_to_wire(cfg), "prompts": prompts_to_wire([Prompt("a red ball", {}, "-p")]),
            "digest": "0", "marker": ".marker", "threads": 1} | change


def test_worker_refuses_an_out_it_does_not_share_or_another_plan(tmp_path):
    from vidcache.errors import UsageError
    from vidcache.farm.worker import FarmWorker

    with pytest.raises(UsageError, match="needs --out on storage every node shares"):
        FarmWorker(_spec(tmp_path, marker=".vidcache-farm-other")).start()
    with pytest.raises(UsageError, match="plans the batch differently from the driver"):
        FarmWorker(_spec(tmp_path)).start()


def _tasks(frames: list[int]) -> list[Task]:
    from vidcache.jobs import Job

    jobs = [Job(i, f"j{i}", "p", "", 0, frames, 16, 16, 1, 5.0, None, None, 8, 16) for i, frames in enumerate(frames)]
    return [Task(job, f"k{job.index}", job_cost(job)) for job in jobs]


def test_board_longest_first_retries_elsewhere_and_gives_up():
    board = Board(_tasks([5, 13, 9, 13]), retries=1)
    assert board.next_for("w0", {"w0"}).job.name == "j1"  # the longest; of equals, the first
    first = board.next_for("w0", {"w0", "w1"})
    board.start(first, "w0", 0.0)
    assert board.next_for("w1", {"w0", "w1"}).job.name == "j3"
    assert board.attempt_failed(first, "boom", "w0", 1.0) is True  # queued again...
    assert board.next_for("w0", {"w0", "w1"}).job.name == "j3"  # ...but not for the worker it failed on
    assert board.next_for("w1", {"w0", "w1"}) is first
    assert board.next_for("w0", {"w0"}) is first  # unless no other worker is left
    board.start(first, "w1", 2.0)
    assert board.attempt_failed(first, "boom again", "w1", 3.0) is False
    assert first.status == "failed" and first.row["error"] == "boom again" and first.errors == ["boom", "boom again"]


def test_board_eta_from_seconds_per_pixel_step():
    board = Board(_tasks([5, 5, 10]), retries=0)
    a, b, c = board.tasks
    assert board.eta_s(0.0, 2) is None
    board.start(a, "w0", 0.0)
    board.finish(a, {"name": "j0", "status": "done", "seconds": 2.0}, 2.0, {})
    board.start(b, "w0", 2.0)
    # 2 s per 5-frame job: b has 1 s left at t=3, c (10 frames) 4 s; over 2 workers
    assert board.eta_s(3.0, 2) == pytest.approx((1.0 + 4.0) / 2)
    assert board.eta_s(3.0, 0) is None


def test_live_view_shows_counts_workers_and_eta():
    from rich.console import Console

    from vidcache.farm.view import duration, farm_view

    class FakeFarm:
        board = Board(_tasks([5, 9]), retries=0)
        workers = [WorkerStats("w0", "w0.1", state="busy", info={"node": "10.0.0.7", "gpus": ["3"]}, videos=1,
                               ready_s=0.0, restarts=1)]

        def now(self):
            return 90.0

    farm_ = FakeFarm()
    done, running = farm_.board.tasks
    farm_.board.start(done, "w0.1", 0.0)
    farm_.board.finish(done, {"name": "j0", "status": "done", "seconds": 30.0}, 30.0, {})
    farm_.board.start(running, "w0.1", 60.0)
    farm_.workers[0].task = running
    console = Console(record=True, width=160)
    console.print(farm_view(farm_))
    text = console.export_text()
    assert "1/2 done" in text and "1 running" in text and "0 queued" in text and "ETA 24s" in text
    assert "w0.1" in text and "10.0.0.7" in text and "j1 (30s)" in text and "0.7" in text  # videos/min
    assert duration(3725) == "1h02m" and duration(65) == "1m05s" and duration(None) == "-"


def test_a_dead_workers_claim_from_another_machine_is_taken_over_at_once(tmp_path):
    """A worker Ray saw die on another node leaves a fresh claim that looks alive for
    VIDCACHE_CLAIM_STALE_S; the retry, told its pid and host, takes it over (only that one)."""
    from vidcache import outputs

    target = outputs.Target(tmp_path, "job", "k")
    target.claim_path.parent.mkdir()
    target.claim_path.write_text(json.dumps({"pid": 4242, "host": "node-7", "token": "t"}) + "\n")
    assert outputs.claim(target) is None  # alive as far as this machine can tell
    assert outputs.release_dead(target, [{"pid": 4242, "host": "node-8"}]) is False
    assert outputs.release_dead(target, [{"pid": 4242, "host": "node-7"}]) is True
    claim = outputs.claim(target)
    assert claim is not None
    claim.release()

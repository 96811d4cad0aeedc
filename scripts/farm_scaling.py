"""Makespan of one uneven batch three ways, on this machine: `vidcache farm` with 1 and with 2 workers,
and static shares (two `vidcache gen --shard i/2` side by side, what a Slurm array does). Prints the
markdown rows of docs/farm.md's scaling table.

    python scripts/farm_scaling.py --work /tmp/farm-scaling            # both batches, 2 repeats
    python scripts/farm_scaling.py --work /tmp/fs --batch alternating --repeat 1

Every run starts from an empty output folder and uses one torch thread per worker or process, so the
farm's two workers and the two shards have the same two cores. The wall time of a command counts
everything a user waits for (Ray's start, each worker's model load); the render span is first video
start to last video end, from the run's own reports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

FRAMES = (5, 9, 17, 25, 33)


def batch(kind: str, jobs: int, long: int, short: int) -> list[dict]:
    """``alternating``: long and short videos in turn (index % 2 puts every long one on shard 0);
    ``random``: lengths drawn from FRAMES with a fixed seed."""
    if kind == "alternating":
        frames = [long if i % 2 == 0 else short for i in range(jobs)]
    else:
        rng = random.Random(7)
        frames = [rng.choice(FRAMES) for _ in range(jobs)]
    return [{"prompt": "a red ball moving left", "seed": i, "frames": f, "name": f"{i:02d}-f{f}"}
            for i, f in enumerate(frames)]


def run(cmds: list[list[str]]) -> float:
    """Start the commands together; seconds until the last one ends (each must exit 0)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    t0 = time.monotonic()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    try:
        for p, c in zip(procs, cmds):
            _, err = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"{' '.join(c)} exited {p.returncode}: {err.strip().splitlines()[-1:]}")
    finally:  # interrupted: stop the commands still running (the farm's driver stops its workers)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
    return time.monotonic() - t0


def farm_span(out: Path) -> tuple[float, float, float, float]:
    """Render span, mean model load, the largest gap a worker waited between two of its jobs (the
    driver's per-job overhead: result back, next job out) and the busiest worker's share of the
    render seconds, of a farm run, from its run.json."""
    run_json = json.loads((out / "run.json").read_text())
    rows = [v for v in run_json["videos"] if v["status"] == "done"]
    loads = [w["load_s"] for w in run_json["farm"]["workers"] if w.get("load_s")]
    gaps, work = [0.0], {}
    for worker in {v["worker"] for v in rows}:
        mine = sorted((v for v in rows if v["worker"] == worker), key=lambda v: v["start_s"])
        gaps += [b["start_s"] - a["end_s"] for a, b in zip(mine, mine[1:])]
        work[worker] = sum(v["seconds"] for v in mine)
    span = max(v["end_s"] for v in rows) - min(v["start_s"] for v in rows)
    return span, sum(loads) / len(loads), max(gaps), max(work.values()) / sum(work.values())


def gen_share(outs: list[Path]) -> float:
    """The busiest shard's share of the render seconds of side-by-side gen runs."""
    work = [sum(json.loads(r.read_text())["timing"]["total_s"] for r in out.glob("*.json") if r.name != "run.json")
            for out in outs]
    return max(work) / sum(work)


def gen_span(outs: list[Path]) -> float:
    """Render span of side-by-side gen runs: from their reports' times (each report's file mtime is
    its end; its total_s back from there its start)."""
    starts, ends = [], []
    for out in outs:
        for rep in out.glob("*.json"):
            if rep.name == "run.json":
                continue
            end = rep.stat().st_mtime
            starts.append(end - json.loads(rep.read_text())["timing"]["total_s"])
            ends.append(end)
    return max(ends) - min(starts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (emptied per run)")
    ap.add_argument("--batch", choices=("alternating", "random", "both"), default="both")
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--long", type=int, default=33, help="frames of a long video (alternating)")
    ap.add_argument("--short", type=int, default=5, help="frames of a short video (alternating)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    vc = [sys.executable, "-m", "vidcache"]
    common = ["--height", str(args.size), "--width", str(args.size), "--steps", str(args.steps), "--device", "cpu"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; load before: {os.getloadavg()[0]:.2f}")
    print("| batch | run | wall s | render span s | busiest share of the work | model load s | "
          "max gap between jobs s | load avg after |")
    print("|---|---|---|---|---|---|---|---|")
    kinds = ("alternating", "random") if args.batch == "both" else (args.batch,)
    for kind in kinds:
        prompts = args.work / f"{kind}.jsonl"
        args.work.mkdir(parents=True, exist_ok=True)
        prompts.write_text("".join(json.dumps(j) + "\n" for j in batch(kind, args.jobs, args.long, args.short)))
        for _ in range(args.repeat):
            for label, workers in (("farm, 1 worker", 1), ("farm, 2 workers", 2)):
                out = args.work / "out"
                shutil.rmtree(out, ignore_errors=True)
                wall = run([[*vc, "farm", str(prompts), "--out", str(out), *common, "--workers", str(workers)]])
                span, load, gap, share = farm_span(out)
                print(f"| {kind} | {label} | {wall:.1f} | {span:.1f} | {share:.0%} | {load:.1f} | {gap:.3f} | "
                      f"{os.getloadavg()[0]:.2f} |", flush=True)
            outs = [args.work / f"shard{i}" for i in range(2)]
            for out in outs:
                shutil.rmtree(out, ignore_errors=True)
            wall = run([[*vc, "gen", str(prompts), "--out", str(out), *common, "--shard", f"{i}/2"]
                        for i, out in enumerate(outs)])
            print(f"| {kind} | static --shard 0/2 + 1/2 | {wall:.1f} | {gen_span(outs):.1f} | {gen_share(outs):.0%} | "
                  f"- | - | {os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""PSNR and compute ratio of each default preset at several step counts (docs/benchmarks.md).

Why: a preset is tuned at its model's default step count; ``--steps`` changes the schedule. This runs
every method's default table of a model's preset at each step count, twice: as shipped (its counts
stated for the preset's steps and stretched to the run's, ``vidcache/caches/steps.py``) and with the
counts used as given (``schedule_steps`` = the run's steps, the behaviour before rescaling), against
the uncached video of the same prompt, seed and step count. Prints a markdown table and writes the
rows as JSON.

    OMP_NUM_THREADS=1 python scripts/step_counts.py --prompts scripts/bench_tiny.txt --limit 4 --out steps.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("pab", "fastercache", "teacache", "adacache", "mixcache", "fbcache", "taylorseer", "magcache", "seacache")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--prompts", default="scripts/bench_tiny.txt")
    ap.add_argument("--limit", type=int, default=4, help="first N prompts of the file")
    ap.add_argument("--steps", default="15,25,40")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="key=value for every run (defaults.x=)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    ap.add_argument("--no-as-given", dest="as_given", action="store_false",
                    help="skip the runs with the counts used as given")
    args = ap.parse_args(argv)

    from vidcache import jobs, metrics
    from vidcache.caches import baselines
    from vidcache.runner import RunConfig, Runner, plan_run
    from vidcache.video import to_uint8

    prompts = jobs.read_prompts(args.prompts, [])[: args.limit]
    scratch = Path(tempfile.gettempdir())  # plan_run checks an --out folder; nothing is written there
    methods = args.methods.split(",")
    rows = []
    t0 = time.perf_counter()
    for steps in [int(s) for s in args.steps.split(",")]:
        cfg = RunConfig(model=args.model, sets=list(args.sets), flags={"steps": steps}, out=scratch)
        plan = plan_run(cfg, prompts)
        runner = Runner(plan)
        runner.load()
        refs = [to_uint8(runner.generate(job)[0]) / 255.0 for job in plan.jobs]
        for method in methods:
            stated = plan_run(RunConfig(model=args.model, cache=method, sets=list(args.sets), out=scratch),
                              prompts).cache_params
            # AdaCache follows the steps by its own rule (codebook_steps); a method without step-counted
            # parameters (diffusers' SeaCache) runs as given at every step count
            label = ("stretched" if "schedule_steps" in stated else
                     "its own rule" if "codebook_steps" in stated else "as given")
            variants = {label: stated}
            if args.as_given and stated.get("schedule_steps") not in (None, steps):
                variants["as given"] = {**stated, "schedule_steps": steps}
            for label, params in variants.items():
                baselines._CALIBRATED.clear()  # MagCache: calibrate at this step count (as gen would)
                runner.set_cache(method, None, params)
                if method == "magcache":
                    runner.generate(plan.jobs[0])  # the calibration video
                psnr, compute, attn = [], [], []
                for job, ref in zip(plan.jobs, refs):
                    frames, rep = runner.generate(job)
                    psnr.append(metrics.psnr(ref, to_uint8(frames) / 255.0))
                    compute.append(rep["cache"]["stats"]["compute_ratio"])
                    attn.append(rep["cache"]["stats"]["attention_compute_ratio"])
                rows.append({"method": method, "counts": label, "steps": steps, "psnr": statistics.mean(psnr),
                             "compute_ratio": statistics.mean(compute),
                             "attention_compute_ratio": statistics.mean(attn), "prompts": len(psnr)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        runner.close()
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "prompts": [p.text for p in prompts],
                                        "seconds": time.perf_counter() - t0, "rows": rows}, indent=2) + "\n")
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    """One line per method and kind of counts: PSNR / compute (attention compute) per step count."""
    steps = sorted({r["steps"] for r in rows})
    head = "| method | counts | " + " | ".join(f"{s} steps: PSNR, compute" for s in steps) + " | PSNR spread |"
    lines = [head, "|" + "---|" * (len(steps) + 3)]
    for method in dict.fromkeys(r["method"] for r in rows):
        for label in ("stretched", "its own rule", "as given"):
            got = {r["steps"]: r for r in rows if r["method"] == method and r["counts"] == label}
            if label == "as given" and any(r["method"] == method and r["counts"] == "stretched" for r in rows):
                # the stated step count runs once: its row serves both
                got = {s: got.get(s) or next(r for r in rows if r["method"] == method and r["steps"] == s)
                       for s in steps}
            if len(got) < len(steps):
                continue
            cells = []
            for s in steps:
                r = got[s]
                c = r["compute_ratio"] if r["compute_ratio"] < 1 else r["attention_compute_ratio"]
                mark = "" if r["compute_ratio"] < 1 else " attn"
                cells.append(f"{r['psnr']:.1f} dB, {c:.2f}{mark}")
            spread = max(r["psnr"] for r in got.values()) - min(r["psnr"] for r in got.values())
            lines.append(f"| {method} | {label} | " + " | ".join(cells) + f" | {spread:.1f} dB |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

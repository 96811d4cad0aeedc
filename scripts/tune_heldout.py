"""Measure tuned fragments (``vidcache tune -o``) on prompts they were not tuned on (docs/benchmarks.md).

For every fragment and every method it measured, the method's table is rendered on the held-out
prompts at the fragment's own settings (steps, frames, size from its ``[tuned]`` table) and compared
with the uncached renders of the same prompts, kept in ``--refs`` like tune's own references (so
several fragments share them, and a rerun renders nothing twice). Prints a markdown table: the PSNR
measured by tune on its prompts, the held-out PSNR, their difference, the held-out compute ratio and
speedup.

    OMP_NUM_THREADS=1 python scripts/tune_heldout.py --prompts held.txt --refs refs/ t30.toml t35.toml t40.toml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fragments", nargs="+", type=Path)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--refs", type=Path, required=True)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    args = ap.parse_args(argv)
    args.refs.mkdir(parents=True, exist_ok=True)

    from vidcache import jobs, presets
    from vidcache.runner import RunConfig, plan_run
    from vidcache.tune.search import Point, Target
    from vidcache.tune.tuner import TunePlan, Tuner

    prompts = jobs.read_prompts(args.prompts, [])
    rows, t0 = [], time.perf_counter()
    by_settings: dict[tuple, list[Path]] = {}
    for frag in args.fragments:
        t = presets.load_file(frag).tuned
        by_settings.setdefault((t["steps"], t["frames"], t["height"], t["width"]), []).append(frag)
    for (steps, frames, height, width), frags in by_settings.items():
        flags = {"steps": steps, "frames": frames, "height": height, "width": width}
        base = plan_run(RunConfig(model=args.model, flags=flags, out=args.refs), prompts)
        tuner = Tuner(TunePlan(base, [], Target(psnr=1.0), args.refs / "unused.toml", args.refs))
        tuner.store.open()
        tuner.runner.load()
        try:
            tuner.references()
            indices = [j.index for j in base.jobs]
            for frag in frags:
                preset = presets.load_file(frag)
                for method, tuned in preset.tuned.items():
                    if not isinstance(tuned, dict):
                        continue
                    params = plan_run(RunConfig(model=args.model, cache=method, preset_file=str(frag), flags=flags,
                                                out=args.refs), prompts).cache_params
                    point = Point(method, "", 0.0, params, "")
                    tuner.measure(point, indices)
                    s = point.summary()
                    rows.append({"fragment": frag.name, "target": preset.tuned.get("target_psnr"), "method": method,
                                 "tuned_psnr": tuned["psnr"], "tuned_compute": tuned["compute_ratio"],
                                 "held_psnr": s["psnr"], "held_psnr_min": s["psnr_min"],
                                 "held_compute": s["compute_ratio"],
                                 "held_attention": s["attention_compute_ratio"], "held_speedup": s["speedup"],
                                 "held_adherence": s.get("adherence"), "prompts": s["prompts"]})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            tuner.runner.close()
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "seconds": time.perf_counter() - t0,
                                        "videos": tuner.videos}, indent=2) + "\n")
    print("| target | method | PSNR on the tuning prompts | held-out PSNR (worst) | difference | held-out compute "
          "(attention) | speedup |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']:g} dB | {r['method']} | {r['tuned_psnr']:.2f} | {r['held_psnr']:.2f} "
              f"({r['held_psnr_min']:.1f}) | {r['held_psnr'] - r['tuned_psnr']:+.2f} | {r['held_compute']:.3f} "
              f"({r['held_attention']:.3f}) | {r['held_speedup']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

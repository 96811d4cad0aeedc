"""cache-dit's DBCache on a vidcache model, measured like ``vidcache bench`` rows (optional; not a dependency).

Why a script and not a ``--cache`` method: cache-dit is a comparison, never something vidcache runs on a
user's behalf. This runs cache-dit through its own API (``cache_dit.enable_cache(pipe,
cache_config=DBCacheConfig(...))``) on the pipeline vidcache loads, renders every prompt uncached and
cached with the same seed and settings as ``vidcache bench``, and writes rows with the bench's columns:
``compute_ratio`` counted by torch hooks on each block's self-attention (a block counts when it really
ran; the unit is one block for one CFG branch, as in vidcache's statistics), the PSNR columns of
``vidcache.bench.psnr_summary``, SSIM, and with ``--timing`` the median paired ratio of denoising time.

    pip install --no-deps cache-dit     # its own requirements (torch, diffusers, transformers,
                                        # packaging, pyyaml) are vidcache's already
    python scripts/bench_cachedit.py --model tiny --prompts scripts/bench_tiny_heldout.txt \\
        --fn 1 --bn 0 --thresholds 0.04,0.06,0.08,0.12 --out bench/cachedit.json

DBCache's knobs (cache-dit's ``DBCacheConfig``): ``Fn`` first blocks always computed (their residual is
the cache decision's signal), ``Bn`` last blocks always computed, ``residual_diff_threshold``,
``max_warmup_steps`` steps never cached, ``max_continuous_cached_steps`` (-1: no cap). CFG as the model's
pipeline runs it (Wan: separate forwards, ``enable_separate_cfg``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--prompts", required=True, help="a prompt file, one per line (# comments)")
    p.add_argument("--thresholds", default="0.08", help="comma-separated residual_diff_threshold values")
    p.add_argument("--fn", type=int, default=1, help="Fn_compute_blocks")
    p.add_argument("--bn", type=int, default=0, help="Bn_compute_blocks")
    p.add_argument("--warmup", type=int, default=8, help="max_warmup_steps (cache-dit's default 8)")
    p.add_argument("--max-continuous", type=int, default=-1, help="max_continuous_cached_steps")
    p.add_argument("--timing", action="store_true", help="paired uncached/cached timing (else quality only)")
    p.add_argument("--out", type=Path, required=True, help="JSON file for the rows")
    return p.parse_args(argv)


class BlockCounter:
    """Rows of the batch each block's self-attention ran on (a block that is skipped never calls it)."""

    def __init__(self, transformer) -> None:
        from vidcache.models import adapter_of

        layout = adapter_of(transformer)
        self.blocks = len(layout.blocks(transformer))
        spatial = [m for _, m, kind in layout.attention_modules(transformer) if kind == "spatial"]
        self.units = 0
        self.handles = [m.register_forward_pre_hook(self._count, with_kwargs=True) for m in spatial]

    def _count(self, module, args, kwargs) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        self.units += hidden.shape[0]

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import cache_dit
        from cache_dit import DBCacheConfig
    except ImportError as err:
        print(f"bench_cachedit: cache-dit is not installed ({err}); pip install --no-deps cache-dit", file=sys.stderr)
        return 2
    from vidcache import bench, jobs
    from vidcache.runner import RunConfig, Runner, plan_run

    thresholds = [float(x) for x in args.thresholds.split(",") if x.strip()]
    plan = plan_run(RunConfig(model=args.model, out=args.out.parent), jobs.read_prompts(args.prompts, []))
    runner = Runner(plan)
    runner.load()
    pipe = runner.pipe
    counter = BlockCounter(pipe.transformer)
    branches = 2 if plan.jobs[0].guidance > 1 else 1  # CFG's two branches, as the bench counts them
    rows = []
    try:
        refs = {}
        runner.generate(plan.jobs[0])  # warm-up
        for job in plan.jobs:
            refs[job.index] = runner.generate(job)
        for th in thresholds:
            config = DBCacheConfig(Fn_compute_blocks=args.fn, Bn_compute_blocks=args.bn, residual_diff_threshold=th,
                                   max_warmup_steps=args.warmup, max_continuous_cached_steps=args.max_continuous,
                                   enable_separate_cfg=runner.plan.model.family.cfg_layout == "separate",
                                   num_inference_steps=plan.jobs[0].steps)
            samples, speedups = [], []
            for job in plan.jobs:
                if args.timing:  # the uncached run right beside the cached one, as the bench pairs them
                    base_timing = runner.generate(job)[1]["timing"]
                cache_dit.enable_cache(pipe, cache_config=config)
                counter.units = 0
                try:
                    frames, report = runner.generate(job)
                finally:
                    cache_dit.disable_cache(pipe)
                total = branches * job.steps * counter.blocks
                sample = bench.clip_quality(refs[job.index][0], frames, job.prompt, probe=False)
                samples.append(sample | {"prompt": job.prompt, "compute_ratio": counter.units / total})
                if args.timing:
                    speedups.append(base_timing["denoise_s"] / report["timing"]["denoise_s"])
            rows.append({
                "method": "cache-dit-dbcache", "preset": f"F{args.fn}B{args.bn}W{args.warmup} r{th:g}",
                "speedup": statistics.median(speedups) if speedups else None,
                "compute_ratio": statistics.mean(x["compute_ratio"] for x in samples),
                **bench.psnr_summary(samples),
                "ssim": statistics.mean(x["ssim"] for x in samples),
                "pairs": len(samples),
                "params": {"implementation": f"cache_dit {cache_dit.__version__}.enable_cache + DBCacheConfig",
                           "Fn_compute_blocks": args.fn, "Bn_compute_blocks": args.bn,
                           "residual_diff_threshold": th, "max_warmup_steps": args.warmup,
                           "max_continuous_cached_steps": args.max_continuous},
            })
            r = rows[-1]
            print(f"{r['preset']}: compute {r['compute_ratio']:.3f}, PSNR {r['psnr']:.2f} (median "
                  f"{r['psnr_median']:.2f}, min {r['psnr_min']:.2f}, worst frame {r['worst_frame']:.2f})",
                  file=sys.stderr)
    finally:
        counter.close()
        runner.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

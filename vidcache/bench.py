"""``vidcache bench``: every cache's speed and quality against the uncached run, measured in one process.

Each cached video is paired with an uncached run of the same prompt and seed made right beside it,
and the order inside a pair alternates between rounds, so machine drift and warm-up cancel out of
the ratios. ``speedup`` is the median of the paired ratios of denoising time (the part caching
accelerates); ``speedup_e2e`` the same for the whole video (text encoding and VAE decode included).
Quality is measured against the uncached video of the same prompt and seed: PSNR and SSIM, LPIPS
when its weights are on disk, and prompt adherence where the model has a probe (the tiny model).

Quantization: a contender ``METHOD@MODE`` (``teacache@int8``, ``none@int8``: ``vidcache.quantize``'s
modes) runs with the transformer blocks' linear layers quantized, against the same *unquantized*
uncached baseline, so its row shows what the quantization costs on top of the cache. Both weight
sets stay loaded and are swapped in place between the two runs of a pair (one load, same pairing).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import caches, quantize
from . import jobs as jobs_mod
from .errors import UsageError
from .loading import pick_device
from .runner import Events, QuietEvents, RunConfig, Runner, plan_run
from .video import write_json, write_text

MD_COLUMNS = ("method", "preset", "speedup", "speedup_e2e", "compute_ratio", "psnr", "psnr_median", "psnr_min",
              "worst_frame", "worst_frame_min", "ssim", "lpips", "adherence", "cache_memory_mb")
SHORT_HEADERS = ("method", "preset", "speedup", "e2e", "compute", "PSNR", "med.", "min", "worst fr.", "worst min",
                 "SSIM", "LPIPS", "adh.", "MB")
# the PSNR columns (vs the uncached video of the same prompt and seed), over the prompts of a row:
#   psnr: mean of the clips' mean-over-frames PSNR; psnr_median / psnr_min: their median and minimum;
#   worst_frame: mean of each clip's worst frame; worst_frame_min: the worst frame of all clips
PSNR_COLUMNS = ("psnr", "psnr_median", "psnr_min", "worst_frame", "worst_frame_min")


@dataclass(frozen=True)
class Contender:
    """One method at one preset (``teacache.fast`` is method teacache, preset fast), on weights
    quantized by ``quantize`` (``teacache.fast@int8``) or not (``none``)."""

    spec: str
    method: str
    preset: str
    params: dict[str, Any]
    quantize: str = "none"

    @property
    def variant(self) -> str | None:
        return None if self.preset == "default" else self.preset


def split_quantize(spec: str) -> tuple[str, str]:
    """``teacache.fast@int8`` -> (``teacache.fast``, ``int8``); no ``@``: not quantized."""
    cache, at, mode = spec.partition("@")
    mode = mode.strip().lower() if at else "none"
    if mode not in quantize.MODES:
        raise UsageError(f"--caches {spec}: unknown quantization '{mode}' (known: {', '.join(quantize.MODES)})")
    return cache.strip(), mode


def parse_caches(spec: str) -> list[str]:
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise UsageError("--caches: give at least one method, e.g. none,teacache")
    return items


def plan_bench(cfg: RunConfig, prompts: list[jobs_mod.Prompt], caches_spec: str):
    """Validate every method, its preset and its quantization before anything loads; returns
    (plan, contenders)."""
    base_plan = plan_run(replace(cfg, cache="none"), prompts)
    contenders = []
    for spec in parse_caches(caches_spec):
        cache, mode = split_quantize(spec)
        plan = plan_run(replace(cfg, cache=cache), prompts)
        if plan.method != "none" or mode != "none":
            quantize.check_quantize(mode, pick_device(cfg.load.device))
            contenders.append(Contender(spec, plan.method, plan.variant or "default", plan.cache_params, mode))
    if not contenders:
        raise UsageError("--caches: name at least one caching method besides none, or none@int8 (the "
                         "baseline always runs)")
    return base_plan, contenders


class Weights:
    """The pipeline's block weights: the loaded ones, and each quantization the contenders ask for."""

    def __init__(self, pipe: Any, modes: set[str]):
        self.sets: dict[str, quantize.WeightSets] = {}
        for mode in sorted(modes - {"none"}):
            self.use("none")  # every mode is quantized from the loaded weights
            self.sets[mode] = quantize.quantize_pipeline(pipe, mode, keep_original=True)
        self.use("none")

    def use(self, mode: str) -> None:
        if mode == "none":
            for sets in self.sets.values():
                sets.use(False)
        else:
            self.sets[mode].use(True)


def _enter(runner: Runner, weights: Weights, contender: Contender | None) -> None:
    """Set up ``contender`` (None: the uncached, unquantized baseline) on the loaded pipeline."""
    if contender is None:
        weights.use("none")
        runner.set_cache("none", None, {})
        return
    weights.use(contender.quantize)
    runner.set_cache(contender.method, contender.variant, contender.params)


def clip_quality(ref: np.ndarray, test: np.ndarray, prompt: str, probe: bool) -> dict[str, Any]:
    """PSNR (mean and worst frame), SSIM, LPIPS of one clip against its uncached twin; adherence with ``probe``."""
    from . import metrics

    frames = metrics.psnr_frames(ref, test)
    worst = min(range(len(frames)), key=frames.__getitem__)
    q = {"psnr": sum(frames) / len(frames), "worst_frame": frames[worst], "worst_frame_index": worst,
         "ssim": metrics.ssim(ref, test), "lpips": metrics.lpips(ref, test)}
    if probe:
        q["adherent"] = bool(metrics.adherence(test, prompt)["ok"])
    return q


def _has_probe(runner: Runner, prompt: str) -> bool:
    if runner.plan.model.name != "tiny":
        return False
    from . import reference

    return all(part is not None for part in reference.parse_prompt(prompt))


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def psnr_summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The PSNR columns of one row (``PSNR_COLUMNS``) and its ``per_prompt`` list, from the samples
    that carry quality (the first repeat of each prompt)."""
    rated = [x for x in samples if x.get("psnr") is not None]
    means, worst = [x["psnr"] for x in rated], [x["worst_frame"] for x in rated]
    return {
        "psnr": _mean(means),
        "psnr_median": _median(means),
        "psnr_min": min(means, default=None),
        "worst_frame": _mean(worst),
        "worst_frame_min": min(worst, default=None),
        "per_prompt": [{"prompt": x["prompt"], "psnr": x["psnr"], "worst_frame": x["worst_frame"],
                        "worst_frame_index": x["worst_frame_index"], "compute_ratio": x["compute_ratio"]}
                       for x in rated],
    }


def run_bench(runner: Runner, contenders: list[Contender], repeat: int,
              events: Events | None = None) -> list[dict[str, Any]]:
    """Measure; returns one row per contender plus the uncached baseline's row first."""
    events = events or QuietEvents()
    runner.load()
    weights = Weights(runner.pipe, {c.quantize for c in contenders})
    jobs = runner.plan.jobs
    refs: dict[int, np.ndarray] = {}
    base_probe: list[bool] = []
    samples: dict[str, list[dict[str, Any]]] = {c.spec: [] for c in contenders}
    # Warm-up, once per method: first-call allocations, lazy imports, compilation (--compile) and
    # calibration videos (MagCache) are nobody's steady-state cost.
    for c in contenders:
        _enter(runner, weights, c)
        runner.generate(jobs[0])
    _enter(runner, weights, None)
    runner.generate(jobs[0])
    total = repeat * len(jobs) * (1 + 2 * len(contenders))
    done = 0
    for r in range(repeat):
        for job in jobs:
            events.video_start(job, done, total)
            _enter(runner, weights, None)
            frames, _ = runner.generate(job)
            done += 1
            if job.index not in refs:
                refs[job.index] = frames
                if _has_probe(runner, job.prompt):
                    base_probe.append(bool(clip_quality(frames, frames, job.prompt, True)["adherent"]))
            for c in contenders:
                runs = {}
                for who in ("none", "cached") if (r + job.index) % 2 == 0 else ("cached", "none"):
                    events.video_start(job, done, total)
                    _enter(runner, weights, None if who == "none" else c)
                    runs[who] = runner.generate(job)
                    done += 1
                base, (out, rep) = runs["none"][1]["timing"], runs["cached"]
                sample = {
                    "speedup": base["denoise_s"] / rep["timing"]["denoise_s"],
                    "speedup_e2e": base["total_s"] / rep["timing"]["total_s"],
                    "compute_ratio": rep["cache"]["stats"].get("compute_ratio"),
                    "memory_bytes": rep["cache"]["stats"].get("memory_bytes", 0),
                    "params": rep["cache"]["params"],
                }
                if r == 0:  # outputs are deterministic: quality once per prompt
                    sample |= clip_quality(refs[job.index], out, job.prompt, _has_probe(runner, job.prompt))
                    sample["prompt"] = job.prompt
                samples[c.spec].append(sample)
    _enter(runner, weights, None)
    rows = [{"method": "none", "preset": "-", "quantize": "none", "speedup": 1.0, "speedup_e2e": 1.0,
             "compute_ratio": 1.0, **dict.fromkeys(PSNR_COLUMNS), "ssim": 1.0, "lpips": None,
             "adherence": _mean([float(x) for x in base_probe]) if base_probe else None,
             "cache_memory_mb": 0.0, "pairs": 0, "params": {}, "per_prompt": []}]
    for c in contenders:
        s = samples[c.spec]
        adh = [float(x["adherent"]) for x in s if "adherent" in x]
        rows.append({
            "method": caches.report_name(c.method),
            "preset": c.preset if c.method != "none" else "-",
            "quantize": c.quantize,
            "speedup": _median([x["speedup"] for x in s]),
            "speedup_e2e": _median([x["speedup_e2e"] for x in s]),
            "compute_ratio": _mean([x["compute_ratio"] for x in s]),
            **psnr_summary(s),
            "ssim": _mean([x.get("ssim") for x in s]),
            "lpips": _mean([x.get("lpips") for x in s]),
            "adherence": _mean(adh) if adh else None,
            "cache_memory_mb": max((x["memory_bytes"] or 0) for x in s) / 2**20 if s else 0.0,
            "pairs": len(s),
            "params": s[0]["params"] if s else c.params,
        })
    return rows


def _fmt(v: Any, col: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if col in ("speedup", "speedup_e2e"):
            return f"{v:.2f}x"
        if col == "adherence":
            return f"{100 * v:.0f}%"
        return f"{v:.3f}" if col in ("compute_ratio", "ssim", "lpips") else f"{v:.2f}"
    return str(v)


def columns(rows: list[dict[str, Any]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The table's columns and short headers: ``quantize`` after ``preset`` when a row is quantized."""
    if all(r.get("quantize", "none") == "none" for r in rows):
        return MD_COLUMNS, SHORT_HEADERS
    at = MD_COLUMNS.index("preset") + 1
    return MD_COLUMNS[:at] + ("quantize",) + MD_COLUMNS[at:], SHORT_HEADERS[:at] + ("quant.",) + SHORT_HEADERS[at:]


def markdown(rows: list[dict[str, Any]], context: dict[str, Any]) -> str:
    cols, _ = columns(rows)
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join("| " + " | ".join(_fmt(r.get(c), c) for c in cols) + " |\n" for r in rows)
    notes = (
        f"\nModel `{context['model']}`, {context['jobs']} prompt(s) x {context['repeat']} repeat(s), "
        f"device {context['device']}. speedup = median paired ratio of denoising time, speedup_e2e = "
        "of the whole video; PSNR/SSIM/LPIPS against the uncached video of the same prompt and seed "
        "(PSNR of the uncached row is infinite, shown as -). psnr is the mean over prompts of each clip's "
        "mean-over-frames PSNR, psnr_median / psnr_min its median and worst prompt; worst_frame is the mean "
        "over prompts of each clip's worst frame, worst_frame_min the worst frame of all clips."
    )
    if cols != MD_COLUMNS:
        notes += (" quantize: the transformer blocks' linear layers quantized with torchao (int8: weight-only; "
                  "fp8: weights and activations), measured against the same unquantized uncached video.")
    if not context.get("lpips_available"):
        notes += " LPIPS skipped: its weights are not available locally (optional extra)."
    return head + body + notes + "\n"


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Speed against PSNR: a dot at the mean over prompts, a bar from the worst prompt to the median
    one, a cross at the mean worst frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for r in rows:
        baseline = r["method"] == "none" and r.get("quantize", "none") == "none"
        if baseline or r["psnr"] is None or r["speedup"] is None:
            continue
        dot = ax.scatter(r["speedup"], r["psnr"], s=36)
        colour = dot.get_facecolor()[0]
        if r.get("psnr_min") is not None:
            ax.vlines(r["speedup"], r["psnr_min"], max(r["psnr_median"], r["psnr"]), colors=[colour], lw=1)
        if r.get("worst_frame") is not None:
            ax.scatter(r["speedup"], r["worst_frame"], s=24, marker="x", color=colour)
        label = r["method"] if r["preset"] in ("default", "-") else f"{r['method']}.{r['preset']}"
        if r.get("quantize", "none") != "none":
            label += f"@{r['quantize']}"
        ax.annotate(label, (r["speedup"], r["psnr"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("speedup (denoising, median paired ratio)")
    ax.set_ylabel("PSNR vs uncached (dB)")
    ax.set_title("vidcache bench: mean over prompts (dot), worst to median prompt (bar),\nmean worst frame (x)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_outputs(rows: list[dict[str, Any]], context: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "md": out / "bench.md", "png": out / "pareto.png"}
    write_json(paths["json"], rows)
    write_text(paths["md"], markdown(rows, context))
    pareto_plot(rows, paths["png"])
    return paths

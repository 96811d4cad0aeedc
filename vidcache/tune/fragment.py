"""The TOML fragment ``vidcache tune`` writes: one table per method that met the target, in the
format ``--preset FILE`` reads, and a ``[tuned]`` table with what was measured (``presets.TUNED_KEYS``;
``--cache auto`` reads it). Each method table holds the full measured setting (not only the knob), so
the fragment means the same merged over any preset; comments say it in words.
"""

from __future__ import annotations

import math
from typing import Any

from .. import __version__
from .search import MethodResult, describe


def value(v: Any) -> str:
    """A TOML value: numbers, booleans, strings and (nested) lists."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"not representable in TOML: {v}")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise ValueError(f"not representable in TOML: {v!r}")


def _round(v: float, digits: int = 4) -> float:
    return float(f"{v:.{digits}g}") if math.isfinite(v) else 0.0


def measurement(result: MethodResult) -> dict[str, Any]:
    s = result.chosen.summary()
    out = {k: _round(s[k]) for k in ("psnr", "psnr_se", "psnr_min", "ssim", "compute_ratio",
                                     "attention_compute_ratio", "speedup")}
    if "adherence" in s:
        out["adherence"] = _round(s["adherence"], 3)
    out["prompts"] = s["prompts"]
    out["met"] = True
    return out


def render(tuned: Any) -> str:
    """The fragment of a ``TuneResult``."""
    plan = tuned.plan
    jobs = plan.base.jobs
    j = jobs[0]
    model = plan.base.model
    lines = [
        f"# vidcache tune: {model.name} ({model.family.name}), {j.steps} steps, {j.frames} frames "
        f"{j.height}x{j.width}, guidance {j.guidance:g}",
        f"#   target {plan.target.words()} (mean over {len(jobs)} prompts against their uncached videos)",
        f"# measured on {tuned.machine}: {tuned.videos} videos in {tuned.seconds:.0f} s "
        f"({tuned.reused} measured points reused from {plan.refs})",
        "# use: vidcache gen --model ... --preset THIS_FILE --cache auto   (or --cache METHOD)",
        "",
    ]
    for r in tuned.met:
        s = r.chosen.summary()
        lines.append(f"[{r.method}]")
        lines.append(f"# tuned: {r.chosen.label} [{r.chosen.line}]: {describe(s)}; worst prompt {s['psnr_min']:.2f} dB")
        lines += [f"# {note}" for note in r.notes]
        lines += [f"{k} = {value(v)}" for k, v in r.chosen.params.items() if v is not None]
        lines.append("")
    for r in tuned.results:
        if r.chosen is None:
            lines.append(f"# {r.method}: no setting met the target (best measured: "
                         f"{describe(r.best('psnr').summary()) if r.best('psnr') else '-'})")
    t = {
        "model": model.name, "family": model.family.name,
        **({"target_psnr": plan.target.psnr} if plan.target.psnr is not None else {}),
        **({"target_speedup": plan.target.speedup} if plan.target.speedup is not None else {}),
        "prompts": [job.prompt for job in jobs], "seeds": sorted({job.seed for job in jobs}),
        "steps": j.steps, "frames": j.frames, "height": j.height, "width": j.width, "guidance": j.guidance,
        "device": tuned.device, "machine": tuned.machine, "seconds": round(tuned.seconds, 1),
        "videos": tuned.videos, "vidcache": __version__,
    }
    lines.append("[tuned]")
    lines += [f"{k} = {value(v)}" for k, v in t.items()]
    for r in tuned.met:
        lines += ["", f"[tuned.{r.method}]"]
        lines += [f"{k} = {value(v)}" for k, v in measurement(r).items()]
    return "\n".join(lines) + "\n"

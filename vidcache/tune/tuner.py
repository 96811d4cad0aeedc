"""``vidcache tune`` end to end: plan (every check before loading), references, search, result.

``plan_tune`` validates the methods, the target, the output path and the run settings through
``runner.plan_run`` (one plan per method, so a method's preset table and ``--set`` are checked as
``gen`` checks them) and loads nothing. ``run_tune`` loads the model once, makes or reads the
references (``store.py``), runs ``search.Search`` per method and returns a ``TuneResult``, from which
``fragment.py`` writes the TOML.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..errors import UsageError
from ..runner import Plan, RunConfig, plan_run
from . import knobs
from .search import BRACKET, ITERATIONS, MethodResult, Point, Search, Target, describe
from .store import Reference, Store, job_key

DEFAULT_METHODS = "pab,fastercache,teacache,adacache,mixcache"
REFS_DIR = ".vidcache-tune"


@dataclass
class MethodPlan:
    spec: str  # as given (teacache, teacache.fast)
    method: str
    params: dict[str, Any]  # the merged table plan_run gives (the search starts from it)
    user_keys: set[str]


@dataclass
class TunePlan:
    base: Plan  # the uncached plan: model, jobs
    methods: list[MethodPlan]
    target: Target
    out: Path
    refs: Path
    overwrite: bool = False

    def estimate(self) -> int:
        """About the videos the search takes when each method's first candidate confirms (references
        and timing included); a miss adds the prompts outside the bracket for every setting confirmed."""
        t = len(self.base.jobs)
        b = min(BRACKET, t)
        per_line = (2 + ITERATIONS) * b
        return t + 2 + sum(knobs.lines_of(m.method) * per_line + (t - b) + (m.method == "magcache")
                           for m in self.methods)


def check_target(psnr: float | None, speedup: float | None) -> Target:
    if (psnr is None) == (speedup is None):
        raise UsageError("give exactly one of --target-psnr DB and --target-speedup X")
    if psnr is not None and not (math.isfinite(psnr) and 0 < psnr < 100):
        raise UsageError(f"--target-psnr {psnr}: expected a PSNR in dB between 0 and 100")
    if speedup is not None and not (math.isfinite(speedup) and speedup > 1):
        raise UsageError(f"--target-speedup {speedup}: expected a number above 1 (the uncached run is 1)")
    return Target(psnr, speedup)


def parse_methods(spec: str) -> list[str]:
    items = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    if not items:
        raise UsageError("--cache: name at least one method to tune, e.g. teacache,pab")
    for item in items:
        if item.split(".")[0].lower() in ("none", "auto"):
            raise UsageError(f"--cache {item}: tune needs caching methods (none and auto have nothing to tune)")
    return items


def plan_tune(cfg: RunConfig, prompts: list[Any], methods: str, target: Target, out: Path,
              refs: Path | None = None, overwrite: bool = False) -> TunePlan:
    """Everything checked, nothing loaded."""
    import importlib.util

    if importlib.util.find_spec("torchmetrics") is None:
        raise UsageError("vidcache tune measures PSNR and SSIM with torchmetrics: pip install 'vidcache[metrics]'")
    if out.suffix != ".toml":
        raise UsageError(f"-o {out}: expected a .toml file")
    if not out.parent.is_dir():
        raise UsageError(f"-o {out}: no such folder {out.parent}")
    specs = parse_methods(methods)
    sets = sets_by_method(cfg.sets, specs)
    cfg = replace(cfg, out=out.parent)  # plan_run checks its --out: OUT's folder, which exists (nothing lands there)
    base = plan_run(replace(cfg, cache="none", sets=sets[None]), prompts)
    plans = []
    for spec in specs:
        p = plan_run(replace(cfg, cache=spec, sets=sets[None] + sets[spec]), prompts)
        keys = {raw.partition("=")[0].strip().rpartition(".")[2] for raw in sets[spec]}
        plans.append(MethodPlan(spec, p.method, dict(p.cache_params), keys))
    return TunePlan(base, plans, target, out, refs if refs is not None else out.parent / REFS_DIR, overwrite)


def sets_by_method(sets: list[str], specs: list[str]) -> dict[str | None, list[str]]:
    """``--set`` items for the run (None: ``defaults.KEY``) and for each method: ``METHOD.KEY=...``, or a
    bare ``KEY=...`` for every method that has that parameter; one that fits none is refused."""
    from ..caches import canonical, method_fields
    from ..presets import parse_sets

    out: dict[str | None, list[str]] = {None: [], **{s: [] for s in specs}}
    methods = {s: canonical(s.split(".")[0].lower()) for s in specs}
    for raw, (key, _) in zip(sets, parse_sets(sets)):
        scope, dot, name = key.rpartition(".")
        if scope == "defaults":
            out[None].append(raw)
            continue
        hit = [s for s, m in methods.items() if (scope == m if dot else name in (method_fields(m) or set()))]
        if not hit:
            raise UsageError(f"--set {raw}: no method being tuned ({', '.join(specs)}) has that parameter")
        for s in hit:
            out[s].append(raw)
    return out


class TuneEvents(Protocol):
    def status(self, text: str) -> None: ...
    def video(self, done: int, total: int) -> None: ...
    def note(self, text: str) -> None: ...


class QuietTuneEvents:
    def status(self, text): ...
    def video(self, done, total): ...
    def note(self, text): ...


@dataclass
class TuneResult:
    plan: TunePlan
    results: list[MethodResult]
    seconds: float
    videos: int
    reused: int
    machine: str
    device: str
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> list[MethodResult]:
        return [r for r in self.results if r.chosen is not None]

    def failure(self) -> str:
        """The one line when no method met the target: the best it reached, and at what speed."""
        t = self.plan.target
        names = ", ".join(r.method for r in self.results)
        key = "psnr" if t.psnr is not None else "speedup"
        found = [(r.method, r.best(key)) for r in self.results if r.best(key) is not None]
        if not found:
            return f"no setting of {names} reused anything at these settings (too few steps?)"
        m, p = max(found, key=lambda mp: mp[1].summary()[key])
        s = p.summary()
        if t.psnr is not None:
            return (f"no setting of {names} meets {t.words()} on the tuning prompts: the best reached "
                    f"{s['psnr']:.2f} dB ({m} {p.label}: {describe(s)})")
        return (f"no setting of {names} reaches {t.words()} on the tuning prompts: the fastest was "
                f"{s['speedup']:.2f}x at {s['psnr']:.2f} dB ({m} {p.label})")

    def summary(self) -> dict[str, Any]:
        """JSON-ready: per method its chosen point (or None) and every measured point."""
        def point(p: Point) -> dict[str, Any]:
            return {"line": p.line, "x": p.x, "setting": p.label, "params": p.params, **p.summary()}

        return {
            "target": {"psnr": self.plan.target.psnr, "speedup": self.plan.target.speedup},
            "model": self.plan.base.model.name, "out": str(self.plan.out), "refs": str(self.plan.refs),
            "prompts": [j.prompt for j in self.plan.base.jobs], "seconds": self.seconds, "videos": self.videos,
            "reused_points": self.reused, "machine": self.machine,
            "methods": {r.method: {"met": r.chosen is not None, "chosen": point(r.chosen) if r.chosen else None,
                                   "notes": r.notes, "points": [point(p) for p in r.points if p.per_prompt]}
                        for r in self.results},
        }


def machine(device: str) -> str:
    import torch

    from ..report import device_info

    info = device_info(device)
    where = info["name"] if device == "cuda" else f"{platform.machine()} CPU, torch threads: {info['threads']}"
    return f"{where}; torch {torch.__version__}"


def run_tune(plan: TunePlan, events: TuneEvents | None = None) -> TuneResult:
    """Load the model, make or reuse the references, search every method."""
    return Tuner(plan, events).run()


class Tuner:
    """One loaded pipeline, the references, the measurements."""

    def __init__(self, plan: TunePlan, events: TuneEvents | None = None) -> None:
        from ..runner import Runner

        self.plan = plan
        self.events = events or QuietTuneEvents()
        self.runner = Runner(plan.base)
        self.store = Store(plan.refs)
        self.refs: dict[int, Reference] = {}
        self.videos = 0
        self.reused = 0
        self.total = plan.estimate()
        self.base_denoise_s: float | None = None
        self.uncached_s: list[float] = []  # this session's uncached denoising times (after a warm-up)
        self._cache: tuple[str, str] | None = None

    # -- the pieces ----------------------------------------------------------------------------
    def context(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        r = self.runner
        ctx = r.job_context()
        ctx["cache"] = {"method": method, "variant": None, "params": params}
        return ctx | {"device": r.device, "resolved_dtype": str(r.dtype),
                      "attention": r.plan.config.load.attention}

    def _generated(self) -> None:
        self.videos += 1
        self.events.video(self.videos, max(self.total, self.videos))

    def seconds(self, report: dict[str, Any]) -> float:
        """A video's denoising time: the process's CPU time on a CPU (a CPU shared with other work
        slows the wall clock, not the work), the wall clock on a GPU."""
        timing = report["timing"]
        return timing["denoise_cpu_s"] if self.runner.device == "cpu" else timing["denoise_s"]

    def set_cache(self, method: str, params: dict[str, Any]) -> None:
        key = (method, repr(sorted(params.items())))
        if key != self._cache:
            self.runner.set_cache(method, None, params)
            self._cache = key

    def references(self) -> None:
        from .. import calibrate
        from ..video import to_uint8

        jobs = self.plan.base.jobs
        family = self.plan.base.model.family
        for job in jobs:
            key = job_key(job, self.context("none", {}))
            if self.store.has_ref(key) and not self.plan.overwrite:
                self.refs[job.index] = self.store.load_ref(key)
                continue
            self.events.status(f"reference {job.index + 1}/{len(jobs)}: {job.prompt}")
            self.set_cache("none", {})
            recording = calibrate.Recording(self.runner.pipe, family, False)
            try:
                frames, rep = self.runner.generate(job)
            finally:
                recording.close()
            branches = 2 if family.cfg_layout == "separate" and job.guidance > 1 else 1
            timesteps = [float(t) for t in self.runner.pipe.scheduler.timesteps]
            ref = Reference(key, to_uint8(frames), recording.sink.x, recording.sink.y, branches,
                            self.seconds(rep), timesteps)
            self.store.save_ref(ref, {"prompt": job.prompt, "seed": job.seed, "steps": job.steps})
            self.refs[job.index] = ref
            if self.videos > 0:  # the session's first video warms up
                self.uncached_s.append(ref.denoise_s)
            self._generated()

    def time_base(self) -> None:
        """The uncached denoising time of this session: the median of at least two uncached videos after
        the session's first (the references made in it count); the first timed rerun of a stored
        reference also checks that this machine reproduces it."""
        import statistics

        from .. import metrics
        from ..video import to_uint8

        job = self.plan.base.jobs[0]
        self.set_cache("none", {})
        self.events.status("timing the uncached run")
        if self.videos == 0:
            self.runner.generate(job)
            self._generated()
        checked = len(self.uncached_s) > 0  # references made in this session: nothing to check
        while len(self.uncached_s) < 2:
            frames, rep = self.runner.generate(job)
            self._generated()
            self.uncached_s.append(self.seconds(rep))
            same = metrics.psnr(self.refs[job.index].frames / 255.0, to_uint8(frames) / 255.0)
            if not checked and same < metrics.PSNR_CAP:
                self.events.note(f"the stored reference of '{job.prompt}' differs from this machine's uncached "
                                 f"run ({same:.1f} dB): other numerics; --overwrite makes new references")
            checked = True
        self.base_denoise_s = statistics.median(self.uncached_s)

    def measure(self, point: Point, indices: list[int]) -> None:
        """Measure ``point`` on the jobs it lacks (from progress.json when measured before)."""
        jobs = {j.index: j for j in self.plan.base.jobs}
        for i in indices:
            if i in point.per_prompt:
                continue
            job = jobs[i]
            key = job_key(job, self.context(point.method, point.params))
            got = self.store.point(key)
            if got is None:
                got = self._measure_one(point, job)
                self.store.add_point(key, got)
            else:
                self.reused += 1
            point.per_prompt[i] = got

    def _measure_one(self, point: Point, job: Any) -> dict[str, Any]:
        from .. import metrics
        from ..bench import _has_probe
        from ..video import to_uint8

        if self.base_denoise_s is None:
            self.time_base()
        self.set_cache(point.method, point.params)
        frames, rep = self.runner.generate(job)
        self._generated()
        ref, test = self.refs[job.index].frames / 255.0, to_uint8(frames) / 255.0
        stats = rep["cache"]["stats"]
        got = {
            "psnr": metrics.psnr(ref, test), "ssim": metrics.ssim(ref, test),
            "compute_ratio": stats["compute_ratio"], "attention_compute_ratio": stats["attention_compute_ratio"],
            "denoise_s": self.seconds(rep),
            "speedup": self.base_denoise_s / max(self.seconds(rep), 1e-9),
        }
        if _has_probe(self.runner, job.prompt):
            got["adherent"] = bool(metrics.adherence(test, job.prompt)["ok"])
        return got

    def calibrate_magcache(self, params: dict[str, Any]) -> list[float]:
        """One video in diffusers' calibration mode; the ratios it measured."""
        from ..caches import baselines

        baselines._CALIBRATED.pop(self.runner.pipe.transformer, None)
        self.set_cache("magcache", {k: v for k, v in params.items() if k != "mag_ratios"})
        self.events.status("magcache: calibrating the magnitude ratios")
        self.runner.generate(self.plan.base.jobs[0])
        self._generated()
        ratios = self.runner.cache_params.get("mag_ratios")
        if not ratios:
            raise UsageError("magcache: the calibration video gave no magnitude ratios")
        self._cache = None
        return list(ratios)

    # -- the whole run -------------------------------------------------------------------------
    def run(self) -> TuneResult:
        t0 = time.perf_counter()
        self.store.open(fresh=self.plan.overwrite)
        self.runner.load()
        try:
            self.references()
            results = [self._method(m) for m in self.plan.methods]
        finally:
            self.runner.close()
        return TuneResult(self.plan, results, time.perf_counter() - t0, self.videos, self.reused,
                          machine(self.runner.device), self.runner.device)

    def _method(self, mp: MethodPlan) -> MethodResult:
        from ..loading import transformers_of

        transformer = transformers_of(self.runner.pipe)[0]
        first = self.plan.base.jobs[0]
        ctx = knobs.Context(mp.method, mp.params, first.steps, self.refs[first.index].timesteps,
                            [self.refs[j.index] for j in self.plan.base.jobs], transformer,
                            self.plan.base.model.family, mp.user_keys, self.calibrate_magcache)
        knob = knobs.BUILDERS[mp.method](ctx)
        for note in knob.notes:
            self.events.note(f"{mp.method}: {note}")
        search = Search(self.plan.target, self.measure, [j.index for j in self.plan.base.jobs],
                        self.events.status)
        result = search.run(knob)
        if result.chosen is not None:
            self.events.note(f"{mp.method}: {result.chosen.label}: {describe(result.chosen.summary())}")
        else:
            self.events.note(f"{mp.method}: no setting meets {self.plan.target.words()}")
        return result

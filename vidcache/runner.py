"""One loaded pipeline, many jobs: plan everything up front, then generate, time and write each video.

``plan_run`` does all the checking that needs no weights, so a typo in the 500th line of a prompt
file fails in a second, not after the model has loaded. ``Runner`` loads once and renders jobs.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from . import caches, memory, parallel, presets, quantize
from . import jobs as jobs_mod
from .compile import compile_pipeline
from .errors import RankLost, UsageError, one_line
from .images import image_report, load_fitted
from .loading import LoadOptions, load_pipeline, pick_device, transformers_of
from .models import ResolvedModel, resolve
from .report import device_info, versions, video_row
from .timing import PipelineTimer
from .video import write_json, write_mp4

GEN_FLAGS = ("frames", "height", "width", "steps", "guidance", "negative_prompt", "flow_shift", "fps")


@dataclass
class RunConfig:
    model: str = "tiny"
    cache: str = "none"  # a method, or method.variant of the preset (teacache.fast)
    preset_file: str | None = None
    sets: list[str] = field(default_factory=list)
    out: Path = Path("outputs")
    load: LoadOptions = field(default_factory=LoadOptions)
    overwrite: bool = False
    shard: str | None = None
    seed: int = 0
    flags: dict[str, Any] = field(default_factory=dict)  # GEN_FLAGS given on the command line
    parallel: parallel.ParallelOptions = field(default_factory=parallel.ParallelOptions)
    image: str | None = None  # --image: the conditioning image of every job (image-to-video)
    fit: str = "crop"  # --fit: how images are fitted to the frame


@dataclass
class Plan:
    model: ResolvedModel
    method: str
    variant: str | None
    cache_params: dict[str, Any]
    jobs: list[jobs_mod.Job]
    config: RunConfig
    parallel: parallel.ParallelPlan | None = None  # None: one process


def split_cache(name: str) -> tuple[str, str | None]:
    method, _, variant = name.partition(".")
    method = caches.canonical(method.strip().lower())
    if caches.method_fields(method) is None:
        raise UsageError(f"--cache {name}: unknown method (known: {', '.join(caches.METHOD_NAMES)})")
    return method, variant or None


def _apply_sets(preset: presets.Preset, method: str, sets: list[str]) -> dict[str, Any]:
    """``--set key=value``: ``defaults.steps=30`` changes a default; ``thresh=0.1`` or
    ``teacache.thresh=0.1`` a parameter of the chosen method. Returns the method overrides."""
    method_over: dict[str, Any] = {}
    fields = caches.method_fields(method) or set()
    for raw, (key, value) in zip(sets, presets.parse_sets(sets)):
        scope, dot, name = key.rpartition(".")
        if dot and scope == "defaults":
            presets.check_defaults({name: value}, f"--set {key}")
            preset.defaults[name] = value
            continue
        if dot and scope != method:
            raise UsageError(f"--set {raw}: '{scope}' is neither 'defaults' nor the chosen cache '{method}'")
        if name not in fields:
            known = f"known: {', '.join(sorted(fields))}" if fields else "--cache none takes no parameters"
            raise UsageError(f"--set {raw}: unknown key for {method} ({known})")
        method_over[name] = value
    return method_over


def _fit_text_len(model: ResolvedModel, preset: presets.Preset) -> None:
    """Use the text length the checkpoint's config fixes (a CogVideoX folder with positional
    embeddings for 16 text tokens cannot take the preset's 226); a different length the user asked
    for (``--preset FILE``, ``--set defaults.text_len``) is refused before anything loads."""
    required, why = model.required_text_len()
    asked = preset.defaults["text_len"]
    if required is None or asked == required:
        return
    if asked != presets.load(model.preset).defaults.get("text_len"):
        raise UsageError(f"text_len {asked}: {model.name} needs text_len {required} ({why})")
    preset.defaults["text_len"] = required


def _check_size(model: ResolvedModel, jobs: list[jobs_mod.Job]) -> None:
    size, why = model.required_size()
    for job in jobs if size else ():
        if (job.height, job.width) != size:
            raise UsageError(f"job {job.name}: {job.height}x{job.width} not allowed: {model.name} takes "
                             f"{size[0]}x{size[1]} only ({why}); use --height {size[0]} --width {size[1]}")


def plan_run(cfg: RunConfig, prompts: list[jobs_mod.Prompt]) -> Plan:
    model = resolve(cfg.model)
    method, variant = split_cache(cfg.cache)
    preset = caches.check_preset(presets.load(model.preset))
    if cfg.preset_file:
        preset = presets.merge(preset, caches.check_preset(presets.load_file(cfg.preset_file)))
    method_over = _apply_sets(preset, method, cfg.sets)
    params = presets.method_params(preset, method, variant) if method != "none" else {}
    params.update(method_over)
    for key in ("frames", "height", "width", "steps", "guidance", "fps", "text_len"):
        if key not in preset.defaults:
            raise UsageError(f"preset {preset.name}: [defaults] lacks '{key}'")
    _fit_text_len(model, preset)
    all_jobs = jobs_mod.build_jobs(prompts, preset.defaults, cfg.flags, cfg.seed, cfg.image, cfg.fit)
    model = model.for_jobs(all_jobs)
    all_jobs = model.sized_from_images(all_jobs, prompts, cfg.flags)
    jobs_mod.validate(all_jobs, model.family, model.size_multiple, model.max_frames)
    _check_size(model, all_jobs)
    todo = jobs_mod.shard(all_jobs, cfg.shard)
    par = parallel.plan_parallel(cfg.parallel, model, todo, cfg.load.device, cfg.load.attention)
    return Plan(model, method, variant, params, todo, cfg, par)


class Events(Protocol):
    """What a front end (the CLI's rich progress, or nothing) is told while a run goes on."""

    def video_start(self, job: jobs_mod.Job, position: int, total: int) -> None: ...
    def step(self, done: int, total: int) -> None: ...
    def video_end(self, row: dict[str, Any]) -> None: ...
    def warn(self, message: str) -> None: ...


class QuietEvents:
    def video_start(self, job, position, total): ...
    def step(self, done, total): ...
    def video_end(self, row): ...
    def warn(self, message):
        print(f"warning: {message}", file=sys.stderr)


class _OtherRankEvents(QuietEvents):
    """Ranks other than 0 render the same videos silently: rank 0 tells the user."""

    def warn(self, message): ...


def _peak_bytes(device: str) -> tuple[int, str]:
    if device == "cuda":
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss * (1 if sys.platform == "darwin" else 1024)), "process_peak_rss"


def _set_flow_shift(pipe, shift: float | None) -> None:
    if shift is None:
        return
    sched = pipe.scheduler
    key = "shift" if "shift" in sched.config else "flow_shift" if "flow_shift" in sched.config else None
    if key and sched.config[key] != shift:
        pipe.scheduler = type(sched).from_config(sched.config, **{key: shift})


class Runner:
    def __init__(self, plan: Plan, events: Events | None = None):
        self.plan = plan
        self.events = events or QuietEvents()
        self.pipe = None
        self.device = "cpu"
        self.dtype = torch.float32
        self.method, self.variant = plan.method, plan.variant
        self.requested_params: dict[str, Any] = dict(plan.cache_params)
        self.cache_params: dict[str, Any] = {}
        self.out = Path(plan.config.out)
        self.par: parallel.ParallelRun | None = None

    # -- setup -------------------------------------------------------------------------------
    def start_parallel(self) -> None:
        """Join the torchrun process group (before loading: NCCL picks this rank's GPU)."""
        if self.plan.parallel is not None and self.par is None:
            self.par = parallel.ParallelRun(self.plan.parallel, pick_device(self.plan.config.load.device))
            if not self.par.is_main:
                self.events = _OtherRankEvents()

    @property
    def is_main(self) -> bool:
        return self.par is None or self.par.is_main

    def load(self) -> None:
        self.start_parallel()
        self.pipe, self.device, self.dtype = load_pipeline(self.plan.model, self.plan.config.load)
        self.timer = PipelineTimer(self.pipe, transformers_of(self.pipe), self.device)
        self.set_cache(self.method, self.variant, self.requested_params)
        if self.par is not None:  # after the cache: diffusers' split/gather hooks must wrap the cache's
            self.par.enable(self.pipe, transformers_of(self.pipe))
            self._compile()  # again: the compiled regions must lie below the parallel hooks too

    def _compile(self) -> None:
        """``--compile``: compile the hook-free regions of the blocks, below every hook (vidcache.compile)."""
        if self.plan.config.load.compile:
            compile_pipeline(self.pipe)

    def set_cache(self, method: str, variant: str | None, params: dict[str, Any]) -> None:
        """Swap the caching method on the loaded pipeline (the bench runs several on one load)."""
        if self.par is not None and self.par.enabled:
            raise UsageError("the cache cannot change once context parallelism is enabled (it must come first)")
        caches.remove_cache(self.pipe)
        self.method, self.variant, self.requested_params = method, variant, dict(params)
        self.cache_params = caches.apply_cache(self.pipe, method, params=params) if method != "none" else {}
        self._compile()  # the compiled regions follow the hooks (a block compiled whole for TeaCache is not for PAB)
        memory.check_cache_fits(self.pipe, method, self.cache_params or self.requested_params, self.plan.jobs,
                                self.device, weights_offloaded=self.plan.config.load.offload, ranks=self._ranks())

    def _ranks(self) -> int:
        return self.plan.parallel.world_size if self.plan.parallel is not None else 1

    def close(self) -> None:
        if self.pipe is not None:
            self.timer.close()
            caches.remove_cache(self.pipe)
        if self.par is not None:
            self.par.close()

    def job_context(self) -> dict[str, Any]:
        m = self.plan.model
        context = {"model": m.source, "family": m.family.name, "dtype": str(self.plan.config.load.dtype),
                   "cache": {"method": self.method, "variant": self.variant,
                             "params": self.requested_params}}
        if self.plan.config.load.quantize != "none":  # absent when off: earlier reports keep their keys
            context["quantize"] = self.plan.config.load.quantize
        return context

    # -- resume ------------------------------------------------------------------------------
    def finished(self, job: jobs_mod.Job) -> dict[str, Any] | None:
        """The existing report when this exact job is already done (and its MP4 is there)."""
        if self.plan.config.overwrite:
            return None
        mp4, rep = self.out / f"{job.name}.mp4", self.out / f"{job.name}.json"
        if not (mp4.is_file() and rep.is_file()):
            return None
        try:
            report = json.loads(rep.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return report if report.get("job_key") == job.key(self.job_context()) else None

    # -- one video ---------------------------------------------------------------------------
    def _call_kwargs(self, job: jobs_mod.Job) -> dict[str, Any]:
        fam = self.plan.model.family
        kw: dict[str, Any] = {
            "prompt": job.prompt,
            "height": job.height,
            "width": job.width,
            "num_frames": job.frames,
            "num_inference_steps": job.steps,
            "guidance_scale": job.guidance,
            "generator": torch.Generator("cpu").manual_seed(job.seed),
            "output_type": "np",
            "max_sequence_length": job.text_len,
            "callback_on_step_end": self._on_step,
        }
        if fam.accepts_negative_prompt:
            kw["negative_prompt"] = job.negative_prompt
        if job.guidance_2 is not None and getattr(self.pipe, "transformer_2", None) is not None:
            kw["guidance_scale_2"] = job.guidance_2
        if job.image is not None:
            kw["image"] = load_fitted(job.image, job.width, job.height, job.fit)
        if not self.is_main:  # only rank 0 writes the video: the others skip the VAE decode
            kw["output_type"] = "latent"
        return fam.pipeline_kwargs(kw, self.plan.model.mode, self.pipe)

    def _on_step(self, pipe, step, timestep, callback_kwargs):
        self.timer.on_step_end(pipe, step, timestep, callback_kwargs)
        self.events.step(step + 1, self._steps)
        return {}

    def generate(self, job: jobs_mod.Job) -> tuple[Any, dict[str, Any]]:
        """Render one job; returns (frames, report without output paths)."""
        caches.reset_cache(self.pipe)
        if self.plan.model.family.uses_flow_shift:
            _set_flow_shift(self.pipe, job.flow_shift)
        self.timer.start_video()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self._steps = job.steps
        t0 = self.timer.now()
        with torch.inference_mode():
            out = self.pipe(**self._call_kwargs(job))
        total = self.timer.now() - t0
        times = self.timer.times
        stats = caches.cache_stats(self.pipe)
        if self.par is not None:
            stats = self.par.merge_stats(stats)
        for w in stats.get("warnings", []):
            self.events.warn(f"{job.name}: {w}")
        peak, kind = _peak_bytes(self.device)
        m = self.plan.model
        report = {
            "name": job.name,
            "status": "done",
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "seed": job.seed,
            "model": {"name": m.name, "family": m.family.name, "mode": m.mode, "source": m.source},
            "frames": job.frames,
            "height": job.height,
            "width": job.width,
            "steps": job.steps,
            "guidance": job.guidance,
            "guidance_2": job.guidance_2,
            "flow_shift": job.flow_shift,
            "fps": job.fps,
            "image": self._image_report(job),
            "cache": {"method": caches.report_name(self.method), "variant": self.variant,
                      "params": self.cache_params, "stats": stats,
                      # what vidcache.memory expected the cache to hold (per process); None: no estimate
                      "estimate_bytes": memory.pipeline_estimate(self.pipe, self.method,
                                                                 self.cache_params or self.requested_params,
                                                                 job, self._ranks())},
            "timing": {
                "text_encode_s": times.text_encode_s,
                "denoise_s": sum(times.step_s),
                "decode_s": times.decode_s,
                "total_s": total,
                "step_s": times.step_s,
            },
            "memory": {"peak_bytes": peak, "kind": kind},
            "device": device_info(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "quantize": quantize.describe(self.pipe),
            "versions": versions(),
            "job": asdict(job),
            "job_key": job.key(self.job_context()),
        }
        if self.par is not None:
            report["parallel"] = self.par.report(peak)
        return out.frames[0], report

    @staticmethod
    def _image_report(job: jobs_mod.Job) -> dict[str, Any] | None:
        return None if job.image is None else image_report(job.image, job.image_sha256, job.fit)

    def render(self, job: jobs_mod.Job, debug: bool = False) -> dict[str, Any]:
        """Generate and write one job's MP4 and report; failures become a 'failed' report.

        Under torchrun the ranks agree on the outcome before anything is written, so that a video
        that failed on any rank is failed on all of them and they move on to the next one together
        (or, when the others cannot leave the video, the launch stops: ``agree_outcome``).
        """
        error, frames, report = None, None, {}
        try:
            frames, report = self.generate(job)
        except torch.OutOfMemoryError:
            error = (f"out of memory on {self.device}: try fewer frames (--frames), a smaller size "
                     "(--height/--width), --offload, or a smaller model")
        except MemoryError:
            error = "out of memory: try fewer frames (--frames), a smaller size, or a smaller model"
        except (KeyboardInterrupt, UsageError):
            raise
        except Exception as err:
            if self.par is None or debug:
                raise
            error = one_line(err)
        if self.par is not None:
            error = self.par.agree_outcome(error)
        if error is not None:
            return self._failed(job, error)
        if not self.is_main:
            return report
        mp4 = write_mp4(self.out / f"{job.name}.mp4", frames, job.fps)
        report["mp4"] = mp4.name
        write_json(self.out / f"{job.name}.json", report)
        return report

    def _failed(self, job: jobs_mod.Job, message: str) -> dict[str, Any]:
        if self.device == "cuda":
            torch.cuda.empty_cache()
        return {"name": job.name, "status": "failed", "error": message, "prompt": job.prompt}

    # -- the batch ---------------------------------------------------------------------------
    def run(self, debug: bool = False) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        todo = self.plan.jobs
        rows, t0 = [], time.perf_counter()
        loaded = False
        self.start_parallel()
        agreed = None
        if self.par is not None:  # rank 0 reads the disk; every rank must run the same jobs
            agreed = self.par.agree_flags([self.is_main and self.finished(j) is not None for j in todo])
        for pos, job in enumerate(todo):
            self.events.video_start(job, pos, len(todo))
            done = self.finished(job) if agreed is None else (
                (self.finished(job) or {"name": job.name}) if agreed[pos] else None)
            if done is not None:
                row = video_row(done) | {"status": "skipped"}
            else:
                if not loaded:
                    self.load()
                    loaded = True
                try:
                    row = video_row(self.render(job, debug))
                except RankLost as err:
                    rows.append(video_row(self._failed(job, str(err))))
                    self.summary(rows, time.perf_counter() - t0)  # rank 0: run.json up to here
                    raise
                except (KeyboardInterrupt, UsageError):
                    raise
                except Exception as err:  # noqa: BLE001 - one failed video must not stop the batch
                    if debug:
                        raise
                    row = video_row(self._failed(job, one_line(err)))
            rows.append(row)
            self.events.video_end(row)
        return self.summary(rows, time.perf_counter() - t0)

    def summary(self, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        m = self.plan.model
        summary = {
            "model": {"name": m.name, "family": m.family.name, "source": m.source},
            "cache": {"method": caches.report_name(self.method), "variant": self.variant,
                      "params": self.cache_params or self.requested_params},
            "quantize": self.plan.config.load.quantize,
            "out": str(self.out),
            "seconds": seconds,
            "counts": {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")},
            "videos": rows,
            "versions": versions(),
        }
        if self.is_main:
            write_json(self.out / "run.json", summary)
        return summary

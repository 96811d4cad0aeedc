"""One loaded pipeline, many jobs: plan everything up front, then generate, time and write each video.

``plan_run`` does all the checking that needs no weights (every value, every cache parameter, the
output folder), so a typo in the 500th line of a prompt file fails in a second, not after the model
has loaded. ``Runner`` loads once and renders jobs; ``Runner.run_job`` is the whole protocol for one
job in a shared folder (skip it if done, leave it to a live claimer, else claim, render, publish,
release: ``vidcache.outputs``), which ``run`` applies to the batch and other drivers can call.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch

from . import caches, faults, interrupts, memory, outputs, parallel, presets, quantize
from . import jobs as jobs_mod
from .compile import compile_pipeline
from .errors import OutputError, RankLost, UsageError, one_line
from .images import image_report, load_fitted
from .loading import LoadOptions, load_pipeline, pick_device, transformers_of
from .models import ResolvedModel, resolve
from .report import STATUSES, device_info, versions, video_row
from .timing import PipelineTimer

GEN_FLAGS = ("frames", "height", "width", "steps", "guidance", "negative_prompt", "flow_shift", "fps")


@dataclass
class RunConfig:
    model: str = "tiny"
    cache: str = "none"  # a method, method.variant of the preset (teacache.fast), or "auto"
    quality: float | None = None  # --cache auto: the PSNR bar (None: the [tuned] table's target)
    preset_file: str | None = None
    sets: list[str] = field(default_factory=list)
    out: Path = Path("outputs")
    load: LoadOptions = field(default_factory=LoadOptions)
    overwrite: bool = False
    shard: str | None = None
    seed: int | None = None  # --seed: every job's seed (None: a line's own, else jobs.DEFAULT_SEED)
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
    auto: dict[str, Any] | None = None  # --cache auto: the measurement the choice rests on

    def context(self) -> dict[str, Any]:
        """What decides every video's output besides the job itself (part of each job key)."""
        return job_context(self.model, self.config.load, self.method, self.variant, self.cache_params)

    def target(self, job: jobs_mod.Job) -> outputs.Target:
        """The job's files in ``--out``, for a driver that checks or claims jobs without loading a model."""
        return outputs.Target(Path(self.config.out), job.name, job.key(self.context()))


def job_context(model: ResolvedModel, load: LoadOptions, method: str, variant: str | None,
                params: dict[str, Any]) -> dict[str, Any]:
    context = {"model": model.source, "family": model.family.name, "dtype": str(load.dtype),
               "cache": {"method": method, "variant": variant, "params": params}}
    if load.quantize != "none":  # absent when off: earlier reports keep their keys
        context["quantize"] = load.quantize
    return context


def check_cache_params(spec: str, method: str, params: dict[str, Any]) -> None:
    """Build the method's config from the merged parameters (no weights needed), so that a bad value
    (``thresh=abc``, a NaN, a window the wrong way round) is a usage error before loading."""
    if method == "none":
        return
    try:
        caches.REGISTRY[method].config(**params)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--cache {spec}: {err}") from None


def split_cache(name: str) -> tuple[str, str | None]:
    method, _, variant = name.partition(".")
    method = caches.canonical(method.strip().lower())
    if caches.method_fields(method) is None:
        raise UsageError(f"--cache {name}: unknown method (known: {', '.join(caches.METHOD_NAMES)}, or auto)")
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
            raise UsageError(f"{job.where or job.name}: {job.height}x{job.width} not allowed: {model.name} takes "
                             f"{size[0]}x{size[1]} only ({why}); use --height {size[0]} --width {size[1]}")


def plan_run(cfg: RunConfig, prompts: list[jobs_mod.Prompt]) -> Plan:
    from .tune import auto

    model = resolve(cfg.model)
    is_auto = cfg.cache.strip().lower() == "auto"
    if cfg.quality is not None and not is_auto:
        raise UsageError("--quality is the bar of --cache auto; give --cache auto or leave it out")
    auto.check_quality(cfg.quality)
    method, variant = ("none", None) if is_auto else split_cache(cfg.cache)
    preset = caches.check_preset(presets.load(model.preset))
    if cfg.preset_file:
        preset = presets.merge(preset, caches.check_preset(presets.load_file(cfg.preset_file)))
    why = None
    if is_auto:
        method, why = auto.choose(preset, cfg.quality)
    stated_steps = preset.defaults.get("steps")  # the preset files' step count, before --set and flags
    method_over = _apply_sets(preset, method, cfg.sets)
    params = presets.method_params(preset, method, variant) if method != "none" else {}
    params.update(method_over)
    params = caches.stated_for(method, params, stated_steps)
    for key in ("frames", "height", "width", "steps", "guidance", "fps", "text_len"):
        if key not in preset.defaults:
            raise UsageError(f"preset {preset.name}: [defaults] lacks '{key}'")
    _fit_text_len(model, preset)
    check_cache_params(cfg.cache, method, params)
    all_jobs = jobs_mod.build_jobs(prompts, preset.defaults, cfg.flags, cfg.seed, cfg.image, cfg.fit)
    model = model.for_jobs(all_jobs)
    all_jobs = model.sized_from_images(all_jobs, prompts, cfg.flags)
    jobs_mod.validate(all_jobs, model.family, model.size_multiple, model.max_frames)
    _check_size(model, all_jobs)
    all_jobs = jobs_mod.name_jobs(all_jobs, job_context(model, cfg.load, method, variant, params))
    todo = jobs_mod.shard(all_jobs, cfg.shard)
    par = parallel.plan_parallel(cfg.parallel, model, todo, cfg.load.device, cfg.load.attention)
    if parallel.is_main():  # under torchrun only rank 0 touches the disk
        outputs.check_out(cfg.out)
    return Plan(model, method, variant, params, todo, cfg, par, auto=why)


def _note(method: str) -> dict[str, str]:
    """``method_note`` for a report's ``cache`` table, where the method has one (MixCache: our design)."""
    note = caches.method_note(method) if method != "none" else None
    return {"method_note": note} if note else {}


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
        self._claim: outputs.Claim | None = None
        self.last_summary: dict[str, Any] | None = None  # what ``run`` returned or would have

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
        return job_context(self.plan.model, self.plan.config.load, self.method, self.variant, self.requested_params)

    # -- one job in a shared folder (vidcache.outputs) ------------------------------------------
    def target(self, job: jobs_mod.Job) -> outputs.Target:
        return outputs.Target(self.out, job.name, job.key(self.job_context()))

    def finished(self, job: jobs_mod.Job) -> dict[str, Any] | None:
        """The report when this exact job is done: its key, and the MP4 it names byte for byte
        (``--overwrite``: never)."""
        if self.plan.config.overwrite:
            return None
        return outputs.finished(self.target(job))

    def claim(self, job: jobs_mod.Job) -> outputs.Claim | None:
        """This process's claim on the job's files; None while a live process holds them."""
        return outputs.claim(self.target(job))

    def _decide(self, job: jobs_mod.Job) -> tuple[str, Any]:
        """What to do with ``job`` (rank 0, or the only process): ("skipped", report), ("claimed",
        holder), ("failed", why) or ("render", claim)."""
        target = self.target(job)
        done = self.finished(job)
        if done is not None:
            return "skipped", done
        claim = outputs.claim(target)
        if claim is None:
            return "claimed", outputs.holder(target)
        done = self.finished(job)  # finished by another process between the two looks
        why = None if done is not None or self.plan.config.overwrite else outputs.conflict(target)
        if done is not None or why:
            claim.release()
            return ("skipped", done) if done is not None else ("failed", why)
        return "render", claim

    def run_job(self, job: jobs_mod.Job, debug: bool = False) -> dict[str, Any]:
        """The whole protocol for one job; returns its summary row (status done, skipped, claimed or
        failed). Loads the pipeline the first time a job needs rendering. Under torchrun rank 0
        decides and every rank follows."""
        action, info = "", None
        if self.is_main:
            try:
                action, info = self._decide(job)
            except OSError as err:  # the folder went bad under the run (full, read-only, removed)
                action, info = "failed", f"{job.name}: cannot claim or check its files ({err.strerror or err})"
        if self.par is not None:
            actions = ("skipped", "claimed", "failed", "render")
            action = actions[self.par.agree_flags([action == a for a in actions]).index(True)]
        if action == "skipped":
            return video_row(info or {"name": job.name}) | {"status": "skipped"}
        if action == "claimed":
            return video_row({"name": job.name, "status": "claimed"}) | {"owner": outputs.describe(info)}
        if action == "failed":
            return video_row(self._failed(job, info or "refused on rank 0"))
        try:
            if self.pipe is None:  # a load that fails ends the batch (every video would fail alike)
                faults.point("load")
                self.load()
            if info is not None:
                info.touch(every_s=0)
            try:
                return video_row(self.render(job, debug, claim=info))
            except (KeyboardInterrupt, UsageError, RankLost):
                raise
            except Exception as err:  # noqa: BLE001 - one failed video must not stop the batch
                if debug:
                    raise
                return video_row(self._failed(job, one_line(err)))
        finally:
            if info is not None:
                info.release()

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
        if self._claim is not None:
            self._claim.touch()
        faults.point("step")
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
                      **_note(self.method),
                      "params": self.cache_params, "stats": stats,
                      # what vidcache.memory expected the cache to hold (per process); None: no estimate
                      "estimate_bytes": memory.pipeline_estimate(self.pipe, self.method,
                                                                 self.cache_params or self.requested_params,
                                                                 job, self._ranks())},
            "timing": {
                "text_encode_s": times.text_encode_s,
                "denoise_s": sum(times.step_s),
                "denoise_cpu_s": times.denoise_cpu_s,
                "decode_s": times.decode_s,
                "total_s": total,
                "step_s": times.step_s,
            },
            "memory": {"peak_bytes": peak, "kind": kind},
            "device": device_info(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "quantize": quantize.describe(self.pipe),
            "versions": versions(),
            "job": {k: v for k, v in asdict(job).items() if k != "where"},
            "job_key": job.key(self.job_context()),
        }
        if self.par is not None:
            report["parallel"] = self.par.report(peak)
        return out.frames[0], report

    @staticmethod
    def _image_report(job: jobs_mod.Job) -> dict[str, Any] | None:
        return None if job.image is None else image_report(job.image, job.image_sha256, job.fit)

    def render(self, job: jobs_mod.Job, debug: bool = False, claim: outputs.Claim | None = None) -> dict[str, Any]:
        """Generate and publish one job's MP4 and report (``outputs.publish``: the report last, naming
        the MP4's size and hash); failures become a 'failed' report. ``claim``: the caller's claim on
        the job's files, kept alive while the video renders.

        Under torchrun the ranks agree on the outcome before anything is written, so that a video
        that failed on any rank is failed on all of them and they move on to the next one together
        (or, when the others cannot leave the video, the launch stops: ``agree_outcome``).
        """
        error, frames, report = None, None, {}
        self._claim = claim
        try:
            frames, report = self.generate(job)
        except torch.OutOfMemoryError:
            error = _oom_message(self.device)
        except MemoryError:
            error = _oom_message(None)
        except (KeyboardInterrupt, UsageError):
            raise
        except Exception as err:
            if _allocation_failed(err):
                error = _oom_message(None)
            elif self.par is None or debug:
                raise
            else:
                error = one_line(err)
        finally:
            self._claim = None
        if self.par is not None:
            error = self.par.agree_outcome(error)
        if error is not None:
            return self._failed(job, error)
        if not self.is_main:
            return report
        faults.point("frames")
        if claim is not None:
            claim.touch(every_s=0)
        written = None
        try:
            with interrupts.deferred():  # a signal now lets the write finish first
                written = outputs.publish(self.target(job), frames, job.fps, report, self.plan.config.overwrite)
        except OutputError as err:
            return self._failed(job, str(err))
        except KeyboardInterrupt as err:  # the signal came during the write, which finished
            if written is not None:
                err.finished = written
            raise
        return written

    def _failed(self, job: jobs_mod.Job, message: str) -> dict[str, Any]:
        """The report of a video that was not written (none is kept on disk)."""
        if self.device == "cuda":
            torch.cuda.empty_cache()
        return {"name": job.name, "status": "failed", "error": message, "prompt": job.prompt}

    # -- the batch ---------------------------------------------------------------------------
    def run(self, debug: bool = False) -> dict[str, Any]:
        """Every job of the plan through ``run_job``; the run's summary is kept however the run
        ends (``runs/<UTC start>-<shard>.json`` and ``run.json``, rank 0), marked ``finished``,
        ``interrupted`` (a signal; the video in progress is listed as such) or ``stopped`` (an error
        that ended the batch)."""
        todo = self.plan.jobs
        started, t0 = datetime.now(timezone.utc), time.perf_counter()
        rows: list[dict[str, Any]] = []
        status, current = "stopped", None
        self.start_parallel()
        try:
            if self.is_main:
                outputs.check_out(self.out)
                outputs.sweep(self.out)
            for pos, job in enumerate(todo):
                current = job
                self.events.video_start(job, pos, len(todo))
                row = self.run_job(job, debug)
                rows.append(row)
                current = None
                self.events.video_end(row)
            status = "finished"
        except KeyboardInterrupt as err:
            status = "interrupted"
            if current is not None:  # the video in progress, or written if the signal came during its write
                rows.append(video_row(getattr(err, "finished", None) or {"name": current.name,
                                                                         "status": "interrupted"}))
            raise
        except RankLost as err:
            rows.append(video_row(self._failed(current, str(err))))
            raise
        finally:
            with interrupts.deferred():
                self.last_summary = self.summary(rows, time.perf_counter() - t0, status, started)
        return self.last_summary

    def summary(self, rows: list[dict[str, Any]], seconds: float, status: str = "finished",
                started: datetime | None = None, **extra: Any) -> dict[str, Any]:
        """The run's summary, kept on rank 0 (``outputs.write_summary``); ``extra`` adds keys (the farm's)."""
        m = self.plan.model
        started = started or datetime.now(timezone.utc)
        summary = {
            "status": status,
            "model": {"name": m.name, "family": m.family.name, "source": m.source},
            "cache": {"method": caches.report_name(self.method), "variant": self.variant,
                      **_note(self.method), "params": self.cache_params or self.requested_params},
            "quantize": self.plan.config.load.quantize,
            "out": str(self.out),
            "shard": self.plan.config.shard,
            "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds": seconds,
            "jobs": len(self.plan.jobs),
            "counts": {s: sum(r["status"] == s for r in rows) for s in STATUSES},
            "videos": rows,
            "versions": versions(),
        } | extra
        if self.is_main and self.out.is_dir():
            try:
                summary["summary_file"] = outputs.write_summary(self.out, summary, started,
                                                                outputs.run_label(self.plan.config.shard))
            except (OSError, ValueError, OutputError) as err:  # must not hide why the run ended
                self.events.warn(f"run summary not written in {self.out}: {err}")
        return summary


def _oom_message(device: str | None) -> str:
    """``device``: torch's out-of-memory error on it (offloading may help); None: the host's memory."""
    if device is None:
        return "out of memory: try fewer frames (--frames), a smaller size (--height/--width), or a smaller model"
    return (f"out of memory on {device}: try fewer frames (--frames), a smaller size (--height/--width), "
            "--offload, or a smaller model")


def _allocation_failed(err: BaseException) -> bool:
    """The allocator's own words for a request it cannot meet (PyTorch's CPU allocator raises a
    RuntimeError, not MemoryError)."""
    text = str(err)
    return isinstance(err, RuntimeError) and ("DefaultCPUAllocator" in text or "can't allocate memory" in text
                                              or "not enough memory" in text)

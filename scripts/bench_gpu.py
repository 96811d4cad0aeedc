#!/usr/bin/env python
"""vidcache on one GPU: seconds per forward, hook overhead, attention backends, quantization and
compiled kernels, and the speedup of every schedule-driven cache over a real 50-step timeline, at real
model sizes, within a time budget.

    python scripts/bench_gpu.py                # one CUDA GPU; JSON lines on stdout, progress on stderr
    python scripts/bench_gpu.py --parts kernels --budget-s 480   # only the kernel rows (a 10-minute slot)
    python scripts/bench_gpu.py --small        # the same code, tiny configs, on CPU in seconds (tests)

Why a script and not `vidcache bench`: the bench renders whole videos from real checkpoints and
measures quality too; this needs no weights (transformers are built from their published configs
with random weights, in bf16, allocated directly on the GPU) and times only the transformer, so
the numbers isolate what caching changes. What it measures, per model (Wan2.1-1.3B, Wan2.1-14B,
CogVideoX-5B, HunyuanVideo at a reduced frame count):

* ``forward``: seconds per uncached forward at the model's real size (median of a few, after a
  warm-up), tokens, and an effective TFLOP/s from a matmul FLOP count (every block weight applied
  to every token, plus attention: exact for Wan and CogVideoX, an overcount for HunyuanVideo's
  dual-stream blocks, whose text-stream weights only see the text tokens).
* ``overhead``: the same forwards with each cache attached under a rule that computes everything
  (PAB and FasterCache ranges of 1, TeaCache threshold ~0, AdaCache reuse length 1, MixCache never
  triggered): hooks, clock, statistics and decisions run, nothing is reused. ``overhead`` =
  cached / uncached - 1; vidcache's bar is <= 2 %. Uncached and cached runs alternate.
* ``attention`` (Wan2.1-1.3B): seconds per forward per attention backend (default SDPA, SDPA
  forced to cuDNN / flash / mem-efficient, and FlashAttention-3, flash-attn 2, xformers, Sage when
  installed), next to what ``--attention auto`` picks.
* ``timeline``: a real 50-step scheduler timeline (the preset's scheduler and flow shift) with CFG
  as each pipeline runs it: Wan two forwards per step in cache contexts "cond" / "uncond",
  CogVideoX one forward on the batch [uncond, cond], HunyuanVideo one (guidance-distilled). Run
  uncached, with each vidcache method registered in ``METHOD_NAMES`` among PAB, FasterCache (the
  model preset's tables) and TeaCache / AdaCache / MixCache with a *forced* schedule (random
  weights make adaptive decisions meaningless: the real rule still runs, device read included,
  then its answer is replaced by a fixed schedule computing the first 10 %, the last 2 steps and
  every other step in between; MixCache cycles its step / cfg / block reuse on the skipped
  steps), and with diffusers' own PAB and FasterCache on the same timeline and parameters.
  diffusers' FasterCache fails on Wan's separate CFG forwards: that is recorded as a row with its
  error. Timelines run at a reduced frame count (``timeline_frames``) to fit the time budget; the
  row says which. ``host_syncs`` counts synchronising CUDA calls in the run
  (``torch.cuda.set_sync_debug_mode``), uncached included.
* ``memory``: ``vidcache.memory``'s cache estimate of every method at the model's real size, and
  in timeline rows the estimate next to the measured ``cache.stats.memory_bytes``.
* ``kernel`` (part ``kernels``): seconds per forward, TFLOP/s (the same matmul FLOP count, so fp8
  rows are bf16-equivalent throughput) and ``peak_fraction`` of the card's bf16 dense peak, for each
  of bf16 / fp8 (``vidcache.quantize``; int8 weight-only on a CPU) x default SDPA / Sage x eager /
  compiled (``vidcache.compile``, inductor), with ``psnr_db`` and ``rel_l2`` of its output against
  bf16 SDPA eager on the same random-weight forward (PSNR with the reference's peak-to-peak range as
  the peak): the numeric cost. Both weight sets stay loaded and are swapped in place. A configuration
  vidcache refuses here (fp8 below compute capability 8.9, Sage without SageAttention 2.1.1+, on
  HunyuanVideo or on one-process CogVideoX) is a ``skipped`` row with vidcache's own message. Then
  ``stack`` rows: the timeline size's 50 steps for bf16 SDPA eager uncached, the fastest configuration
  uncached, and TeaCache / AdaCache (forced schedule, as above) on top of it.

A time budget (``--budget-s``, default 450 s) guards the run: a measurement whose estimated time
does not fit is skipped with a ``skipped`` row, never half-run (a compiled configuration counts the
longest compilation measured so far, 120 s before the first). ``--parts`` picks the parts (default
all); ``--models`` the cases, in the order of ``CASES``.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import itertools
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

SCHEDULE_METHODS = ("pab", "fastercache", "teacache", "adacache", "mixcache")
FORCED = ("teacache", "adacache", "mixcache")

# A cache rule that computes everything: the hooks run, nothing is reused.
COMPUTE_ALL: dict[str, dict[str, Any]] = {
    "pab": {"spatial_range": 1, "temporal_range": 1, "cross_range": 1, "spatial_window": [-1, 1001],
            "temporal_window": [-1, 1001], "cross_window": [-1, 1001]},
    "fastercache": {"attention_range": 1, "attention_window": [-1, 1001], "cfg_range": 1, "cfg_window": [-1, 1001]},
    # identity rescale: the accumulator is the raw distance (> 0), so TeaCache decides and never skips; the
    # official CogVideoX-5B polynomial is negative for small distances and would skip at any threshold
    "teacache": {"thresh": 1e-9, "coefficients": [0.0, 0.0, 0.0, 1.0, 0.0]},
    "adacache": {"codebook": [[1.0e9, 1]]},  # every step computed, the metric measured each time
    "mixcache": {"trigger": 0.0},  # never triggered: every step full, measurements still read
}

# -- model cases -------------------------------------------------------------------------------

_WAN = {"patch_size": (1, 2, 2), "attention_head_dim": 128, "in_channels": 16, "out_channels": 16, "text_dim": 4096,
        "freq_dim": 256, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
        "rope_max_seq_len": 1024}
_WAN_TINY = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4,
             "out_channels": 4, "text_dim": 32, "freq_dim": 32, "ffn_dim": 64, "num_layers": 2, "rope_max_seq_len": 64}
_COG_5B = {"num_attention_heads": 48, "attention_head_dim": 64, "in_channels": 16, "out_channels": 16,
           "time_embed_dim": 512, "text_embed_dim": 4096, "num_layers": 42, "sample_width": 90, "sample_height": 60,
           "sample_frames": 49, "patch_size": 2, "max_text_seq_length": 226, "use_rotary_positional_embeddings": True,
           "use_learned_positional_embeddings": False, "attention_bias": True, "norm_eps": 1e-5,
           "spatial_interpolation_scale": 1.875, "temporal_interpolation_scale": 1.0}
_COG_TINY = {"num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4, "out_channels": 4,
             "time_embed_dim": 32, "text_embed_dim": 32, "num_layers": 2, "sample_width": 8, "sample_height": 8,
             "sample_frames": 9, "patch_size": 2, "max_text_seq_length": 16, "use_rotary_positional_embeddings": True}
_HUNYUAN = {"in_channels": 16, "out_channels": 16, "num_attention_heads": 24, "attention_head_dim": 128,
            "num_layers": 20, "num_single_layers": 40, "num_refiner_layers": 2, "mlp_ratio": 4.0, "patch_size": 2,
            "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True, "text_embed_dim": 4096,
            "pooled_projection_dim": 768, "rope_theta": 256.0, "rope_axes_dim": (16, 56, 56)}
_HUNYUAN_TINY = {"in_channels": 4, "out_channels": 4, "num_attention_heads": 2, "attention_head_dim": 16,
                 "num_layers": 1, "num_single_layers": 1, "num_refiner_layers": 1, "patch_size": 2, "patch_size_t": 1,
                 "text_embed_dim": 32, "pooled_projection_dim": 32, "rope_axes_dim": (4, 6, 6)}


@dataclass(frozen=True)
class Case:
    name: str
    family: str  # wan, cogvideox, hunyuan
    cls: str
    config: dict[str, Any]
    preset: str  # vidcache preset: cache tables and the reference scheduler
    size: tuple[int, int, int]  # frames, height, width of the per-forward measurement
    timeline_size: tuple[int, int, int]
    text_len: int
    overhead_methods: tuple[str, ...] | None = None  # None: all of SCHEDULE_METHODS
    timeline_methods: tuple[str, ...] | None = None  # None: all, plus diffusers' PAB and FasterCache
    attention: bool = False  # time the attention backends too
    kernel_compile: bool = True  # the kernel rows' compiled configurations too
    forward_reps: int = 3
    overhead_rounds: int = 2
    overhead_steps: int = 2


CASES = [
    Case("wan2.1-1.3b", "wan", "WanTransformer3DModel", {**_WAN, "num_attention_heads": 12, "ffn_dim": 8960,
                                                          "num_layers": 30},
         "wan", (81, 480, 832), (17, 480, 832), 512, attention=True),
    Case("cogvideox-5b", "cogvideox", "CogVideoXTransformer3DModel", _COG_5B, "cogvideox-5b",
         (49, 480, 720), (13, 480, 720), 226, overhead_methods=("pab", "teacache"), overhead_rounds=1),
    Case("hunyuanvideo", "hunyuan", "HunyuanVideoTransformer3DModel", _HUNYUAN, "hunyuan",
         (33, 544, 960), (5, 544, 960), 256, overhead_methods=("pab",), overhead_rounds=1, forward_reps=2,
         timeline_methods=("pab", "fastercache", "teacache", "diffusers-pab")),
    Case("wan2.1-14b", "wan", "WanTransformer3DModel", {**_WAN, "num_attention_heads": 40, "ffn_dim": 13824,
                                                         "num_layers": 40},
         "wan-14b", (81, 480, 832), (5, 480, 832), 512, overhead_methods=("teacache",), overhead_rounds=1,
         overhead_steps=1, forward_reps=2, timeline_methods=("pab", "fastercache", "teacache", "diffusers-pab")),
]

_QUICK = {"forward_reps": 1, "overhead_rounds": 1, "overhead_steps": 2}  # 2: a decision is made
SMALL_CASES = [
    Case("wan-small", "wan", "WanTransformer3DModel", _WAN_TINY, "wan", (9, 64, 64), (9, 64, 64), 16, attention=True,
         **_QUICK),
    Case("cogvideox-small", "cogvideox", "CogVideoXTransformer3DModel", _COG_TINY, "cogvideox-5b",
         (9, 64, 64), (9, 64, 64), 16, overhead_methods=("pab", "teacache"), kernel_compile=False, **_QUICK),
    Case("hunyuan-small", "hunyuan", "HunyuanVideoTransformer3DModel", _HUNYUAN_TINY, "hunyuan",
         (9, 64, 64), (9, 64, 64), 32, overhead_methods=("pab",), kernel_compile=False, **_QUICK,
         timeline_methods=("pab", "fastercache", "teacache", "diffusers-pab")),
    Case("wan-14b-small", "wan", "WanTransformer3DModel", {**_WAN_TINY, "num_layers": 3}, "wan-14b",
         (9, 64, 64), (9, 64, 64), 16, overhead_methods=("pab",), kernel_compile=False, **_QUICK,
         timeline_methods=("pab", "fastercache", "teacache", "diffusers-pab")),
]


# -- plumbing ------------------------------------------------------------------------------------


# bf16 dense tensor-core peak (TFLOP/s, no sparsity) of cards the kernel rows may run on; the rows
# give ``peak_fraction`` (effective TFLOP/s over this) where the card is listed
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4), ("H20", 148.0),
                    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("B200", 2250.0))
PARTS = ("forward", "kernels", "timeline")


def bf16_peak(name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


class Bench:
    def __init__(self, device: str, dtype: torch.dtype, budget_s: float, steps: int,
                 parts: tuple[str, ...] = PARTS, compile_backend: str = "inductor", small: bool = False):
        self.device, self.dtype, self.steps, self.small = device, dtype, steps, small
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.parts = parts
        self.compile_options = {"backend": compile_backend}
        self.compile_s: list[float] = []  # first calls of compiled configurations, as measured
        self.peak = bf16_peak(torch.cuda.get_device_name()) if device == "cuda" else None

    def now(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def fits(self, seconds: float) -> bool:
        return seconds < self.left()

    def compile_guess(self) -> float:
        """What a compilation will take: the longest measured so far, else a generous guess."""
        return max(self.compile_s) if self.compile_s else (120.0 if self.device == "cuda" else 15.0)


def emit(row: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()


def log(msg: str) -> None:
    sys.stderr.write(f"[bench_gpu] {msg}\n")
    sys.stderr.flush()


def short_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text.splitlines()[0][:300]


def build(case: Case, b: Bench) -> torch.nn.Module:
    """The transformer from its config, random weights, straight in the bench dtype on the device
    (Wan's fp32 modules kept in fp32 as ``from_pretrained`` does)."""
    import diffusers

    cls = getattr(diffusers, case.cls)
    old = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(b.dtype)
        with torch.device(b.device):
            model = cls(**case.config)
    finally:
        torch.set_default_dtype(old)
    keep = getattr(cls, "_keep_in_fp32_modules", None) or []
    if b.dtype != torch.float32:
        for name, param in model.named_parameters():
            if any(k in name.split(".") for k in keep):
                param.data = param.data.float()
    return model.eval().requires_grad_(False)


@dataclass
class Inputs:
    kwargs: dict[str, Any]  # everything but timestep (and, for Wan, encoder_hidden_states)
    batch: int
    tokens: int
    cond: torch.Tensor | None = None  # Wan's two text embeddings
    uncond: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def make_inputs(case: Case, tr: torch.nn.Module, size: tuple[int, int, int], b: Bench) -> Inputs:
    frames, height, width = size
    cfg = tr.config
    lat_f, lat_h, lat_w = (frames - 1) // 4 + 1, height // 8, width // 8
    gen = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(b.device, b.dtype)

    if case.family == "wan":
        tokens = lat_f * (lat_h // 2) * (lat_w // 2)
        return Inputs({"hidden_states": randn(1, cfg.in_channels, lat_f, lat_h, lat_w)}, 1, tokens,
                      cond=randn(1, case.text_len, cfg.text_dim), uncond=randn(1, case.text_len, cfg.text_dim))
    if case.family == "cogvideox":
        from diffusers import CogVideoXPipeline

        shim = SimpleNamespace(vae_scale_factor_spatial=8, transformer=tr)
        rotary = CogVideoXPipeline._prepare_rotary_positional_embeddings(
            shim, height, width, lat_f, torch.device(b.device))
        tokens = lat_f * (lat_h // 2) * (lat_w // 2)
        return Inputs({"hidden_states": randn(2, lat_f, cfg.in_channels, lat_h, lat_w),
                       "encoder_hidden_states": randn(2, case.text_len, cfg.text_embed_dim),
                       "image_rotary_emb": rotary}, 2, tokens)
    mask = torch.zeros(1, case.text_len, dtype=torch.int64)
    mask[:, : max(1, case.text_len // 8)] = 1  # a short prompt, padded as the tokenizer pads it
    tokens = lat_f * (lat_h // 2) * (lat_w // 2)
    return Inputs({"hidden_states": randn(1, cfg.in_channels, lat_f, lat_h, lat_w),
                   "encoder_hidden_states": randn(1, case.text_len, cfg.text_embed_dim),
                   "encoder_attention_mask": mask.to(b.device),
                   "pooled_projections": randn(1, cfg.pooled_projection_dim),
                   "guidance": torch.tensor([6000.0], device=b.device, dtype=b.dtype)}, 1, tokens)


def timesteps(case: Case, steps: int, b: Bench) -> list[float]:
    from vidcache.models.schedules import reference_timesteps

    return reference_timesteps(case.preset, steps)


def forwards_per_step(case: Case) -> int:
    return 2 if case.family == "wan" else 1


class Timeline:
    """Drives the transformer the way its pipeline does, over ``ts`` (or its first ``limit`` steps)."""

    def __init__(self, case: Case, tr: torch.nn.Module, inputs: Inputs, ts: list[float], b: Bench):
        self.case, self.tr, self.inputs, self.ts, self.b = case, tr, inputs, ts, b
        self.current = {"t": ts[0]}
        self.schedule_tensor = torch.tensor(ts, device=b.device)
        # what vidcache's hooks read from "the pipeline": its scheduler's timesteps and CFG flag
        self.pipe = SimpleNamespace(transformer=tr, scheduler=SimpleNamespace(timesteps=self.schedule_tensor),
                                    do_classifier_free_guidance=case.family != "hunyuan",
                                    vae_scale_factor_spatial=8, vae_scale_factor_temporal=4)

    def new_video(self) -> None:
        """A fresh schedule tensor, as ``set_timesteps`` makes for every pipeline call."""
        self.schedule_tensor = self.schedule_tensor.clone()
        self.pipe.scheduler.timesteps = self.schedule_tensor

    def calls(self, i: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Step ``i``'s transformer calls as its pipeline makes them: (cache context, its kwargs, call kwargs)."""
        inp, n = self.inputs, len(self.ts)
        t = self.schedule_tensor[i]
        if self.case.family == "wan":
            return [(name, {"step_index": i, "num_inference_steps": n},
                     {"timestep": t.expand(1), "encoder_hidden_states": enc, **inp.kwargs})
                    for name, enc in (("cond", inp.cond), ("uncond", inp.uncond))]
        if self.case.family == "cogvideox":
            return [("cond_uncond", {}, {"timestep": t.expand(2), **inp.kwargs})]
        return [("cond", {}, {"timestep": t.expand(1), **inp.kwargs})]

    def step(self, i: int) -> None:
        self.current["t"] = self.ts[i]
        for name, context, kwargs in self.calls(i):
            with self.tr.cache_context(name, **context):
                self.tr(return_dict=False, **kwargs)

    def output(self, i: int = 0) -> torch.Tensor:
        """The first forward of step ``i`` (Wan: the cond branch) in fp32, for numeric comparisons."""
        self.current["t"] = self.ts[i]
        name, context, kwargs = self.calls(i)[0]
        with torch.inference_mode(), self.tr.cache_context(name, **context):
            return self.tr(return_dict=False, **kwargs)[0].float()

    def run(self, limit: int | None = None) -> tuple[float, int]:
        """Seconds for the timeline and the host syncs it made (CUDA sync debug mode)."""
        self.new_video()
        steps = range(len(self.ts) if limit is None else min(limit, len(self.ts)))
        with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if self.b.device == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                t0 = self.b.now()
                for i in steps:
                    self.step(i)
                seconds = self.b.now() - t0
            finally:
                if self.b.device == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        return seconds, syncs


def matmul_flops(case: Case, tr: torch.nn.Module, inputs: Inputs) -> float:
    """2 x params-in-blocks x tokens per row (linear layers) + attention's 4 x S^2 x d per layer."""
    from vidcache.caches.base import layout_of

    layout = layout_of(tr)
    rows = inputs.batch
    text = case.text_len if case.family != "wan" else 0
    seq = inputs.tokens + text
    linear = sum(p.numel() for _, blk in layout.blocks(tr) for p in blk.parameters() if p.ndim == 2)
    dim = tr.config.num_attention_heads * tr.config.attention_head_dim
    n_self = sum(1 for _, _, k in layout.attention_modules(tr) if k == "spatial")
    n_cross = sum(1 for _, _, k in layout.attention_modules(tr) if k == "cross")
    attn = n_self * 4 * seq * seq * dim + n_cross * 4 * inputs.tokens * case.text_len * dim
    return rows * (2 * linear * seq + attn)


# -- measurements ----------------------------------------------------------------------------------


def registered() -> tuple[str, ...]:
    from vidcache.caches import METHOD_NAMES

    return tuple(m for m in SCHEDULE_METHODS if m in METHOD_NAMES)


def preset_params(case: Case, method: str) -> dict[str, Any]:
    from vidcache.caches import preset_params as pp

    try:
        return pp(case.preset, method)
    except Exception:  # noqa: BLE001 - a preset without the method's table: the method's defaults
        return {}


def forced_schedule(n: int) -> list[bool]:
    first = max(1, round(0.1 * n))
    return [i < first or i >= n - 2 or (i - first) % 2 == 0 for i in range(n)]


def force(tr: torch.nn.Module, method: str, schedule: list[bool]) -> Callable[[], None] | None:
    """Replace the method's answer by ``schedule`` (the real rule still runs first); returns the undo,
    or None when this method's decision point is not known (then it runs unforced)."""
    if method in ("teacache", "adacache"):
        heads = [h for m in tr.modules() if hasattr(m, "_diffusers_hook")
                 for h in m._diffusers_hook.hooks.values() if getattr(h, "head", False) and hasattr(h, "_decide")]
        if not heads:
            return None
        for h in heads:
            real = h._decide

            def forced(module, state, args, kwargs, hidden, _real=real):
                _real(module, state, args, kwargs, hidden)
                return bool(schedule[state.info.step]) or getattr(state, "residual", None) is None

            h._decide = forced
        return lambda: [h.__dict__.pop("_decide", None) for h in heads]
    if method == "mixcache":
        try:
            import vidcache.caches.mixcache as mc

            real_choose, plan_cls = mc.choose, mc.Plan
        except (ImportError, AttributeError):
            return None
        turn = itertools.count()

        signature = inspect.signature(real_choose)

        def forced_choose(*args, **kwargs):
            real_choose(*args, **kwargs)  # the real rule's cost
            a = signature.bind(*args, **kwargs).arguments
            config, shared, step = a["config"], a["shared"], a["step"]
            cfg_possible, candidates = a.get("cfg_possible", False), a.get("candidates", [])
            if schedule[step]:
                return plan_cls("full", reason="forced schedule")
            options = []
            if "step" in config.granularities:
                options.append(plan_cls("step"))
            if "cfg" in config.granularities and cfg_possible and shared.delta is not None:
                options.append(plan_cls("cfg"))
            if "block" in config.granularities and candidates:
                options.append(plan_cls("block", skip=frozenset(candidates)))
            return options[next(turn) % len(options)] if options else plan_cls("full")

        mc.choose = forced_choose

        def undo() -> None:
            mc.choose = real_choose

        return undo
    return None


def model_shape(case: Case, tr: torch.nn.Module, tl: Timeline):
    from vidcache.memory import model_shape as shape_of

    return shape_of(tl.pipe, tr)


def estimate(case: Case, method: str, params: dict[str, Any], shape, size: tuple[int, int, int]) -> int | None:
    from vidcache.memory import JobShape, estimate_cache_bytes

    frames, height, width = size
    return estimate_cache_bytes(method, params, shape, JobShape(frames, height, width, case.text_len,
                                                                cfg=case.family != "hunyuan"))


def bench_case(case: Case, b: Bench, methods: tuple[str, ...]) -> None:
    log(f"{case.name}: building")
    t0 = time.perf_counter()
    tr = build(case, b)
    n_params = sum(p.numel() for p in tr.parameters())
    emit({"kind": "model", "model": case.name, "params": n_params, "build_s": round(time.perf_counter() - t0, 2)})
    ts = timesteps(case, b.steps, b)
    if "forward" in b.parts:
        bench_forward(case, tr, b, methods, ts)
    if "kernels" in b.parts:
        bench_kernels(case, tr, b, ts)
    if "timeline" in b.parts:
        bench_timeline(case, tr, b, methods, ts)
    del tr
    gc.collect()
    if b.device == "cuda":
        torch.cuda.empty_cache()


def bench_forward(case: Case, tr: torch.nn.Module, b: Bench, methods: tuple[str, ...], ts: list[float]) -> None:
    """Seconds per forward at the real size, the cache memory estimates, the hook overhead and the
    attention backends."""
    import vidcache.caches as caches
    from vidcache.caches import apply_cache, cache_stats, remove_cache, reset_cache

    full = Timeline(case, tr, make_inputs(case, tr, case.size, b), ts, b)
    shape = model_shape(case, tr, full)
    for m in methods:
        params = {**caches.base.config_params(caches.REGISTRY[m].config()), **preset_params(case, m)}
        emit({"kind": "memory", "model": case.name, "method": m, "size": list(case.size),
              "estimate_bytes": estimate(case, m, params, shape, case.size)})
    per_step = forwards_per_step(case)
    warm, _ = full.run(limit=1)  # warm-up: allocator, cuBLAS heuristics
    fwd_s = warm / per_step
    reps = case.forward_reps
    if b.fits(reps * warm * 1.2):
        times = [full.run(limit=1)[0] / per_step for _ in range(reps)]
        fwd_s = statistics.median(times)
        flops = matmul_flops(case, tr, full.inputs)
        emit({"kind": "forward", "model": case.name, "size": list(case.size), "tokens": full.inputs.tokens,
              "batch": full.inputs.batch, "seconds": fwd_s, "tflops": flops / fwd_s / 1e12, "reps": reps})
    else:
        emit({"kind": "skipped", "model": case.name, "what": "forward", "reason": "time budget"})

    over = [m for m in (case.overhead_methods or methods) if m in methods and m in COMPUTE_ALL]
    k = case.overhead_steps
    need = case.overhead_rounds * (1 + len(over)) * k * per_step * fwd_s * 1.2
    if over and b.fits(need):
        samples: dict[str, list[float]] = {m: [] for m in ["none", *over]}
        ratios: dict[str, float | None] = {}
        for _ in range(case.overhead_rounds):
            remove_cache(full.pipe)
            samples["none"].append(full.run(limit=k)[0])
            for m in over:
                try:
                    apply_cache(full.pipe, m, params=COMPUTE_ALL[m])
                    reset_cache(full.pipe)
                    samples[m].append(full.run(limit=k)[0])
                    ratios[m] = cache_stats(full.pipe)["compute_ratio"]
                except Exception as err:  # noqa: BLE001 - one method's failure is a row, not the end
                    emit({"kind": "overhead", "model": case.name, "method": m, "error": short_error(err)})
                    samples.pop(m, None)
                    over = [x for x in over if x != m]
                finally:
                    remove_cache(full.pipe)
        base = statistics.median(samples["none"])
        for m in over:
            s = statistics.median(samples[m])
            emit({"kind": "overhead", "model": case.name, "method": m, "size": list(case.size),
                  "forwards": k * per_step, "seconds_none": base, "seconds_cached": s,
                  "overhead": s / base - 1.0, "compute_ratio": ratios.get(m)})
    elif over:
        emit({"kind": "skipped", "model": case.name, "what": "overhead", "reason": "time budget"})

    if case.attention:
        bench_attention(case, tr, full, b, fwd_s)
    del full
    gc.collect()


def bench_timeline(case: Case, tr: torch.nn.Module, b: Bench, methods: tuple[str, ...], ts: list[float]) -> None:
    """Every cache over the 50-step timeline, with diffusers' PAB and FasterCache beside them."""
    from vidcache.caches import remove_cache

    per_step = forwards_per_step(case)
    tl = Timeline(case, tr, make_inputs(case, tr, case.timeline_size, b), ts, b)
    shape = model_shape(case, tr, tl)
    tl.run(limit=1)  # warm-up at this size
    one, _ = tl.run(limit=1)
    est_run = one * len(ts) * 1.15
    if not b.fits(est_run):
        emit({"kind": "skipped", "model": case.name, "what": "timeline", "reason": "time budget"})
        return
    base_s, base_syncs = tl.run()
    common = {"kind": "timeline", "model": case.name, "size": list(case.timeline_size), "tokens": tl.inputs.tokens,
              "steps": len(ts), "forwards_uncached": len(ts) * per_step}
    emit({**common, "method": "none", "impl": "-", "seconds": base_s, "speedup": 1.0, "host_syncs": base_syncs})
    wanted = case.timeline_methods or (*methods, "diffusers-pab", "diffusers-fastercache")
    schedule = forced_schedule(len(ts))
    for m in wanted:
        if m not in methods and not m.startswith("diffusers-"):
            continue
        if not b.fits(base_s * 1.2):
            emit({**common, "kind": "skipped", "method": m, "what": "timeline", "reason": "time budget"})
            continue
        row = {**common, "method": m}
        undo = None
        try:
            if m.startswith("diffusers-"):
                row["impl"] = "diffusers"
                params = enable_diffusers(case, tr, m, tl)
            else:
                row["impl"] = "vidcache"
                params, undo, fields = attach_vidcache(case, tr, tl, m, schedule)
                row.update(fields)
            seconds, syncs = tl.run()
            row.update(seconds=seconds, speedup=base_s / seconds, host_syncs=syncs, params=params)
            if row["impl"] == "vidcache":
                row.update(cache_fields(tl), estimate_bytes=estimate(case, m, params, shape, case.timeline_size))
        except Exception as err:  # noqa: BLE001 - e.g. diffusers' FasterCache on Wan's separate CFG forwards
            row["error"] = short_error(err)
        finally:
            if undo is not None:
                undo()
            remove_cache(tl.pipe)
            if hasattr(tr, "disable_cache"):
                try:
                    tr.disable_cache()
                except Exception:  # noqa: BLE001, S110 - nothing of diffusers' was enabled
                    pass
        emit(row)
    del tl
    gc.collect()


# -- quantization x attention kernel x compile (--parts kernels) --------------------------------------

BASE = ("none", "native", False)  # (quantize, attention backend, compiled): bf16 SDPA eager
STACK_METHODS = ("teacache", "adacache")


def kernel_quantization(b: Bench) -> str:
    """fp8 on a GPU; on a CPU, where fp8 is refused, int8 weight-only runs the same rows."""
    return "fp8" if b.device == "cuda" else "int8"


def unusable(case: Case, b: Bench) -> dict[str, str | None]:
    """Why the quantization mode or Sage cannot run here (vidcache's own refusals), None if they can."""
    from vidcache.errors import UsageError
    from vidcache.loading import check_attention
    from vidcache.models import adapter_named
    from vidcache.quantize import check_quantize

    reasons: dict[str, str | None] = {}
    for what, check in ((kernel_quantization(b), lambda: check_quantize(kernel_quantization(b), b.device)),
                        ("sage", lambda: check_attention("sage", b.device, adapter_named(case.family), b.dtype))):
        try:
            check()
            reasons[what] = None
        except UsageError as err:
            reasons[what] = str(err)
    return reasons


def numerics(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """PSNR against ``ref`` with ``ref``'s peak-to-peak range as the peak, and the relative L2 error."""
    mse = float(torch.mean((out - ref) ** 2))
    peak = float(ref.max() - ref.min())
    return {"psnr_db": 10 * math.log10(peak**2 / mse) if mse > 0 else float("inf"),
            "rel_l2": float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref))}


class Kernels:
    """One transformer in every (quantization, attention backend, compiled) configuration: both weight
    sets stay loaded and are swapped in place (vidcache.quantize), the backend is diffusers' own."""

    def __init__(self, case: Case, tr: torch.nn.Module, b: Bench):
        from vidcache.quantize import quantize_pipeline

        self.case, self.tr, self.b = case, tr, b
        self.mode = kernel_quantization(b)
        self.reasons = unusable(case, b)
        self.weights = None
        if self.reasons[self.mode] is None:
            t0 = time.perf_counter()
            self.weights = quantize_pipeline(tr, self.mode, keep_original=True)
            emit({"kind": "quantize", "model": case.name, "mode": self.mode, "layers": len(self.weights.layers),
                  "skipped": self.weights.skipped, "seconds": round(time.perf_counter() - t0, 2)})
        self.set(*BASE)

    def configs(self) -> list[tuple[str, str, bool]]:
        return [(q, a, c) for q in ("none", self.mode) for a in ("native", "sage") for c in (False, True)]

    def why_not(self, quant: str, attention: str) -> str | None:
        return (self.reasons[self.mode] if quant != "none" else None) or (
            self.reasons["sage"] if attention == "sage" else None)

    def set(self, quant: str, attention: str, compiled: bool) -> None:
        from vidcache.compile import compile_transformer, uncompile_transformer

        if self.weights is not None:
            self.weights.use(quant != "none")
        self.tr.set_attention_backend(attention)
        if compiled:
            compile_transformer(self.tr, **self.b.compile_options)
        else:
            uncompile_transformer(self.tr)

    def close(self) -> None:
        self.set(*BASE)
        self.weights = None
        torch._dynamo.reset()  # the next model's blocks must not inherit these guards


def bench_kernels(case: Case, tr: torch.nn.Module, b: Bench, ts: list[float]) -> None:
    """Seconds per forward and TFLOP/s at the real size for bf16 / fp8 (CPU: int8) x SDPA / Sage x
    eager / compiled, each with its numeric cost against bf16 SDPA eager on the same random-weight
    forward; then the 50-step timeline with TeaCache and AdaCache on top of the fastest."""
    k = Kernels(case, tr, b)
    full = Timeline(case, tr, make_inputs(case, tr, case.size, b), ts, b)
    flops = matmul_flops(case, tr, full.inputs)
    per_step = forwards_per_step(case)
    ref = full.output()
    measured: dict[tuple[str, str, bool], float] = {}
    fwd_s = None
    try:
        for config in k.configs():
            quant, attention, compiled = config
            row = {"kind": "kernel", "model": case.name, "size": list(case.size), "tokens": full.inputs.tokens,
                   "quantize": quant, "attention": attention, "compile": compiled}
            reason = k.why_not(quant, attention) or (None if case.kernel_compile or not compiled else
                                                     "compiled rows off for this case (--small: one case compiles)")
            need = 0.0 if fwd_s is None else (case.forward_reps + 2) * fwd_s * per_step * 1.2
            if compiled:
                need += b.compile_guess()
            if reason is None and not b.fits(need):
                reason = "time budget"
            if reason is not None:
                emit({**row, "kind": "skipped", "what": "kernel", "reason": reason})
                continue
            try:
                k.set(*config)
                t0 = b.now()
                full.run(limit=1)  # warm-up; compiles a compiled configuration
                first = b.now() - t0
                seconds = statistics.median(full.run(limit=1)[0] / per_step for _ in range(case.forward_reps))
                if compiled:
                    b.compile_s.append(first)
                fwd_s = fwd_s or seconds
                measured[config] = seconds
                row.update(seconds=seconds, tflops=flops / seconds / 1e12, first_call_s=first, reps=case.forward_reps,
                           speedup=measured[BASE] / seconds if BASE in measured else None)
                if b.peak:
                    row["peak_fraction"] = row["tflops"] / b.peak
                if config != BASE:
                    row.update(numerics(ref, full.output()))
            except Exception as err:  # noqa: BLE001 - a configuration that cannot run here is a row
                row["error"] = short_error(err)
            emit(row)
        del full
        gc.collect()
        if measured:
            # --small: the most stacked configuration measured, so that the CPU test runs every piece
            # under the caches (tiny timings say nothing about which is fastest)
            stacked = max(measured, key=lambda c: (c[0] != "none", c[2]))
            bench_stack(case, tr, b, ts, k, stacked if b.small else min(measured, key=measured.get))
    finally:
        k.close()


def bench_stack(case: Case, tr: torch.nn.Module, b: Bench, ts: list[float], k: Kernels,
                fastest: tuple[str, str, bool]) -> None:
    """The 50-step timeline (timeline size): bf16 SDPA eager uncached, the fastest configuration
    uncached, and TeaCache / AdaCache (forced schedule, as in the timeline rows) on the fastest."""
    from vidcache.caches import METHOD_NAMES, remove_cache, reset_cache
    from vidcache.compile import compile_transformer

    tl = Timeline(case, tr, make_inputs(case, tr, case.timeline_size, b), ts, b)
    common = {"kind": "stack", "model": case.name, "size": list(case.timeline_size), "tokens": tl.inputs.tokens,
              "steps": len(ts)}
    labels = dict(zip(("quantize", "attention", "compile"), fastest))
    k.set(*BASE)
    tl.run(limit=1)
    one = tl.run(limit=1)[0]
    if not b.fits(one * len(ts) * 2.5 + (b.compile_guess() if fastest[2] else 0.0)):
        emit({**common, "kind": "skipped", "what": "stack", "reason": "time budget"})
        return
    base_s = tl.run()[0]
    emit({**common, "method": "none", "quantize": "none", "attention": "native", "compile": False,
          "seconds": base_s, "speedup": 1.0})
    k.set(*fastest)
    tl.run(limit=2)  # warm-up at this size (a compiled configuration recompiles for the new shape)
    fast_s = tl.run()[0]
    emit({**common, "method": "none", **labels, "seconds": fast_s, "speedup": base_s / fast_s})
    schedule = forced_schedule(len(ts))
    for m in STACK_METHODS:
        if m not in METHOD_NAMES:
            continue
        row = {**common, "method": m, **labels}
        if not b.fits(fast_s * 1.5):
            emit({**row, "kind": "skipped", "what": "stack", "reason": "time budget"})
            continue
        undo = None
        try:
            params, undo, fields = attach_vidcache(case, tr, tl, m, schedule)
            if fastest[2]:
                compile_transformer(tr, **b.compile_options)  # the compiled regions follow the hooks
            tl.run(limit=2)
            reset_cache(tl.pipe)
            seconds = tl.run()[0]
            row.update({**fields, **cache_fields(tl)}, seconds=seconds, speedup=base_s / seconds,
                       speedup_over_fastest=fast_s / seconds, params=params)
        except Exception as err:  # noqa: BLE001 - one method's failure is a row
            row["error"] = short_error(err)
        finally:
            if undo is not None:
                undo()
            remove_cache(tl.pipe)
            k.set(*fastest)
        emit(row)


def attach_vidcache(case: Case, tr: torch.nn.Module, tl: Timeline, method: str,
                    schedule: list[bool]) -> tuple[dict[str, Any], Callable[[], None] | None, dict[str, Any]]:
    """vidcache's ``method`` with its preset on the timeline's transformer, the adaptive ones on the
    forced ``schedule``; returns (effective params, the undo of the forcing or None, row fields)."""
    from vidcache.caches import apply_cache, reset_cache

    params = apply_cache(tl.pipe, method, params=preset_params(case, method))
    undo, fields = None, {}
    if method in FORCED:
        undo = force(tr, method, schedule)
        fields["forced"] = undo is not None
        if undo is not None:
            fields["forced_compute_fraction"] = sum(schedule) / len(schedule)
    reset_cache(tl.pipe)
    return params, undo, fields


def cache_fields(tl: Timeline) -> dict[str, Any]:
    from vidcache.caches import cache_stats

    st = cache_stats(tl.pipe)
    return {"compute_ratio": st["compute_ratio"], "attention_compute_ratio": st["attention_compute_ratio"],
            "cache_memory_bytes": st["memory_bytes"]}


def enable_diffusers(case: Case, tr: torch.nn.Module, method: str, tl: Timeline) -> dict[str, Any]:
    """diffusers' own PAB / FasterCache, with the same windows and ranges as the vidcache preset."""
    from diffusers import FasterCacheConfig, PyramidAttentionBroadcastConfig

    def now() -> float:
        return tl.current["t"]

    if method == "diffusers-pab":
        p = {**{"spatial_range": 2, "spatial_window": [100, 800], "cross_range": 6, "cross_window": [100, 800]},
             **preset_params(case, "pab")}
        kwargs = {"spatial_attention_block_skip_range": p["spatial_range"],
                  "spatial_attention_timestep_skip_range": tuple(p["spatial_window"]),
                  "current_timestep_callback": now}
        if case.family == "wan":
            kwargs.update(cross_attention_block_skip_range=p["cross_range"],
                          cross_attention_timestep_skip_range=tuple(p["cross_window"]))
        tr.enable_cache(PyramidAttentionBroadcastConfig(**kwargs))
        return {k: v for k, v in kwargs.items() if k != "current_timestep_callback"}
    p = {**{"attention_range": 2, "attention_window": [-1, 681], "attention_weight": 0.5, "cfg_range": 5,
            "cfg_window": [-1, 641]}, **preset_params(case, "fastercache")}
    weight = float(p["attention_weight"])
    kwargs = {"spatial_attention_block_skip_range": p["attention_range"],
              "spatial_attention_timestep_skip_range": tuple(p["attention_window"]),
              "unconditional_batch_skip_range": p["cfg_range"],
              "unconditional_batch_timestep_skip_range": tuple(p["cfg_window"]),
              "tensor_format": "BFCHW" if case.family == "cogvideox" else "BCFHW",
              "is_guidance_distilled": case.family == "hunyuan"}
    tr.enable_cache(FasterCacheConfig(**kwargs, current_timestep_callback=now,
                                      attention_weight_callback=lambda _module: weight))
    return kwargs


def bench_attention(case: Case, tr: torch.nn.Module, full: Timeline, b: Bench, fwd_s: float) -> None:
    import importlib.util

    from vidcache.loading import pick_attention
    from vidcache.models import adapter_named

    if b.device == "cuda":
        backends = [("native", True), ("_native_cudnn", True), ("_native_flash", True), ("_native_efficient", True)]
        for backend, package, exact in (("_flash_3", "flash_attn_interface", True), ("flash", "flash_attn", True),
                                        ("xformers", "xformers", True), ("sage", "sageattention", False)):
            if importlib.util.find_spec(package) is not None:
                backends.append((backend, exact))
    else:
        backends = [("native", True), ("_native_math", True)]
    auto = pick_attention(b.device, adapter_named(case.family), b.dtype) or "native"
    per_step = forwards_per_step(case)
    for backend, exact in backends:
        if not b.fits(3 * fwd_s * per_step * 2):
            emit({"kind": "skipped", "model": case.name, "what": f"attention {backend}", "reason": "time budget"})
            continue
        row = {"kind": "attention", "model": case.name, "backend": backend, "exact": exact, "auto": backend == auto,
               "size": list(case.size)}
        try:
            tr.set_attention_backend(backend)
            full.run(limit=1)
            row["seconds"] = statistics.median(full.run(limit=1)[0] / per_step for _ in range(2))
        except Exception as err:  # noqa: BLE001 - a backend that cannot run here is a row
            row["error"] = short_error(err)
        emit(row)
    tr.set_attention_backend("native")


def _version_of(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny configs on CPU (a smoke test of this script)")
    ap.add_argument("--models", help="comma-separated case names (default: all)")
    ap.add_argument("--methods", help="comma-separated vidcache methods (default: the registered schedule-driven ones)")
    ap.add_argument("--steps", type=int, default=50, help="scheduler steps of the timeline (default 50)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting measurements after this (default 450)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="comma-separated: forward (per-forward, overhead, attention backends), kernels "
                         "(quantization x attention x compile, the fastest under TeaCache / AdaCache), timeline "
                         f"(every cache over the 50 steps); default {','.join(PARTS)}")
    ap.add_argument("--compile-backend", help="torch.compile backend of the compiled kernel rows (default inductor; "
                                              "--small: aot_eager, which traces what inductor would, no codegen)")
    args = ap.parse_args(argv)
    parts = tuple(x for x in args.parts.split(",") if x)
    if not parts or set(parts) - set(PARTS):
        log(f"--parts {args.parts}: expected a comma-separated subset of {','.join(PARTS)}")
        return 2

    import diffusers

    from vidcache.loading import quiet_libraries

    quiet_libraries()
    if args.small:
        device, dtype, cases = "cpu", torch.float32, SMALL_CASES
        torch.set_num_threads(1)  # tiny matrices: threads only add contention
    else:
        if not torch.cuda.is_available():
            log("no CUDA device: run with --small for the CPU smoke test")
            return 2
        device, dtype, cases = "cuda", torch.bfloat16, CASES
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.models:
        names = args.models.split(",")
        unknown = set(names) - {c.name for c in cases}
        if unknown:
            log(f"unknown model(s) {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in cases)}")
            return 2
        cases = [c for c in cases if c.name in names]
    methods = registered()
    if args.methods:
        methods = tuple(m for m in args.methods.split(",") if m in methods)
    backend = args.compile_backend or ("aot_eager" if args.small else "inductor")
    b = Bench(device, dtype, args.budget_s, args.steps, parts, backend, small=args.small)
    # the kernel rows compile one block class under several weight types and backends, and each
    # model's blocks again: past torch's default of 8 recompiles a function would silently run eager
    torch._dynamo.config.recompile_limit = 64
    from vidcache.quantize import torchao_version

    emit({"kind": "env", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
          "capability": list(torch.cuda.get_device_capability()) if device == "cuda" else None,
          "bf16_peak_tflops": b.peak, "torch": torch.__version__, "diffusers": diffusers.__version__,
          "torchao": torchao_version(), "sageattention": _version_of("sageattention"),
          "dtype": str(dtype).removeprefix("torch."), "small": args.small, "methods": list(methods),
          "steps": args.steps, "budget_s": args.budget_s, "parts": list(parts), "compile_backend": backend})
    for case in cases:
        if b.left() <= 0:
            emit({"kind": "skipped", "model": case.name, "what": "model", "reason": "time budget"})
            continue
        try:
            bench_case(case, b, methods)
        except Exception as err:  # noqa: BLE001 - out of memory or a bug: one model's row, the others still run
            emit({"kind": "error", "model": case.name, "error": short_error(err)})
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    emit({"kind": "done", "seconds": round(time.perf_counter() - b.start, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU path, checked on a CPU: no host-device syncs from the cache hooks, ``--compile`` below the
hooks, ``--attention auto``, the cache memory estimate and refusal, group offloading, and the GPU
benchmark script's ``--small`` mode.

Host-device syncs cannot be seen on a CPU, so the sync test runs the transformer on the ``meta``
device: every tensor then lives "on a device" (the hooks take their device paths, not the CPU
shortcuts), shapes propagate, nothing is computed, and every read of a tensor's value into Python
(``item``, ``tolist``, ``bool``, ``float``, ``.cpu()``, and ``aten._local_scalar_dense`` from inside
ops) is what would block the host on a GPU. A counting mode intercepts each one and answers with a
placeholder (or, for the pipeline's timestep schedule, the real values).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from vidcache import caches
from vidcache.compile import compile_pipeline, uncompile_pipeline

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("wan", "cogvideox", "hunyuan")
# decisions that depend on a schedule only (timestep windows, counters, fixed ratios) must read nothing;
# magcache reads on its first video only (diffusers' calibration mode), see the test
SCHEDULE_ONLY = {"pab", "fastercache", "taylorseer", "diffusers-taylorseer", "magcache", "diffusers-magcache"}
CALIBRATES_FIRST = {"magcache", "diffusers-magcache"}
METHODS = tuple(m for m in caches.METHOD_NAMES if m != "none")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny models' matrices are too small for threads: one runs them several times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- counting host reads ------------------------------------------------------------------------

_READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "__array__"}


def _caller() -> str:
    """The innermost vidcache or diffusers frame: where a read happened."""
    for frame in reversed(traceback.extract_stack()):
        if "/vidcache/" in frame.filename or "/diffusers/" in frame.filename:
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    return "?"


class HostReads(TorchFunctionMode):
    """Counts reads of device (here: meta) tensors into Python, and where they happened."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, str]] = []  # (kind, caller)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        to_cpu = name == "to" and any(str(a) == "cpu" for a in (*args[1:], *kwargs.values()))
        t = args[0] if args else None
        if (name in _READS or to_cpu) and torch.is_tensor(t) and t.device.type == "meta":
            shadow = getattr(t, "_host_value", None)
            kind = "schedule" if shadow is not None else "read"
            self.reads.append((kind, _caller()))
            value = shadow if shadow is not None else torch.ones(t.shape, dtype=t.dtype)
            if name in ("cpu", "to"):
                return value
            return getattr(value, name)()
        return func(*args, **kwargs)


class ScalarReads(TorchDispatchMode):
    """``aten._local_scalar_dense`` on a device tensor: a read from inside an op."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            self.count += 1
            return 1.0 if args[0].dtype.is_floating_point else 1
        return func(*args, **(kwargs or {}))


def _meta(t: torch.Tensor, schedule: bool = False) -> torch.Tensor:
    """``t`` on the meta device; the pipeline's timestep schedule keeps its values for the host copy."""
    m = t.to("meta")
    if schedule:
        m._host_value = t
    return m


def _tiny_inputs(family: str, pipe) -> tuple[int, dict]:
    """Transformer inputs of a 9-frame 64x64 video, as each pipeline builds them (batch, kwargs)."""
    g = torch.Generator().manual_seed(0)
    if family == "wan":
        return 1, {"hidden_states": torch.randn(1, 4, 3, 8, 8, generator=g),
                   "encoder_hidden_states": torch.randn(1, 16, 32, generator=g)}
    if family == "cogvideox":
        rotary = pipe._prepare_rotary_positional_embeddings(64, 64, 3, torch.device("cpu"))
        return 2, {"hidden_states": torch.randn(2, 3, 4, 8, 8, generator=g),
                   "encoder_hidden_states": torch.randn(2, 16, 32, generator=g), "image_rotary_emb": rotary}
    if family == "hunyuan15":  # latents + image condition + mask; 16 prompt, 8 glyph, 8 (zero) image tokens
        return 1, {"hidden_states": torch.randn(1, 9, 3, 4, 4, generator=g),
                   "encoder_hidden_states": torch.randn(1, 16, 32, generator=g),
                   "encoder_attention_mask": torch.ones(1, 16),
                   "encoder_hidden_states_2": torch.randn(1, 8, 32, generator=g),
                   "encoder_attention_mask_2": torch.ones(1, 8), "image_embeds": torch.zeros(1, 8, 16)}
    return 1, {"hidden_states": torch.randn(1, 4, 3, 8, 8, generator=g),
               "encoder_hidden_states": torch.randn(1, 32, 32, generator=g),
               "encoder_attention_mask": torch.ones(1, 32), "pooled_projections": torch.randn(1, 32, generator=g),
               "guidance": torch.tensor([5000.0])}


class Driver:
    """Runs a bare transformer the way its pipeline does: Wan two forwards per step ("cond", "uncond",
    with the step index), CogVideoX one batched [uncond, cond] forward, HunyuanVideo one."""

    def __init__(self, family: str, pipe, device: str = "cpu", steps: int = 10):
        self.family, self.steps = family, steps
        self.tr = pipe.transformer
        self.batch, kwargs = _tiny_inputs(family, pipe)
        pipe.scheduler.set_timesteps(steps)
        self.host_ts = pipe.scheduler.timesteps.float()
        self.meta = device == "meta"
        move = _meta if self.meta else (lambda t: t)
        self.kwargs = {k: tuple(move(x) for x in v) if isinstance(v, tuple) else move(v) for k, v in kwargs.items()}
        self.shim = SimpleNamespace(transformer=self.tr, scheduler=SimpleNamespace(timesteps=None),
                                    do_classifier_free_guidance=family != "hunyuan")
        if family == "hunyuan15":  # CFG through a guider, in its own context names
            self.shim.guider = SimpleNamespace(_enabled=True, num_conditions=2)

    def video(self, on_forward=None) -> list:
        """One video; ``on_forward(run)`` wraps each forward (``run()`` does it) and its results are returned."""
        ts = self.host_ts.clone()  # a new schedule object: a new video for the hooks
        ts = _meta(ts, schedule=True) if self.meta else ts
        self.shim.scheduler.timesteps = ts
        results = []
        names = {"wan": ("cond", "uncond"), "cogvideox": ("cond_uncond",), "hunyuan": ("cond",),
                 "hunyuan15": ("pred_cond", "pred_uncond")}[self.family]
        for i in range(self.steps):
            for name in names:
                ctx = {"step_index": i, "num_inference_steps": self.steps} if self.family == "wan" else {}

                def run(i=i, name=name, ctx=ctx):
                    t = ts[i:i + 1].expand(self.batch)
                    if self.family == "hunyuan15":  # its pipeline passes the timestep in the latents' dtype
                        t = t.to(self.tr.dtype)
                    with torch.no_grad(), self.tr.cache_context(name, **ctx):
                        return self.tr(timestep=t, return_dict=False, **self.kwargs)[0]

                results.append(on_forward(run) if on_forward else run())
        return results


def _params(method: str) -> dict:
    """The tiny preset's table, for every family and for short runs: without TeaCache's retention
    mode (Wan only) and forced first steps (they would cover these 6- to 12-step runs whole), with
    the step counts as given (these runs have far fewer steps than the 25 the counts are stated for,
    which would stretch PAB's ranges to 1: no reuse, nothing tested)."""
    try:
        params = caches.preset_params("tiny", method)
    except caches.CacheError:
        return {}
    if method == "teacache":
        params = {k: v for k, v in params.items() if k not in ("retention", "first_steps")}
    params.pop("schedule_steps", None)
    return params


@pytest.fixture(scope="module")
def tiny_pipes():
    from vidcache.tiny import BUILDERS

    pipes = {}
    for fam in FAMILIES:
        pipes[fam] = BUILDERS[fam]()
        pipes[fam].set_progress_bar_config(disable=True)
    return pipes


def _count_reads(driver: Driver) -> list[list[tuple[str, str]]]:
    def counted(run):
        with HostReads() as f, ScalarReads() as s:
            run()
        return f.reads + [("read", "aten._local_scalar_dense")] * s.count

    return driver.video(counted)


@pytest.fixture(scope="module")
def meta_drivers():
    from vidcache.tiny import BUILDERS

    drivers = {}
    for fam in FAMILIES:
        pipe = BUILDERS[fam]()
        pipe.transformer.to("meta")
        drivers[fam] = Driver(fam, pipe, device="meta", steps=6)
    return drivers


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_hooks_read_at_most_one_scalar_per_forward(meta_drivers, family):
    """Per forward, the hooks add at most one host read to what the uncached model does (none for
    schedule-only methods); the pipeline's timestep schedule may be copied to the host a bounded
    number of times a video (base.py once; mixcache.py copies it a second time)."""
    d = meta_drivers[family]
    caches.remove_cache(d.shim)
    base = [len(r) for r in _count_reads(d)]
    failures = []
    for method in METHODS:
        caches.apply_cache(d.shim, method, params=_params(method))
        try:
            for video in (1, 2) if method in CALIBRATES_FIRST else (1,):
                per_forward = _count_reads(d)
                schedule = sum(kind == "schedule" for reads in per_forward for kind, _ in reads)
                extra = [sum(kind == "read" for kind, _ in reads) - b for reads, b in zip(per_forward, base)]
                limit = 0 if method in SCHEDULE_ONLY and not (video == 1 and method in CALIBRATES_FIRST) else 1
                where = sorted({w for reads in per_forward for kind, w in reads if kind == "read"})
                if max(extra) > limit or schedule > 2:
                    failures.append(f"{method} video {video}: extra reads per forward {extra} (limit {limit}), "
                                    f"schedule copies {schedule}, at {where}")
        finally:
            caches.remove_cache(d.shim)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_teacache_plans_its_schedule_with_one_read_per_branch_and_video(meta_drivers, family):
    """Wan's and CogVideoX's indicator depends on the timestep only: each branch reads all its
    distances once, on its first forward of the video, and decides every later forward from them."""
    d = meta_drivers[family]
    branches = 2 if family == "wan" else 1
    caches.apply_cache(d.shim, "teacache", params=_params("teacache"))
    try:
        for _video in (1, 2):
            per_forward = _count_reads(d)
            reads = [sum(kind == "read" for kind, _ in r) for r in per_forward]
            assert reads[:branches] == [1] * branches, reads
            assert not any(reads[branches:]), reads
    finally:
        caches.remove_cache(d.shim)


# -- compile ------------------------------------------------------------------------------------


def _outputs(driver: Driver) -> np.ndarray:
    return torch.cat([o.flatten() for o in driver.video()]).numpy()


@pytest.mark.parametrize(("family", "method", "regions"), [
    ("wan", "none", ["blocks.0", "blocks.1"]),
    ("wan", "teacache", ["blocks.0", "blocks.1"]),  # block-level hooks: whole blocks, below the hooks
    ("wan", "pab", ["blocks.0.attn1", "blocks.0.attn2", "blocks.0.ffn",  # attention hooks: the pieces
                    "blocks.1.attn1", "blocks.1.attn2", "blocks.1.ffn"]),
    ("cogvideox", "fastercache", None),  # the CFG-Cache's cond-only half batch: a second shape
])
def test_compiled_cached_run_equals_eager_and_never_recompiles(tiny_pipes, family, method, regions):
    """aot_eager traces what inductor would compile (dynamo + AOTAutograd): equal outputs to 1e-6,
    no graph break (fullgraph), the same cache decisions, and a second video without any recompile."""
    from torch._dynamo.utils import counters

    pipe = tiny_pipes[family]
    d = Driver(family, pipe, steps=8)
    caches.remove_cache(d.shim)
    if method != "none":
        params = _params(method)
        if method == "teacache":  # the tiny preset is tuned for the trained model's 25 steps
            params["thresh"] = 0.8
        caches.apply_cache(d.shim, method, params=params)
    try:
        eager = _outputs(d)
        eager_steps = caches.cache_stats(d.shim)["per_step"]
        names = compile_pipeline(d.shim, backend="aot_eager")
        if regions is not None:
            assert names == regions
        first = _outputs(d)
        with torch.compiler.set_stance("fail_on_recompile"):
            second = _outputs(d)
        steps = caches.cache_stats(d.shim)["per_step"]
    finally:
        uncompile_pipeline(d.shim)
        caches.remove_cache(d.shim)
    assert not counters["graph_break"], dict(counters["graph_break"])
    np.testing.assert_allclose(first, eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(second, eager, rtol=1e-6, atol=1e-6)
    strip = [{k: v for k, v in s.items() if k not in ("rel_l1", "acc")} for s in eager_steps]
    assert [{k: v for k, v in s.items() if k not in ("rel_l1", "acc")} for s in steps] == strip
    if method != "none":
        assert any(s["action"] != "computed" for s in steps), "the cache never reused: nothing was tested"


def test_compile_follows_the_hooks_and_restores_forwards(tiny_pipes):
    """Regions are recomputed when the cache changes, and uncompiling restores every forward."""
    pipe = tiny_pipes["wan"]
    d = Driver("wan", pipe)
    block = pipe.transformer.blocks[0]
    try:
        caches.apply_cache(d.shim, "teacache", params=_params("teacache"))
        assert compile_pipeline(d.shim, backend="aot_eager") == ["blocks.0", "blocks.1"]
        caches.apply_cache(d.shim, "pab", params=_params("pab"))  # replaces teacache
        names = compile_pipeline(d.shim, backend="aot_eager")
        assert "blocks.0" not in names and "blocks.0.attn1" in names
        caches.remove_cache(d.shim)
        assert compile_pipeline(d.shim, backend="aot_eager") == ["blocks.0", "blocks.1"]
    finally:
        uncompile_pipeline(d.shim)
        caches.remove_cache(d.shim)
    for m in pipe.transformer.modules():
        assert "forward" not in m.__dict__ or not hasattr(m.__dict__["forward"], "_vidcache_uncompiled")
    assert "forward" not in block.__dict__


@pytest.mark.skipif(os.environ.get("VIDCACHE_SLOW_TESTS") != "1", reason="inductor on a tiny model takes ~1 min "
                    "on 2 cores; set VIDCACHE_SLOW_TESTS=1")
def test_inductor_compiled_teacache_matches_eager(tiny_pipes):
    pipe = tiny_pipes["wan"]
    d = Driver("wan", pipe, steps=6)
    caches.apply_cache(d.shim, "teacache", params=_params("teacache"))
    try:
        eager = _outputs(d)
        compile_pipeline(d.shim)  # inductor
        compiled = _outputs(d)
        with torch.compiler.set_stance("fail_on_recompile"):
            again = _outputs(d)
    finally:
        uncompile_pipeline(d.shim)
        caches.remove_cache(d.shim)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-4)  # fp32, reordered reductions
    np.testing.assert_allclose(again, compiled, rtol=0, atol=0)


def test_gen_compile_flag_end_to_end(tiny_dirs, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vidcache import runner
    from vidcache.cli import app

    monkeypatch.setenv("VIDCACHE_COMPILE_BACKEND", "aot_eager")
    compiled: list[list[str]] = []
    monkeypatch.setattr(runner, "compile_pipeline", lambda pipe: compiled.append(compile_pipeline(pipe)))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["gen", "--model", tiny_dirs["wan"], "--cache", "teacache", "--compile",
                                 "-p", "a red ball", "-p", "a blue box", "--frames", "9", "--height", "64",
                                 "--width", "64", "--steps", "4", "--set", "defaults.text_len=16", "-o", str(out),
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert compiled and compiled[-1] == ["blocks.0", "blocks.1"]  # TeaCache hooks blocks: whole blocks
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("a-*.json"))]
    assert len(reports) == 2
    for rep in reports:
        assert rep["cache"]["estimate_bytes"] == rep["cache"]["stats"]["memory_bytes"] or (
            abs(rep["cache"]["estimate_bytes"] / rep["cache"]["stats"]["memory_bytes"] - 1) < 0.05)


# -- memory ---------------------------------------------------------------------------------------


def _estimate_misses(d: Driver, shape, job, methods) -> str:
    """Methods whose estimate_cache_bytes is off the measured cache.stats.memory_bytes by over 5 %."""
    from vidcache.memory import estimate_cache_bytes

    bad = []
    for method in methods:
        params = caches.apply_cache(d.shim, method, params=_params(method))
        try:
            d.video()
            measured = caches.cache_stats(d.shim)["memory_bytes"]
        finally:
            caches.remove_cache(d.shim)
        est = estimate_cache_bytes(method, params, shape, job)
        if est is None or not 0.95 <= est / measured <= 1.05:
            bad.append(f"{method}: estimate {est}, measured {measured}")
    return "\n".join(bad)


# the text stream the Driver's inputs make: HunyuanVideo 32 tokens, HunyuanVideo 1.5 16 + 8 + 8, the others 16
TEXT_TOKENS = {"hunyuan": 32, "hunyuan15": 32}


@pytest.mark.parametrize("family", [*FAMILIES, "hunyuan15"])
def test_cache_estimate_matches_measured_memory(tiny_pipes, family):
    """estimate_cache_bytes against cache.stats.memory_bytes on the tiny models (12 steps: long enough
    for every method to reach its steady peak)."""
    from vidcache.memory import JobShape, model_shape
    from vidcache.tiny import BUILDERS

    pipe = tiny_pipes[family] if family in tiny_pipes else BUILDERS[family]()
    d = Driver(family, pipe, steps=12)
    shape = model_shape(pipe)
    job = JobShape(9, 64, 64, TEXT_TOKENS.get(family, 16), cfg=True)
    assert not _estimate_misses(d, shape, job, METHODS)


@pytest.mark.parametrize("family", [*FAMILIES, "hunyuan15"])
def test_cache_estimate_matches_measured_memory_in_bf16(family):
    """The same in bf16, the dtype of real runs: an fp32 tiny model cannot tell a tensor kept in the
    model's dtype from one kept in fp32 (AdaCache's estimate was 50 % high on the H100 that way)."""
    from vidcache.memory import JobShape, model_shape
    from vidcache.tiny import BUILDERS

    pipe = BUILDERS[family]()
    pipe.transformer.to(torch.bfloat16)
    d = Driver(family, pipe, steps=12)
    d.kwargs = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() and k != "guidance" else v
                for k, v in d.kwargs.items()}
    shape = model_shape(pipe)
    assert shape.bytes_per_element == 2
    job = JobShape(9, 64, 64, TEXT_TOKENS.get(family, 16), cfg=True)
    assert not _estimate_misses(d, shape, job, ("teacache", "adacache", "mixcache", "fastercache"))


def test_estimate_units_match_methods_md():
    """One full hidden-state tensor (TeaCache without CFG keeps exactly one) at METHODS.md's sizes."""
    from vidcache.memory import GIB, JobShape, ModelShape, estimate_cache_bytes

    def wan(hidden, layers):
        return ModelShape("wan", hidden, layers, 0, {"spatial": layers, "cross": layers}, (1, 2, 2), 4, 8, 16, 2)

    hunyuan = ModelShape("hunyuan", 3072, 60, 60, {"spatial": 60}, (1, 2, 2), 4, 8, 16, 2)
    cases = [(wan(1536, 30), (81, 480, 832), 0.094), (wan(5120, 40), (81, 480, 832), 0.31),
             (wan(5120, 40), (81, 720, 1280), 0.72)]
    for shape, (f, h, w), gib in cases:
        est = estimate_cache_bytes("teacache", {}, shape, JobShape(f, h, w, 512, cfg=False))
        assert abs(est / GIB - gib) < 0.005
    # HunyuanVideo 720p / 129 frames: TeaCache keeps the residual and its fp32 indicator (3 units)
    est = estimate_cache_bytes("teacache", {}, hunyuan, JobShape(129, 720, 1280, 0, cfg=False))
    assert abs(est / 3 / GIB - 0.68) < 0.005
    # PAB on Wan-14B 720p with CFG: 80 attention modules x 2 branches: far beyond one GPU
    assert estimate_cache_bytes("pab", {}, wan(5120, 40), JobShape(81, 720, 1280, 512, cfg=True)) > 100 * GIB


def test_cache_that_cannot_fit_is_refused_before_it_starts(tiny_pipes, monkeypatch):
    from vidcache import memory
    from vidcache.errors import UsageError

    pipe = tiny_pipes["wan"]
    job = SimpleNamespace(name="0000-x", frames=9, height=64, width=64, text_len=16, guidance=5.0)
    memory.check_cache_fits(pipe, "pab", {}, [job], "cpu")  # CPU: nothing to check
    monkeypatch.setattr(memory, "free_cuda_bytes", lambda: 1000)
    with pytest.raises(UsageError) as err:
        memory.check_cache_fits(pipe, "pab", {}, [job], "cuda")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("--cache pab: its cache needs about 48.0 KiB for 9 frames at 64x64 (0000-x)")
    assert "only 1.0 KiB of GPU memory is free" in msg
    monkeypatch.setattr(memory, "free_cuda_bytes", lambda: 10**9)
    memory.check_cache_fits(pipe, "pab", {}, [job], "cuda")


# -- attention and offloading ----------------------------------------------------------------------


def test_attention_auto_rule(monkeypatch):
    import importlib.util

    from vidcache import loading
    from vidcache.errors import UsageError
    from vidcache.models import ADAPTERS

    assert loading.check_attention("auto", "cpu", ADAPTERS["wan"], torch.float32) is None  # SDPA
    wan = ADAPTERS["wan"]
    assert loading.pick_attention("cuda", wan, torch.bfloat16) is None or loading.flash_attention_3_available()
    real_find = importlib.util.find_spec
    monkeypatch.setattr(loading.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real_find(name))
    monkeypatch.setattr(loading, "flash_attention_3_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert loading.pick_attention("cuda", ADAPTERS["wan"], torch.bfloat16) == "_flash_3"
    assert loading.pick_attention("cuda", ADAPTERS["wan"], torch.float32) is None
    assert loading.pick_attention("cuda", ADAPTERS["hunyuan"], torch.bfloat16) is None  # FA3 takes no mask
    assert loading.pick_attention("cuda", ADAPTERS["cogvideox"], torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert loading.pick_attention("cuda", ADAPTERS["wan"], torch.bfloat16) is None  # not Hopper: SDPA measured best
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert loading.pick_attention("cuda", ADAPTERS["wan"], torch.bfloat16) is None  # no context-parallel FA3
    with pytest.raises(UsageError, match="attention mask"):
        loading.check_attention("flash", "cuda", ADAPTERS["hunyuan"], torch.bfloat16)


def test_offload_flags_are_checked(tiny_dirs, tmp_path):
    from typer.testing import CliRunner

    from vidcache.cli import app

    base = ["gen", "--model", tiny_dirs["wan"], "-p", "x", "-o", str(tmp_path), "--device", "cpu"]
    r = CliRunner().invoke(app, [*base, "--group-offload"])
    assert r.exit_code == 2 and "--group-offload moves weights between CPU and GPU" in r.output
    r = CliRunner().invoke(app, [*base, "--offload", "--group-offload"])
    assert r.exit_code == 2 and "choose one offloading mode" in r.output


def test_caches_and_compile_work_on_group_offloaded_blocks(tiny_pipes):
    """Group offloading's hooks sit on the blocks too: the cache's hooks wrap them, the compiled
    forward goes under both (CPU to CPU here: the hook chain is what is tested)."""
    from vidcache.tiny import build_tiny_wan

    ref_pipe = tiny_pipes["wan"]
    d_ref = Driver("wan", ref_pipe, steps=6)
    caches.apply_cache(d_ref.shim, "teacache", params=_params("teacache"))
    try:
        expected = _outputs(d_ref)
    finally:
        caches.remove_cache(d_ref.shim)
    pipe = build_tiny_wan()
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level",
                                          num_blocks_per_group=1)
    d = Driver("wan", pipe, steps=6)
    caches.apply_cache(d.shim, "teacache", params=_params("teacache"))
    try:
        assert compile_pipeline(d.shim, backend="aot_eager") == ["blocks.0", "blocks.1"]
        got = _outputs(d)
    finally:
        uncompile_pipeline(d.shim)
        caches.remove_cache(d.shim)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


# -- the GPU benchmark script ----------------------------------------------------------------------


def test_bench_gpu_small_prints_every_measurement():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--small", "--steps", "6"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows[0]["kind"] == "env" and rows[-1]["kind"] == "done"
    models = ["wan-small", "cogvideox-small", "hunyuan-small", "wan-14b-small"]
    assert [x["model"] for x in rows if x["kind"] == "model"] == models
    assert not [x for x in rows if x["kind"] == "error" or (x["kind"] in ("kernel", "stack") and "error" in x)]
    # skipped on a CPU, each with its reason: the Sage rows (vidcache's own refusal) and the compiled
    # kernel rows of all cases but wan-small (suite time)
    skipped = [x for x in rows if x["kind"] == "skipped"]
    assert {x["what"] for x in skipped} == {"kernel"}
    assert {x["reason"] for x in skipped if x["attention"] == "sage"} == {
        "--attention sage needs a CUDA device (use sdpa on cpu)"}
    assert {x["model"] for x in skipped if x["attention"] == "native"} == set(models) - {"wan-small"}
    schedule_methods = [m for m in ("pab", "fastercache", "teacache", "adacache", "mixcache") if m in METHODS]
    assert rows[0]["methods"] == schedule_methods
    for model in models:
        fwd = [x for x in rows if x["kind"] == "forward" and x["model"] == model]
        assert len(fwd) == 1 and fwd[0]["seconds"] > 0 and fwd[0]["tokens"] == 48
        assert {x["method"] for x in rows if x["kind"] == "memory" and x["model"] == model} == set(schedule_methods)
        timeline = {x["method"]: x for x in rows if x["kind"] == "timeline" and x["model"] == model}
        assert "none" in timeline and "pab" in timeline and "diffusers-pab" in timeline
        for method, row in timeline.items():
            if method == "diffusers-fastercache" and model.startswith("wan"):
                assert "error" in row  # one state for both CFG branches: fails on Wan's separate forwards
                continue
            assert "error" not in row, row
            assert row["seconds"] > 0 and row["speedup"] > 0 and row["steps"] == 6
            if row["impl"] == "vidcache":
                assert row["compute_ratio"] <= 1.0 and row["cache_memory_bytes"] > 0
                assert abs(row["estimate_bytes"] / row["cache_memory_bytes"] - 1) < 0.05, row
                if method in ("teacache", "adacache", "mixcache"):
                    assert row["forced"] is True
                    assert row["compute_ratio"] < 1.0
    wan = {x["method"]: x for x in rows if x["kind"] == "timeline" and x["model"] == "wan-small"}
    assert set(schedule_methods) | {"none", "diffusers-pab", "diffusers-fastercache"} == set(wan)
    over = {x["method"]: x for x in rows if x["kind"] == "overhead" and x["model"] == "wan-small"}
    assert set(over) == set(schedule_methods)
    # the "compute everything" rules really compute everything, on every family (an overhead row
    # that skipped work would report a speedup as a negative overhead)
    every = [x for x in rows if x["kind"] == "overhead"]
    assert {x["model"] for x in every} == set(models)
    assert all(x["compute_ratio"] == 1.0 and x["seconds_cached"] > 0 for x in every), every
    attention = [x for x in rows if x["kind"] == "attention"]
    assert {x["backend"] for x in attention} == {"native", "_native_math"}
    assert [x["backend"] for x in attention if x["auto"]] == ["native"]
    # the kernel rows: int8 weight-only stands in for fp8 on a CPU, against bf16 (here fp32) SDPA eager
    for model in models:
        assert [x["layers"] > 0 and x["mode"] for x in rows if x["kind"] == "quantize" and x["model"] == model] == [
            "int8"]
        kernel = {(x["quantize"], x["compile"]): x for x in rows if x["kind"] == "kernel" and x["model"] == model}
        assert set(kernel) == ({("none", False), ("int8", False), ("none", True), ("int8", True)}
                               if model == "wan-small" else {("none", False), ("int8", False)})
        assert all(x["seconds"] > 0 and x["tflops"] > 0 and x["attention"] == "native" for x in kernel.values())
        assert kernel[("none", False)]["speedup"] == 1.0 and "psnr_db" not in kernel[("none", False)]
        assert 40 < kernel[("int8", False)]["psnr_db"] < 150  # measured 73-83 dB: lossy, not a no-op
        if model == "wan-small":  # aot_eager: the compiled graph computes exactly what eager does
            assert kernel[("none", True)]["rel_l2"] < 1e-6
            assert kernel[("int8", True)]["psnr_db"] == pytest.approx(kernel[("int8", False)]["psnr_db"], abs=0.5)
        stack = [x for x in rows if x["kind"] == "stack" and x["model"] == model]
        assert [x["method"] for x in stack] == ["none", "none", "teacache", "adacache"]
        assert (stack[0]["quantize"], stack[0]["compile"]) == ("none", False) and stack[0]["speedup"] == 1.0
        if model == "wan-small":  # --small stacks the most: int8 + compiled under the caches
            assert all((x["quantize"], x["compile"]) == ("int8", True) for x in stack[1:])
        for x in stack[2:]:
            assert x["forced"] is True and x["compute_ratio"] < 1.0 and x["seconds"] > 0

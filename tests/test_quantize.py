"""``--quantize int8`` (torchao int8 weight-only) on CPU: under every cache, with ``--compile``, with
group offloading, in the report and the job key; the refusals of fp8 and of ``--attention sage``.

The quality bounds are PSNR (dB, frames in [0, 1]) of the quantized run against the unquantized run
with the same cache, prompt and seed, measured on this project's 2-core CPU (torch 2.13.0, torchao
0.18.0) and set with a margin of about 5 dB:

* the shipped, trained tiny Wan (``--model tiny``), 25 steps, 9 frames at 64x64, "a red ball moving
  left", seed 0, each cache at its tiny preset. Measured: uncached 46.6; pab 50.2, fastercache 48.5,
  teacache 49.5, adacache 40.7, mixcache 48.9, fbcache 49.0, magcache 48.9 (its second video: the first
  calibrates), taylorseer 24.9 (its Taylor forecast amplifies any change of the computed steps).
  Bounds: 35 dB, taylorseer 20 dB.
* random-weight tiny CogVideoX and HunyuanVideo (``vidcache.tiny``), 10 steps: 71.8 to 85.8 dB for
  uncached, PAB, FasterCache and TeaCache. Bound: 60 dB.

The caches' decisions must not move: the per-step actions (what each forward computed and reused,
per block and attention kind) of the quantized run equal the unquantized run's. For schedule-only
rules (PAB, FasterCache, TaylorSeer, TeaCache on Wan and CogVideoX, whose indicator is the time
embedding, left unquantized) this is by construction; the adaptive ones (AdaCache, MixCache,
FBCache, MagCache, TeaCache on HunyuanVideo) decide on metrics that int8 moves by far less than their
thresholds' margins here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import load_pipe, run_pipe
from typer.testing import CliRunner

from vidcache import caches, quantize
from vidcache.caches import METHOD_NAMES
from vidcache.cli import app
from vidcache.errors import UsageError
from vidcache.jobs import Prompt
from vidcache.loading import LoadOptions, check_attention
from vidcache.runner import RunConfig, Runner, plan_run

pytest.importorskip("torchao", reason="the 'quant' extra (torchao) is not installed")

METHODS = [m for m in METHOD_NAMES if m != "none"]
CALIBRATES_FIRST = {"magcache"}  # diffusers' MagCache computes every step of its first video
TINY = {"frames": 9, "height": 64, "width": 64, "steps": 25}
PROMPT = "a red ball moving left"
# FasterCache extrapolates attention (A1 + 0.3 (A1 - A2)) and compounds the CFG delta x1.1 per reuse
# step (the official schedule): the int8 weights' error is carried further (measured 30.8 dB)
MIN_PSNR = {"uncached": 35.0, "taylorseer": 20.0, "fastercache": 28.0}
DEFAULT_MIN_PSNR = 35.0
RANDOM_MIN_PSNR = 60.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def actions(stats: dict) -> list[tuple]:
    return [(e["step"], e["branch"], e["action"], e["blocks"], e["attention"]) for e in stats["per_step"]]


def _runner(quant: str = "none", compile_: bool = False, model: str = "tiny", flags: dict | None = None) -> Runner:
    cfg = RunConfig(model=model, flags=dict(flags or TINY), load=LoadOptions(quantize=quant, compile=compile_))
    runner = Runner(plan_run(cfg, [Prompt(PROMPT, {}, "test")]))
    runner.load()
    return runner


def _render(runner: Runner, method: str) -> tuple[np.ndarray, dict]:
    runner.set_cache(method, None, caches.preset_params("tiny", method) if method != "none" else {})
    if method in CALIBRATES_FIRST:
        runner.generate(runner.plan.jobs[0])
    return runner.generate(runner.plan.jobs[0])


@pytest.fixture(scope="module")
def tiny_runners():
    """The shipped tiny model loaded twice, unquantized and int8, with the int8 uncached video."""
    plain, int8 = _runner(), _runner("int8")
    uncached = {"int8": _render(int8, "none")}
    yield plain, int8, uncached
    plain.close()
    int8.close()


# -- what is quantized ----------------------------------------------------------------------------


def test_int8_quantizes_the_block_linears_of_both_experts(tiny_dirs):
    """Wan 2.2's two experts: every Linear inside the blocks becomes torchao's int8 tensor; the
    embedders and the output projection keep their dtype; the report reads it from the weights."""
    pipe = load_pipe(tiny_dirs["wan2"])
    assert quantize.quantize_pipeline(pipe, "none") is None and quantize.describe(pipe) == {"mode": "none"}
    sets = quantize.quantize_pipeline(pipe, "int8")
    per_expert = []
    for tr in (pipe.transformer, pipe.transformer_2):
        inside = [m for b in tr.blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]
        assert inside and all(type(m.weight).__name__ == "Int8Tensor" for m in inside)
        outside = [m for n, m in tr.named_modules() if isinstance(m, torch.nn.Linear) and not n.startswith("blocks.")]
        assert outside and all(type(m.weight) is torch.nn.Parameter for m in outside)
        per_expert.append(len(inside))
    assert len(sets.layers) == sum(per_expert)
    desc = quantize.describe(pipe)
    assert desc["mode"] == "int8" and desc["layers"] == sum(per_expert) and desc["torchao"]


def test_weight_sets_swap_back_to_the_loaded_weights(tiny_dirs):
    """What ``vidcache bench`` relies on: both weight sets on one load, swapped in place."""
    pipe = load_pipe(tiny_dirs["wan"])
    before = run_pipe(pipe, "wan", steps=4)
    sets = quantize.quantize_pipeline(pipe, "int8", keep_original=True)
    quantized = run_pipe(pipe, "wan", steps=4)
    sets.use(False)
    assert quantize.describe(pipe) == {"mode": "none"}
    np.testing.assert_array_equal(run_pipe(pipe, "wan", steps=4), before)
    sets.use(True)
    np.testing.assert_array_equal(run_pipe(pipe, "wan", steps=4), quantized)
    assert not np.array_equal(quantized, before)


# -- every cache on quantized weights ----------------------------------------------------------------


def test_int8_uncached_is_close_and_not_a_no_op(tiny_runners):
    plain, _, uncached = tiny_runners
    ref, _ = _render(plain, "none")
    got, report = uncached["int8"]
    assert report["quantize"]["mode"] == "int8" and report["quantize"]["layers"] > 0
    assert plain.generate(plain.plan.jobs[0])[1]["quantize"] == {"mode": "none"}
    assert not np.array_equal(got, ref)
    assert psnr(got, ref) >= MIN_PSNR["uncached"]


@pytest.mark.parametrize("method", METHODS)
def test_int8_under_each_cache_keeps_its_decisions(tiny_runners, method):
    """Quantized + cache against unquantized + the same cache: the same per-step actions, the cache
    reuses something, the output within the bound; removing the cache gives the quantized uncached
    video back exactly."""
    plain, int8, uncached = tiny_runners
    ref, ref_rep = _render(plain, method)
    got, rep = _render(int8, method)
    stats, ref_stats = rep["cache"]["stats"], ref_rep["cache"]["stats"]
    assert actions(stats) == actions(ref_stats)
    assert min(stats["compute_ratio"], stats["attention_compute_ratio"]) < 1.0, f"{method} reused nothing"
    assert psnr(got, ref) >= MIN_PSNR.get(method, DEFAULT_MIN_PSNR)
    int8.set_cache("none", None, {})  # remove_cache
    np.testing.assert_array_equal(int8.generate(int8.plan.jobs[0])[0], uncached["int8"][0])


@pytest.mark.parametrize("family", ["cogvideox", "hunyuan"])
def test_int8_caches_on_cogvideox_and_hunyuan(family):
    """The other two layouts (CogVideoX's batched CFG, HunyuanVideo's dual- and single-stream blocks)
    with an attention-level (PAB, FasterCache) and a stack-level (TeaCache) cache."""
    from test_caches import params_for

    from vidcache.tiny import BUILDERS

    plain, int8 = BUILDERS[family](), BUILDERS[family]()
    quantize.quantize_pipeline(int8, "int8")
    ref_uncached, uncached = run_pipe(plain, family, steps=10), run_pipe(int8, family, steps=10)
    assert not np.array_equal(uncached, ref_uncached) and psnr(uncached, ref_uncached) >= RANDOM_MIN_PSNR
    for method in ("pab", "fastercache", "teacache"):
        out = {}
        for name, pipe in (("plain", plain), ("int8", int8)):
            caches.apply_cache(pipe, method, params=params_for(method, family))
            try:
                out[name] = (run_pipe(pipe, family, steps=10), caches.cache_stats(pipe))
            finally:
                caches.remove_cache(pipe)
        assert actions(out["int8"][1]) == actions(out["plain"][1]), method
        assert min(out["int8"][1]["compute_ratio"], out["int8"][1]["attention_compute_ratio"]) < 1.0, method
        assert psnr(out["int8"][0], out["plain"][0]) >= RANDOM_MIN_PSNR, method
    np.testing.assert_array_equal(run_pipe(int8, family, steps=10), uncached)


# -- with --compile and offloading -------------------------------------------------------------------


def test_int8_compiled_equals_int8_eager(tiny_runners, monkeypatch):
    """``--quantize int8 --compile`` through the runner: the compiled regions trace the int8 weights'
    dispatch below the cache hooks; with ``aot_eager`` (what inductor traces, without its kernels) the
    video equals the eager quantized one exactly, for a block-level (TeaCache: whole blocks compiled)
    and an attention-level cache (PAB: attention modules and feed-forward compiled apart)."""
    monkeypatch.setenv("VIDCACHE_COMPILE_BACKEND", "aot_eager")
    _, eager, _ = tiny_runners
    compiled = _runner("int8", compile_=True)
    try:
        for method in ("teacache", "pab"):
            want, want_rep = _render(eager, method)
            got, rep = _render(compiled, method)
            np.testing.assert_array_equal(got, want)
            assert actions(rep["cache"]["stats"]) == actions(want_rep["cache"]["stats"])
    finally:
        compiled.close()


def test_int8_with_group_offload_cache_and_compile(tiny_dirs):
    """diffusers' group offloading moves torchao's tensors (CPU to CPU here: the hook chain of
    offload + cache + compiled forward is what is checked), output unchanged."""
    from vidcache.compile import compile_pipeline, uncompile_pipeline

    params = caches.preset_params("tiny", "teacache")
    ref = load_pipe(tiny_dirs["wan"])
    quantize.quantize_pipeline(ref, "int8")
    caches.apply_cache(ref, "teacache", params=params)
    expected = run_pipe(ref, "wan", steps=6)
    pipe = load_pipe(tiny_dirs["wan"])
    quantize.quantize_pipeline(pipe, "int8")
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level",
                                          num_blocks_per_group=1)
    caches.apply_cache(pipe, "teacache", params=params)
    try:
        assert compile_pipeline(pipe, backend="aot_eager") == ["blocks.0", "blocks.1"]
        got = run_pipe(pipe, "wan", steps=6)
    finally:
        uncompile_pipeline(pipe)
        caches.remove_cache(pipe)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


# -- the report, the job key, the refusals --------------------------------------------------------


def test_gen_quantize_in_report_and_job_key(tmp_path):
    """A video made unquantized is made anew under --quantize int8 (its job key, so its name, differs),
    then skipped; the unquantized one is kept under its own name."""
    out = tmp_path / "out"
    base = ["gen", "-p", PROMPT, "--frames", "9", "--height", "64", "--width", "64", "--steps", "3", "-o", str(out),
            "--json"]

    def run(*extra):
        r = CliRunner().invoke(app, [*base, *extra])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)["counts"]

    def counts(done, skipped):
        return {"done": done, "skipped": skipped, "claimed": 0, "failed": 0, "interrupted": 0}

    assert run() == counts(1, 0)
    assert run("--quantize", "int8") == counts(1, 0)
    assert run("--quantize", "int8") == counts(0, 1)
    reports = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "run.json"]
    assert sorted(r["quantize"]["mode"] for r in reports) == ["int8", "none"]
    assert json.loads((out / "run.json").read_text())["quantize"] == "int8"
    assert run() == counts(0, 1)  # and back: the unquantized video is still there


@pytest.fixture
def no_weights(monkeypatch):
    import diffusers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    for name in ("WanPipeline", "CogVideoXPipeline", "HunyuanVideoPipeline"):
        monkeypatch.setattr(getattr(diffusers, name), "from_pretrained", classmethod(refuse))
    return monkeypatch


@pytest.mark.parametrize(("args", "message"), [
    (["--quantize", "fp8"], "--quantize fp8 needs a CUDA GPU with fp8 matmuls (compute capability 8.9 or newer: "
                            "Ada, Hopper, Blackwell); on cpu use --quantize int8"),
    (["--quantize", "int4"], "Invalid value for '--quantize'"),
    (["--attention", "sage"], "--attention sage needs a CUDA device (use sdpa on cpu)"),
])
def test_refused_in_one_line_before_loading(no_weights, tmp_path, args, message):
    r = CliRunner().invoke(app, ["gen", "-p", PROMPT, "-o", str(tmp_path), *args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()) and "Traceback" not in r.output
    if "Invalid value" not in message:
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1, r.output


def test_quantize_refusals(monkeypatch):
    with pytest.raises(UsageError, match="expected none, fp8, int8"):
        quantize.check_quantize("int4", "cpu")
    quantize.check_quantize("int8", "cpu")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(UsageError, match=r"A100-SXM4-80GB \(compute capability 8.0\) has no fp8 matmuls"):
        quantize.check_quantize("fp8", "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    quantize.check_quantize("fp8", "cuda")
    monkeypatch.setattr(quantize, "torchao_version", lambda: None)
    with pytest.raises(UsageError, match=r"needs the 'torchao' package: pip install 'vidcache\[quant\]'"):
        quantize.check_quantize("int8", "cpu")
    monkeypatch.setattr(quantize, "torchao_version", lambda: "0.12.0")
    with pytest.raises(UsageError, match="torchao 0.12.0 is too old"):
        quantize.check_quantize("int8", "cpu")


def test_bench_refuses_bad_quantization_before_loading(no_weights, tmp_path):
    r = CliRunner().invoke(app, ["bench", "--caches", "teacache@fp8", "-p", "x", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--quantize fp8 needs a CUDA GPU" in " ".join(r.output.split()), r.output
    r = CliRunner().invoke(app, ["bench", "--caches", "teacache@int4", "-p", "x", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--caches teacache@int4: unknown quantization 'int4'" in r.output, r.output


# -- --attention sage: the refusals, and the name diffusers receives ----------------------------------


def test_sage_refusals_and_backend(monkeypatch):
    """SageAttention 2 cannot be installed here (its kernels need CUDA to build): its presence, its
    version and the card are mocked, nothing runs it. What is checked: every refusal, and that the
    name vidcache hands diffusers is diffusers' own "sage" backend."""
    import importlib.metadata
    import importlib.util

    import diffusers.utils

    from vidcache import loading
    from vidcache.models import ADAPTERS

    bf16 = torch.bfloat16
    wan, hunyuan, cogvideox = ADAPTERS["wan"], ADAPTERS["hunyuan"], ADAPTERS["cogvideox"]
    with pytest.raises(UsageError, match="needs a CUDA device"):
        check_attention("sage", "cpu", wan, torch.float32)
    real_find = importlib.util.find_spec
    if real_find("sageattention") is None:
        with pytest.raises(UsageError, match="needs the 'sageattention' package: build SageAttention 2"):
            check_attention("sage", "cuda", wan, bf16)
    monkeypatch.setattr(loading.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "sageattention" else real_find(name, *a))
    with monkeypatch.context() as m:  # PyPI's sageattention 1.0.6, which diffusers does not take
        real_version = importlib.metadata.version
        m.setattr(importlib.metadata, "version",
                  lambda name: "1.0.6" if name == "sageattention" else real_version(name))
        m.setattr(diffusers.utils, "is_sageattention_version", lambda op, v: False)
        with pytest.raises(UsageError, match=r"needs SageAttention 2.1.1 or newer \(found 1.0.6\)"):
            check_attention("sage", "cuda", wan, bf16)
    monkeypatch.setattr(diffusers.utils, "is_sageattention_version", lambda op, v: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(UsageError, match=r"needs compute capability 8.0 or newer; Tesla T4 is 7.5"):
        check_attention("sage", "cuda", wan, bf16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    with pytest.raises(UsageError, match="computes in bf16 or fp16"):
        check_attention("sage", "cuda", wan, torch.float32)
    with pytest.raises(UsageError, match="no attention mask, which hunyuan needs"):
        check_attention("sage", "cuda", hunyuan, bf16)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UsageError, match="cogvideox's attention processor calls PyTorch SDPA itself"):
        check_attention("sage", "cuda", cogvideox, bf16)
    backend = check_attention("sage", "cuda", wan, bf16)
    assert backend == "sage"
    # diffusers takes that name as its SageAttention backend (its own package check mocked present)
    from diffusers.models import attention_dispatch

    from vidcache.tiny import build_tiny_wan

    monkeypatch.setattr(attention_dispatch, "_CAN_USE_SAGE_ATTN", True)
    # set_attention_backend also makes "sage" diffusers' process-wide default: put it back afterwards
    registry = attention_dispatch._AttentionBackendRegistry
    monkeypatch.setattr(registry, "_active_backend", registry._active_backend)
    tr = build_tiny_wan().transformer
    tr.set_attention_backend(backend)
    backends = {m.processor._attention_backend for m in tr.modules() if hasattr(m, "processor")}
    assert backends == {attention_dispatch.AttentionBackendName.SAGE}

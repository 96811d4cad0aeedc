"""The methods as their authors ran them (issue 17): each test re-derives a rule from the official
code's own logic (read in the official repositories, restated here) and checks vidcache against it.

* FasterCache on CogVideoX: the official sample script's schedule (counter-based attention and
  CFG reuse from step 17, band deltas compounding x1.1 per reuse step).
* FasterCache on Wan: the uncond branch keeps no attention outputs it can never use.
* AdaCache: the metric is the metric block's self-attention output, divided by the rate in force;
  codebooks follow the step count as the paper's two books do.
* TeaCache on Wan: the time embedding indicator is computed in fp32, in the plan and live alike.
* MixCache: says it is our design; splits a batched forward only where the batch really is
  [uncond, cond]; measures in fp32 without full fp32 copies.
* PAB: the broadcast counter counts every call of a module, as VideoSys does.
* The first frame: the default presets keep it (the causal VAE makes it the most fragile).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_gpu_path import Driver

from vidcache import caches
from vidcache.caches import adacache, base
from vidcache.models.schedules import reference_timesteps

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    from vidcache.tiny import BUILDERS

    pipes = {fam: BUILDERS[fam]() for fam in ("wan", "cogvideox")}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def _driver(pipe, family: str, timesteps: list[float]) -> Driver:
    d = Driver(family, pipe, steps=len(timesteps))
    d.host_ts = torch.tensor(timesteps, dtype=torch.float32)
    return d


def _outputs_and_stats(d: Driver, method: str, params: dict) -> tuple[list[torch.Tensor], dict]:
    caches.apply_cache(d.shim, method, params=params)
    try:
        outs = d.video()
        return outs, caches.cache_stats(d.shim)
    finally:
        caches.remove_cache(d.shim)


# ------------------------------------------------------------------------------ FasterCache


def _official_fft(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official script's split: fftshift(fft2) over the last two dims, a centred disc of radius
    min(H, W) // 5 is the low band."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1))
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    low = (xs - w // 2) ** 2 + (ys - h // 2) ** 2 <= (min(h, w) // 5) ** 2
    return spectrum * low, spectrum * ~low


def _official_ifft(spectrum: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real


def test_fastercache_cogvideox_preset_is_the_official_schedule(tiny):
    """The cogvideox preset on its own 50-step schedule: with the official counter c = step + 1,
    the uncond rows are dropped iff c >= 18 and c % 5 != 0; an attention output is extrapolated
    (w 0.3) iff c >= 18, c % 3 != 0 and the cache holds enough rows; a synthesised uncond is
    cond + 1.1^k_lf dLF + 1.1^k_hf dHF, the band weights compounding on every reuse step since the
    last full one (low band while c <= 40, high band while c >= 30)."""
    ts = reference_timesteps("cogvideox")
    params = caches.preset_params("cogvideox", "fastercache")
    outs, stats = _outputs_and_stats(_driver(tiny["cogvideox"], "cogvideox", ts), "fastercache", params)
    n_attn = stats["per_step"][0]["attention"]["spatial"][1] // 2
    cached_rows, k_lf, k_hf, delta = None, 0, 0, None
    for s, (entry, out) in enumerate(zip(stats["per_step"], outs, strict=True)):
        c = s + 1
        cond_only = c >= 18 and c % 5 != 0
        rows = 1 if cond_only else 2
        reuse_attention = c >= 18 and c % 3 != 0 and cached_rows is not None and cached_rows >= rows
        if not reuse_attention:
            cached_rows = rows
        assert entry["blocks"] == [rows * len(tiny["cogvideox"].transformer.transformer_blocks), 4], (s, entry)
        assert entry["attention"]["spatial"][0] == (0 if reuse_attention else rows * n_attn), (s, entry)
        uncond, cond = out.float().chunk(2)
        if not cond_only:
            (lf_u, hf_u), (lf_c, hf_c) = _official_fft(uncond), _official_fft(cond)
            delta, k_lf, k_hf = (lf_u - lf_c, hf_u - hf_c), 0, 0
            continue
        k_lf += c <= 40
        k_hf += c >= 30
        lf_c, hf_c = _official_fft(cond)
        expected = _official_ifft(lf_c + 1.1**k_lf * delta[0] + hf_c + 1.1**k_hf * delta[1])
        torch.testing.assert_close(uncond, expected, atol=1e-4, rtol=1e-4)


def test_fastercache_wan_uncond_keeps_no_attention_it_cannot_use(tiny):
    """On Wan the CFG-Cache skips the uncond forward, so inside the CFG window uncond never
    extrapolates attention: with the attention window inside the CFG window it keeps none, the
    measured peak is cond's two outputs per self-attention module plus the CFG-Cache's latent
    tensors, and the estimate says the same."""
    from vidcache.memory import JobShape, estimate_cache_bytes, model_shape

    pipe = tiny["wan"]
    d = Driver("wan", pipe, steps=10)
    params = {"attention_range": 2, "attention_window": [-1, 990], "cfg_range": 3, "cfg_window": [-1, 990]}
    _, stats = _outputs_and_stats(d, "fastercache", params)
    shape = model_shape(pipe)
    job = JobShape(9, 64, 64, 16, cfg=True)
    tokens = 3 * 4 * 4  # 3 latent frames of 8 x 8, patches of 2 x 2
    one_branch = 2 * shape.attention["spatial"] * tokens * shape.hidden * 4  # two fp32 outputs per module
    latent = d.kwargs["hidden_states"].numel()
    expected = one_branch + latent * 4 + latent * 4  # + the fp32 delta and cond's output (fp32 model)
    assert stats["memory_bytes"] == expected
    assert estimate_cache_bytes("fastercache", params, shape, job) == expected
    uncond_reused = [e for e in stats["per_step"] if e["branch"] == "uncond" and e["attention"]["spatial"][0] == 0
                     and e["blocks"][0] > 0]
    assert not uncond_reused


# ------------------------------------------------------------------------------ AdaCache


def test_adacache_measures_the_metric_blocks_attention_divided_by_the_rate_in_force(tiny):
    """The distance of a computed step is rel_L1 of the metric block's self-attention output
    against the last computed one, divided by the reuse length that was in force (the official
    ``cache_diff / prev_rate``), not by the steps since (they differ on the forced last steps). As
    the official batched forward does, the norms cover both CFG branches and one schedule serves
    both: Wan's uncond forward decides for the step."""
    pipe = tiny["wan"]
    tr = pipe.transformer
    layout = base.layout_of(tr)
    metric = len(layout.blocks(tr)) // 2
    attn = next(m for k, m, kind in layout.attention_modules(tr) if k == f"blocks.{metric}.attn1")
    seen: list[torch.Tensor] = []
    handle = attn.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    try:
        _, stats = _outputs_and_stats(Driver("wan", pipe, steps=10), "adacache",
                                      {"codebook": [[1e9, 2]], "codebook_steps": 10})
    finally:
        handle.remove()
    computed = [e for e in stats["per_step"] if e["blocks"][0] == e["blocks"][1]]
    assert len(computed) == len(seen)
    for step in range(10):  # one schedule: both branches compute or both reuse
        assert len({e["blocks"][0] for e in stats["per_step"] if e["step"] == step}) == 1
    outs = {(e["step"], e["branch"]): out for e, out in zip(computed, seen)}
    steps = sorted({s for s, _ in outs})
    checked = 0
    for prev_step, step in zip(steps, steps[1:]):
        prev = next(e for e in computed if e["step"] == prev_step and e["branch"] == "uncond")
        entry = next(e for e in computed if e["step"] == step and e["branch"] == "uncond")
        num = sum(float((outs[(step, b)] - outs[(prev_step, b)]).abs().sum()) for b in ("cond", "uncond"))
        den = sum(float(outs[(prev_step, b)].abs().sum()) for b in ("cond", "uncond"))
        assert entry["distance"] == pytest.approx(num / den / prev["rate"], rel=1e-5), entry
        checked += 1
    assert checked >= 4 and 8 in steps and 7 in steps  # step 8: forced one step after a rate of 2


def test_adacache_codebooks_follow_the_paper_books_across_step_counts():
    """The paper's 30-step fast book, carried to 100 steps, gives its 100-step book's reuse lengths
    (12, 10, 8, 6, 4: lengths grow as (N/30)^0.58, not as N/30) and thresholds x 30/100."""
    to_100 = adacache.scale_codebook(adacache.FAST_30, 30, 100)
    assert [r for _, r in to_100[:5]] == [r for _, r in adacache.PAPER_100[:5]]
    assert [t for t, _ in to_100] == pytest.approx([t * 0.3 for t, _ in adacache.FAST_30])
    assert [r for _, r in adacache.scale_codebook(adacache.FAST_30, 30, 50)] == [8, 6, 5, 4, 2, 1]
    # and both books land on the same 50-step reuse lengths, from either side
    assert [r for _, r in adacache.scale_codebook(adacache.PAPER_100, 100, 50)][:5] == [8, 6, 5, 4, 2]
    # fewer steps than stated: floor, but a reuse entry stays a reuse entry (2 -> 1 would never reuse)
    assert [r for _, r in adacache.scale_codebook(adacache.FAST_30, 30, 15)] == [4, 3, 2, 2, 2, 1]
    assert [r for _, r in adacache.scale_codebook([[0.06, 2], [0.12, 1]], 25, 15)] == [2, 1]
    assert adacache.REUSE_EXPONENT == pytest.approx(0.5757, abs=1e-4)
    from vidcache import presets

    for name in ("wan", "wan-14b", "hunyuan", "cogvideox", "cogvideox-5b"):  # stated as the paper's books, rescaled
        preset = presets.load(name)
        steps = preset.defaults["steps"]
        assert preset.methods["adacache"]["codebook"] == adacache.scale_codebook(adacache.FAST_30, 30, steps), name


# ------------------------------------------------------------------------------ TeaCache


def test_teacache_wan_indicator_is_fp32_in_the_plan_and_live(monkeypatch):
    """In bf16 the time embedding TeaCache compares is computed in fp32 (as the official code does
    and as its coefficients were fitted), both when the schedule is planned and when a forward reads
    it live; the bf16 embedder output it used to read is off by far more than fp32 rounding."""
    from vidcache.caches.teacache import TeaCacheBlockHook
    from vidcache.tiny import BUILDERS

    pipe = BUILDERS["wan"]()
    tr = pipe.transformer.to(torch.bfloat16)
    layout = base.layout_of(tr)
    ts = torch.tensor([999.0, 901.0, 765.0, 512.0, 250.0])
    ce32 = copy.deepcopy(tr.condition_embedder).float()
    with torch.no_grad():
        reference = ce32.time_embedder(ce32.timesteps_proj(ts))
        planned = layout.timestep_indicators(tr, ts, False)
        bf16 = tr.condition_embedder.time_embedder(tr.condition_embedder.timesteps_proj(ts).bfloat16()).float()
    torch.testing.assert_close(planned, reference, rtol=1e-5, atol=1e-6)
    assert (bf16 - reference).abs().max() > 1e-4  # the test can tell the two apart
    d = Driver("wan", pipe, steps=5)
    d.host_ts = ts
    d.kwargs = {k: v.bfloat16() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in d.kwargs.items()}
    params = {"coefficients": [0, 0, 0, 1.0, 0], "thresh": 1e9}
    for live in (False, True):
        if live:
            monkeypatch.setattr(TeaCacheBlockHook, "_plan", lambda self, *a: {})
        _, stats = _outputs_and_stats(d, "teacache", params)
        got = [e["rel_l1"] for e in stats["per_step"] if e["branch"] == "cond" and e["rel_l1"] is not None]
        want = [float((reference[i] - reference[i - 1]).abs().sum() / reference[i - 1].abs().sum())
                for i in range(1, 4)]
        assert got == pytest.approx(want, rel=1e-5), live


# ------------------------------------------------------------------------------ MixCache


def test_mixcache_says_it_is_our_design(tiny_dirs, tmp_path):
    import json

    from typer.testing import CliRunner

    from vidcache.cli import app

    note = caches.method_note("mixcache")
    assert note and "our own design" in note and "abstract" in note
    assert caches.method_note("teacache") is None
    r = CliRunner().invoke(app, ["gen", "--model", tiny_dirs["wan"], "--cache", "mixcache", "-p", "a red ball",
                                 "--out", str(tmp_path), "--frames", "9", "--height", "64", "--width", "64",
                                 "--steps", "4", "--set", "defaults.text_len=16"])
    assert r.exit_code == 0, r.output
    report = json.loads(next(tmp_path.glob("a-red-ball-*.json")).read_text())
    assert report["cache"]["method_note"] == note
    r = CliRunner().invoke(app, ["presets", "tiny"])
    assert r.exit_code == 0 and "our own design" in r.output
    r = CliRunner().invoke(app, ["presets", "tiny", "--json"])
    assert json.loads(r.stdout)["tiny"]["method_notes"]["mixcache"] == note


def test_mixcache_cfg_step_leaves_a_size_one_conditioning_alone():
    """CogVideoX image-to-video passes ``ofs`` with one row for the whole [uncond, cond] batch: the
    cond-only half batch must cut the batched inputs, not that one."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(0)
    tr = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=32,
        text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=16, ofs_embed_dim=32,
    ).eval()
    from types import SimpleNamespace

    ts = torch.tensor([999.0, 800.0, 600.0, 400.0, 200.0, 1.0])
    shim = SimpleNamespace(transformer=tr, scheduler=SimpleNamespace(timesteps=ts), do_classifier_free_guidance=True)
    g = torch.Generator().manual_seed(0)
    hidden, text = torch.randn(2, 3, 4, 8, 8, generator=g), torch.randn(2, 16, 32, generator=g)
    caches.apply_cache(shim, "mixcache", granularities=["cfg"], start=0.0, trigger=1e9, last_steps=1,
                       cfg_budget=1e9, max_streak=1)
    try:
        for i in range(len(ts)):
            with torch.no_grad(), tr.cache_context("cond_uncond"):
                tr(hidden_states=hidden, encoder_hidden_states=text, timestep=ts[i:i + 1].expand(2),
                   ofs=torch.full((1,), 2.0), return_dict=False)
        used = [e["granularity"] for e in caches.cache_stats(shim)["per_step"]]
    finally:
        caches.remove_cache(shim)
    assert "cfg" in used


def test_mixcache_measures_without_full_fp32_copies():
    """In bf16, an exact MixCache forward creates no more hidden-sized fp32 tensors than the
    uncached forward itself (its L1 sums accumulate in fp32 on the fly)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from vidcache.tiny import BUILDERS

    pipe = BUILDERS["wan"]()
    pipe.transformer.to(torch.bfloat16)
    d = Driver("wan", pipe, steps=4)
    d.kwargs = {k: v.bfloat16() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in d.kwargs.items()}
    tokens = d.kwargs["hidden_states"][0, 0].numel() // 4
    size = tokens * pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim

    class Fp32Hidden(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if torch.is_tensor(t) and t.dtype == torch.float32 and t.numel() >= size:
                    self.count += 1
            return out

    def counted(run):
        with Fp32Hidden() as mode:
            run()
        return mode.count

    uncached = d.video(counted)
    caches.apply_cache(d.shim, "mixcache", trigger=0.0)  # never reuses: every forward is exact and measured
    try:
        cached = d.video(counted)
    finally:
        caches.remove_cache(d.shim)
    assert cached == uncached


# ------------------------------------------------------------------------------ PAB


def test_pab_counts_every_call_as_videosys_does(tiny):
    """VideoSys' counter advances on every call of a module, inside the window or not: with range 2
    a window starting at an odd step broadcasts on the odd steps inside it (an in-window counter
    would broadcast on the even ones)."""
    ts = [999.0, 900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 300.0, 200.0, 100.0]
    params = {"spatial_range": 2, "spatial_window": [250, 750], "cross_range": 1}  # steps 3-7
    _, stats = _outputs_and_stats(_driver(tiny["wan"], "wan", ts), "pab", params)
    reused = sorted({e["step"] for e in stats["per_step"] if e["attention"]["spatial"][0] == 0})
    assert reused == [3, 5, 7]
    assert np.all([e["attention"]["spatial"][0] in (0, e["attention"]["spatial"][1]) for e in stats["per_step"]])


# ------------------------------------------------------------------------------ the first frame


def test_default_presets_keep_the_first_frame():
    """Issue 17's report: under step reuse Wan's first frame broke first (22.8 dB with red blobs while
    the clip's mean was 29.9). The first latent frame is decoded alone by the causal VAE and feeds every
    later frame's decoding: the same latent error there costs 4-15 dB more in pixels than in any other
    latent frame (docs/benchmarks.md), and a reuse among the first steps puts most of its error there.
    On the shipped tiny model, at its default size and steps, the default TeaCache, AdaCache and
    MixCache presets reuse steps and keep frame 0 above 40 dB (lowest over the 20 held-out prompts:
    43.3 dB), on the held-out prompt where frame 0 fared worst; the same TeaCache reusing from step 1
    breaks it (the test would catch the old behaviour)."""
    from pathlib import Path

    from vidcache import jobs, metrics
    from vidcache.runner import RunConfig, Runner, plan_run

    prompts = [jobs.Prompt("a green square moving left", {}, "test")]
    runner = Runner(plan_run(RunConfig(model="tiny", out=Path(".")), prompts))
    runner.load()
    try:
        job = runner.plan.jobs[0]
        ref = runner.generate(job)[0]
        first = {}
        for method in ("teacache", "adacache", "mixcache"):
            runner.set_cache(method, None, caches.preset_params("tiny", method))
            frames, report = runner.generate(job)
            assert report["cache"]["stats"]["compute_ratio"] < 0.9, method
            first[method] = metrics.psnr_frames(ref, frames)[0]
        early = {**caches.preset_params("tiny", "teacache"), "first_steps": 1}
        runner.set_cache("teacache", None, early)
        early_first = metrics.psnr_frames(ref, runner.generate(job)[0])[0]
    finally:
        runner.close()
    assert min(first.values()) > 40.0, first
    assert early_first < 40.0 < min(first.values()), (early_first, first)

"""AdaCache, MixCache and diffusers' FBCache / TaylorSeer / MagCache on tiny Wan, CogVideoX and
HunyuanVideo pipelines.

What runs is counted by plain torch hooks on the blocks' own self-attention modules (one per block
in all three families), weighted by the rows of the batch they process: that is independent of
what a method believes it ran, and must equal the ``compute_ratio`` it reports.

Stated bound: every method, at the test settings below, stays within PSNR >= 30 dB of the uncached
video (frames in [0, 1]) on the tiny random-weight models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import load_pipe, run_pipe

from vidcache import caches
from vidcache.caches import adacache, base

FAMILIES = ("wan", "cogvideox", "hunyuan")
STEPS = 6
PSNR_BOUND = 30.0

# settings that make each method reuse on a 6-step tiny run
FIRING = {
    "adacache": {"codebook": [[1e9, 2]], "codebook_steps": STEPS},
    "mixcache": {
        "start": 0.0, "trigger": 1e9, "step_budget": 1.0, "cfg_budget": 1.0, "block_budget": 1.0,
        "max_streak": 1,
    },
    "fbcache": {"threshold": 0.6},
    "taylorseer": {"cache_interval": 2, "disable_cache_before_step": 2},
    "magcache": {"mag_ratios": [1.0] * STEPS, "max_skip_steps": 2},
    "seacache": {"threshold": 10.0},
}
METHODS = tuple(FIRING)


@pytest.fixture(scope="module")
def pipes(tiny_dirs):
    return {fam: load_pipe(tiny_dirs[fam]) for fam in FAMILIES}


@pytest.fixture(scope="module")
def references(pipes):
    return {fam: run_pipe(pipes[fam], fam, steps=STEPS) for fam in FAMILIES}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


class Probe:
    """Counts executed block units (self-attention calls x batch rows) and keeps each transformer
    output, in call order."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.units = 0
        self.outputs: list[torch.Tensor] = []
        layout = base.layout_of(transformer)
        spatial = [m for _, m, kind in layout.attention_modules(transformer) if kind == "spatial"]
        assert len(spatial) == len(layout.blocks(transformer))
        self.handles = [m.register_forward_pre_hook(self._count, with_kwargs=True) for m in spatial]
        self.handles.append(transformer.register_forward_hook(self._keep))

    def _count(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        self.units += hidden.shape[0]

    def _keep(self, module, args, output):
        self.outputs.append((output if torch.is_tensor(output) else output[0]).detach().clone())

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def probed_run(pipe, family: str, **kw):
    probe = Probe(pipe.transformer)
    try:
        frames = run_pipe(pipe, family, steps=STEPS, **kw)
    finally:
        probe.close()
    return frames, probe


@pytest.fixture(scope="module")
def uncached_units(pipes):
    out = {}
    for fam in FAMILIES:
        caches.remove_cache(pipes[fam])
        _, probe = probed_run(pipes[fam], fam)
        out[fam] = probe.units
    return out


# ------------------------------------------------------------------------------------------ all


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_skips_bound_reset_branches_remove(pipes, references, uncached_units, method, family):
    pipe, ref = pipes[family], references[family]
    params = caches.apply_cache(pipe, method, **FIRING[method])
    try:
        first, probe = probed_run(pipe, family)
        stats = caches.cache_stats(pipe)
        # it skips, and what it reports is what ran
        assert probe.units < uncached_units[family], stats["per_step"]
        assert stats["compute_ratio"] == pytest.approx(probe.units / uncached_units[family])
        assert stats["steps_reused"] > 0 and not stats["warnings"]
        # within the stated bound
        assert psnr(first, ref) >= PSNR_BOUND
        # state per cache context: Wan's uncond never takes cond's cached tensors
        if family == "wan":
            entries = stats["per_step"]
            assert len(entries) == len(probe.outputs) == 2 * STEPS
            by = {(e["step"], e["branch"]): (e, out) for e, out in zip(entries, probe.outputs)}
            both_reused = [
                s for s in range(STEPS)
                if all(by[(s, b)][0]["blocks"][0] < by[(s, b)][0]["blocks"][1] for b in ("cond", "uncond"))
            ]
            for s in both_reused:
                assert not torch.equal(by[(s, "cond")][1], by[(s, "uncond")][1])
        # a second video starts clean
        second = run_pipe(pipe, family, steps=STEPS)
        np.testing.assert_array_equal(first, second)
        if method in ("fbcache", "taylorseer", "magcache", "seacache"):
            assert params["implementation"].startswith("diffusers.hooks.")
    finally:
        caches.remove_cache(pipe)
    np.testing.assert_array_equal(run_pipe(pipe, family, steps=STEPS), ref)


def test_reports_name_the_diffusers_baselines(pipes):
    pipe = pipes["hunyuan"]
    for alias, table in (("diffusers-fbcache", "fbcache"), ("taylorseer", "taylorseer")):
        assert caches.method_fields(alias) == caches.method_fields(table)
        caches.apply_cache(pipe, alias, **FIRING[table])
        try:
            run_pipe(pipe, "hunyuan", steps=STEPS)
            assert caches.cache_stats(pipe)["method"] == f"diffusers-{table}"
        finally:
            caches.remove_cache(pipe)


def test_fbcache_uses_the_family_threshold(pipes):
    for fam, expected in (("wan", 0.03), ("cogvideox", 0.04), ("hunyuan", 0.06)):
        params = caches.apply_cache(pipes[fam], "fbcache")
        caches.remove_cache(pipes[fam])
        assert params["threshold"] == expected


def test_taylorseer_hooks_every_block(pipes):
    for fam in FAMILIES:
        params = caches.apply_cache(pipes[fam], "taylorseer")
        caches.remove_cache(pipes[fam])
        assert params["hooked_modules"] == len(base.layout_of(pipes[fam].transformer).blocks(pipes[fam].transformer))


def test_seacache_gate_decides_as_diffusers_own(pipes, references, monkeypatch):
    """On Wan, where diffusers' SeaCache runs as shipped, vidcache's rank-agreed gate takes the same
    decisions and renders the same video as diffusers' own gate."""
    from vidcache.caches import baselines

    pipe, runs = pipes["wan"], []
    for agreed in (True, False):
        if not agreed:  # leave diffusers' own resolve_gate on the shared state
            monkeypatch.setattr(baselines, "_agreed_sea_gate", lambda shared, states: shared.resolve_gate)
        caches.apply_cache(pipe, "seacache", threshold=1.0)
        try:
            video = run_pipe(pipe, "wan", steps=STEPS)
            runs.append((video, [e["blocks"] for e in caches.cache_stats(pipe)["per_step"]]))
        finally:
            caches.remove_cache(pipe)
    assert runs[0][1] == runs[1][1] and any(b[0] == 0 for b in runs[0][1])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])


@pytest.mark.parametrize("family", FAMILIES)
def test_seacache_gets_the_step_and_noise_level_on_every_family(pipes, family):
    """Only Wan's pipeline gives diffusers' SeaCache its step, step count and sigma: on the others
    vidcache supplies them, so it reuses (diffusers alone would run every step there) and reports
    the distances it decided on."""
    caches.apply_cache(pipes[family], "seacache", threshold=10.0)
    try:
        run_pipe(pipes[family], family, steps=STEPS)
        stats = caches.cache_stats(pipes[family])
    finally:
        caches.remove_cache(pipes[family])
    assert stats["method"] == "diffusers-seacache" and stats["compute_ratio"] == pytest.approx(0.5)
    assert all(e["distance"] > 0 for e in stats["per_step"] if "distance" in e)


def test_seacache_indicator_is_diffusers_filter():
    from diffusers.hooks.sea_cache import _apply_sea_filter

    from vidcache.caches.baselines import sea_indicator

    latent = torch.randn(4, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    for sigma in (0.05, 0.5, 0.97):
        ours = sea_indicator(latent, sigma, 3.0)
        theirs = _apply_sea_filter(latent.movedim(0, -1), sigma=sigma, power_exp=3.0)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        assert ours.untyped_storage().nbytes() == ours.numel() * 4  # not a view of a complex tensor


def test_seacache_noise_level():
    from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler

    from vidcache.caches.baselines import noise_level

    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(10)
    for t, sigma in zip(flow.timesteps.tolist(), flow.sigmas.tolist()):
        assert noise_level(flow, t) == pytest.approx(sigma, abs=1e-6)
    vp = CogVideoXDDIMScheduler(rescale_betas_zero_snr=True)
    a = float(vp.alphas_cumprod[500])
    assert noise_level(vp, 500.0) == pytest.approx(a**-0.5 * (1 - a) ** 0.5 / (1 + a**-0.5 * (1 - a) ** 0.5))
    assert noise_level(vp, 999.0) == pytest.approx(1.0, abs=1e-3) and noise_level(vp, 0.0) < 0.1


def test_magcache_calibrates_on_the_first_video(pipes, references):
    pipe = pipes["cogvideox"]
    params = caches.apply_cache(pipe, "magcache", threshold=1.0, max_skip_steps=2)
    try:
        first = run_pipe(pipe, "cogvideox", steps=STEPS)
        stats = caches.cache_stats(pipe)
        assert stats["compute_ratio"] == 1.0 and "calibrated" in stats["warnings"][0]
        np.testing.assert_array_equal(first, references["cogvideox"])
        assert len(params["mag_ratios"]) == STEPS and params["mag_ratios_source"] == "calibrated on video 1"
        run_pipe(pipe, "cogvideox", steps=STEPS)
        assert caches.cache_stats(pipe)["compute_ratio"] < 1.0
    finally:
        caches.remove_cache(pipe)


# ------------------------------------------------------------------------------------------ AdaCache


def _computed_steps(stats: dict) -> list[int]:
    return sorted({e["step"] for e in stats["per_step"] if e["blocks"][0] == e["blocks"][1]})


@pytest.mark.parametrize("family", FAMILIES)
def test_adacache_codebooks(pipes, uncached_units, family):
    pipe = pipes[family]
    try:
        caches.apply_cache(pipe, "adacache", codebook=[[1.0, 1]], codebook_steps=STEPS)
        _, probe = probed_run(pipe, family)
        assert probe.units == uncached_units[family]
        assert _computed_steps(caches.cache_stats(pipe)) == list(range(STEPS))
        # a huge reuse length: only step 0, step 1 (the first distance) and the last two compute
        caches.apply_cache(pipe, "adacache", codebook=[[1e9, 1000]], codebook_steps=STEPS, moreg=True)
        _, probe = probed_run(pipe, family)
        assert _computed_steps(caches.cache_stats(pipe)) == [0, 1, STEPS - 2, STEPS - 1]
        assert probe.units == uncached_units[family] * 4 // STEPS
    finally:
        caches.remove_cache(pipe)


def test_adacache_rescales_codebooks_and_says_so(pipes):
    pipe = pipes["wan"]
    params = caches.apply_cache(pipe, "adacache", codebook=adacache.FAST_30, codebook_steps=30)
    try:
        run_pipe(pipe, "wan", steps=STEPS)
        assert params["codebook_scaled_for_steps"] == STEPS
        assert params["codebook_used"] == adacache.scale_codebook(adacache.FAST_30, 30, STEPS)
    finally:
        caches.remove_cache(pipe)
    assert adacache.scale_codebook(adacache.FAST_30, 30, 50)[0] == [0.048, 8]
    assert adacache.scale_codebook(adacache.PAPER_100, 100, 50)[-1] == [2.0, 2]
    assert adacache.lookup([[0.1, 4], [1.0, 1]], 0.05) == 4 and adacache.lookup([[0.1, 4], [1.0, 1]], 5.0) == 1


def test_adacache_rejects_bad_codebooks():
    for bad in ([], [[0.2, 2], [0.1, 1]], [[0.1, 0]], [[0.1, 1.5]], "fast"):
        with pytest.raises(ValueError, match="codebook"):
            base.build_config(adacache.AdaCacheConfig, {"codebook": bad}, "adacache")


# ------------------------------------------------------------------------------------------ MixCache


@pytest.mark.parametrize("family", FAMILIES)
def test_mixcache_never_triggered_computes_every_step(pipes, references, uncached_units, family):
    pipe = pipes[family]
    caches.apply_cache(pipe, "mixcache", **{**FIRING["mixcache"], "trigger": 0.0})
    try:
        frames, probe = probed_run(pipe, family)
        stats = caches.cache_stats(pipe)
    finally:
        caches.remove_cache(pipe)
    assert probe.units == uncached_units[family]
    np.testing.assert_array_equal(frames, references[family])
    assert {e["granularity"] for e in stats["per_step"]} == {"full"}
    assert all(e.get("reason") in ("trigger not met", "last steps") for e in stats["per_step"])


@pytest.mark.parametrize("family", FAMILIES)
def test_mixcache_reports_granularity_per_step(pipes, family):
    pipe = pipes[family]
    caches.apply_cache(pipe, "mixcache", **FIRING["mixcache"])
    try:
        run_pipe(pipe, family, steps=STEPS)
        stats = caches.cache_stats(pipe)
    finally:
        caches.remove_cache(pipe)
    used = [e["granularity"] for e in stats["per_step"]]
    assert set(used) <= {"full", "step", "cfg", "block"}
    assert len(set(used) - {"full"}) >= 2  # it mixes (max_streak 1 forbids repeating one)
    assert ("cfg" in used) == (family != "hunyuan")  # no CFG-level reuse on a distilled model
    steps = [(e["step"], e["granularity"]) for e in stats["per_step"]]
    for (s0, g0), (s1, g1) in zip(steps, steps[1:]):
        if s1 == s0 + 1 and g0 != "full":
            assert g1 != g0  # max_streak = 1


# ------------------------------------------------------------------------------------------ forecast


@pytest.mark.parametrize("kind", ["residual1", "output1"])
@pytest.mark.parametrize(("method", "params"), [
    ("teacache", {"coefficients": [0, 0, 0, 1.0, 0], "thresh": 1e9, "first_steps": 3}),
    ("adacache", {"codebook": [[1e9, 2]], "codebook_steps": STEPS}),
    ("mixcache", {**FIRING["mixcache"], "granularities": ["step"]}),
])
def test_first_order_forecast_extrapolates_the_last_two_computed_steps(pipes, method, params, kind):
    """A reused step's stack output is, with forecast residual1, its input plus r1 + (r1 - r0)
    (k - k1) / (k1 - k0) (r: the stack residuals of the branch's last two computed steps k0 < k1;
    SeaCache's first order); with output1, o1 + (o1 - o0) (k - k1) / (k1 - k0) of the stack outputs
    (TaylorSeer's first order at the stack level)."""
    pipe = pipes["wan"]
    tr = pipe.transformer
    seen = []

    def stack_in(module, args, kwargs):
        seen.append([kwargs.get("hidden_states", args[0] if args else None)])

    pre = tr.blocks[0].register_forward_pre_hook(stack_in, with_kwargs=True)
    post = tr.blocks[-1].register_forward_hook(lambda m, a, out: seen[-1].append(out))
    caches.apply_cache(pipe, method, **params, forecast=kind)
    try:
        run_pipe(pipe, "wan", steps=STEPS)
        entries = caches.cache_stats(pipe)["per_step"]
    finally:
        pre.remove()
        post.remove()
        caches.remove_cache(pipe)
    history: dict[str, list] = {"cond": [], "uncond": []}
    checked = 0
    for entry, (x_in, x_out) in zip(entries, seen, strict=True):
        mine = history[entry["branch"]]
        if entry["blocks"][0] == entry["blocks"][1]:
            mine.append((entry["step"], x_in, x_out))
            continue
        (k0, in0, out0), (k1, in1, out1) = mine[-2], mine[-1]
        w = (entry["step"] - k1) / (k1 - k0)
        if kind == "residual1":
            expected = x_in + (out1 - in1) + w * ((out1 - in1) - (out0 - in0))
        else:
            expected = out1 + w * (out1 - out0)
        torch.testing.assert_close(x_out, expected, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked > 0


def test_forecast_rules():
    from vidcache.caches.teacache import forecast

    stack_in = (torch.full((2,), 10.0), None)
    q0, q1 = (torch.zeros(2), None), (torch.ones(2), None)
    torch.testing.assert_close(forecast("residual", q1, 4, q0, 2, 5, stack_in)[0], torch.full((2,), 11.0))
    torch.testing.assert_close(forecast("residual1", q1, 4, q0, 2, 5, stack_in)[0], torch.full((2,), 11.5))
    torch.testing.assert_close(forecast("output1", q1, 4, q0, 2, 5, stack_in)[0], torch.full((2,), 1.5))
    torch.testing.assert_close(forecast("output1", q1, 4, None, None, 5, stack_in)[0], torch.ones(2))
    for method in ("teacache", "adacache", "mixcache"):
        with pytest.raises(ValueError, match="forecast"):
            base.build_config(caches.REGISTRY[method].config, {"forecast": "second"}, method)

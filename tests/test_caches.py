"""The caching framework and PAB, FasterCache and TeaCache on tiny Wan, CogVideoX and HunyuanVideo.

What really ran is counted with the test's own ``torch`` forward hooks on submodules that only run
when a block or an attention module computes (a block's MLP, an attention's ``to_q``), never from
the method's statistics; the statistics are then checked against those counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from conftest import FAMILIES, load_pipe, run_pipe
from diffusers.hooks.hooks import CacheContext

import vidcache
from vidcache.caches import (
    METHOD_NAMES,
    apply_cache,
    base,
    cache_stats,
    check_preset,
    method_fields,
    remove_cache,
    reset_cache,
)
from vidcache.caches.fastercache import FasterCacheConfig, band, band_weights, synthesise_uncond
from vidcache.caches.teacache import TeaCacheConfig, precompute_schedule
from vidcache.models.schedules import REFERENCE_SCHEDULERS, reference_timesteps, window_steps

STEPS = 10
METHODS = ("pab", "fastercache", "teacache")

# Parameters the main test runs with: windows over most of the 10 tiny steps so that every rule
# has room to act (the shipped presets are tuned for 50 steps).
TEST_PARAMS = {
    "pab": {"spatial_range": 2, "spatial_window": [100, 990], "cross_range": 3,
            "cross_window": [100, 990]},
    "fastercache": {"attention_range": 2, "attention_window": [-1, 990], "attention_weight": 0.5,
                    "cfg_range": 3, "cfg_window": [-1, 990], "alpha": 0.2, "cfg_t0": 500},
    # raw relative L1 of the indicator (no fitted polynomial exists for the tiny models); the
    # threshold is per family below
    "teacache": {"coefficients": [0.0, 0.0, 0.0, 1.0, 0.0]},
}
# the tiny models' indicators move by about 0.7-1.2 (Wan, CogVideoX: temb of an untrained MLP)
# and 0.04-0.07 (HunyuanVideo: modulated input) per step over 10 steps
TEA_THRESH = {"wan": 1.0, "wan2": 1.0, "cogvideox": 1.0, "hunyuan": 0.12}


def params_for(method: str, family: str) -> dict:
    params = dict(TEST_PARAMS[method])
    if method == "teacache":
        params["thresh"] = TEA_THRESH[family]
    return params

# Largest |cached - uncached| over the decoded frames (values in [0, 1]) we accept: about twice
# the values measured on the tiny models (docs/caches.md). CogVideoX's are the largest: an error in
# the uncond half is multiplied by (guidance - 1) = 4 in the guided prediction.
BOUNDS = {
    ("pab", "wan"): 0.01, ("pab", "cogvideox"): 0.1, ("pab", "hunyuan"): 0.005,
    ("fastercache", "wan"): 0.02, ("fastercache", "cogvideox"): 0.35,
    ("fastercache", "hunyuan"): 0.005,
    ("teacache", "wan"): 0.02, ("teacache", "cogvideox"): 0.15, ("teacache", "hunyuan"): 0.01,
}

# submodules that run only when the block / attention really computes
_BLOCK_PROBE = {"wan": "ffn", "cogvideox": "ff", "hunyuan": "ff"}
_HUNYUAN_SINGLE_PROBE = "proj_mlp"


# ------------------------------------------------------------------------------------ probe


@dataclass
class Forward:
    expert: int
    branch: str
    step: int
    t: float
    batch: int
    blocks: dict[str, int] = field(default_factory=dict)  # block key -> rows computed
    attention: dict[str, int] = field(default_factory=dict)  # attention key -> rows computed
    attn_out: dict[str, object] = field(default_factory=dict)  # attention key -> output seen
    stack_in: torch.Tensor | None = None
    stack_out: torch.Tensor | None = None


class Probe:
    """Records, per transformer forward, what executed: our own hooks on the modules themselves."""

    def __init__(self, pipe, family: str, keep_outputs: bool = False) -> None:
        self.forwards: list[Forward] = []
        self.branch = None
        self.step = -1
        self.handles = []
        self.patched = []
        self.family = family
        transformers = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t]
        for expert, tr in enumerate(transformers):
            self._patch_context(tr)
            self.handles.append(tr.register_forward_pre_hook(self._start(expert), with_kwargs=True))
            layout = base.layout_of(tr)
            blocks = layout.blocks(tr)
            for key, block in blocks:
                name = _BLOCK_PROBE[family]
                if key.startswith("single_transformer_blocks"):
                    name = _HUNYUAN_SINGLE_PROBE
                self.handles.append(
                    getattr(block, name).register_forward_pre_hook(self._count("blocks", key))
                )
            for key, attn, _ in layout.attention_modules(tr):
                count = self._count("attention", key)
                self.handles.append(attn.to_q.register_forward_pre_hook(count))
                if keep_outputs:
                    self.handles.append(attn.register_forward_hook(self._output(key)))
            if keep_outputs:
                self.handles.append(blocks[0][1].register_forward_pre_hook(
                    self._stack_in, with_kwargs=True))
                self.handles.append(blocks[-1][1].register_forward_hook(self._stack_out))

    def _patch_context(self, tr) -> None:
        original = tr.cache_context
        probe = self

        @contextlib.contextmanager
        def cache_context(name, **kwargs):
            probe.branch = name
            if name in ("cond", "cond_uncond"):
                probe.step += 1
            with original(name, **kwargs):
                yield

        tr.cache_context = cache_context
        self.patched.append(tr)

    def _start(self, expert):
        def hook(module, args, kwargs):
            ts = kwargs["timestep"]
            self.forwards.append(Forward(expert, self.branch, self.step, float(ts.max()),
                                         kwargs["hidden_states"].shape[0]))
        return hook

    def _count(self, what, key):
        def hook(module, args):
            getattr(self.forwards[-1], what)[key] = args[0].shape[0]
        return hook

    def _output(self, key):
        def hook(module, args, output):
            self.forwards[-1].attn_out[key] = output
        return hook

    def _stack_in(self, module, args, kwargs):
        self.forwards[-1].stack_in = args[0] if args else kwargs["hidden_states"]

    def _stack_out(self, module, args, output):
        self.forwards[-1].stack_out = output if torch.is_tensor(output) else output[0]

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for tr in self.patched:
            del tr.cache_context


@contextlib.contextmanager
def probing(pipe, family, keep_outputs=False):
    probe = Probe(pipe, family, keep_outputs)
    try:
        yield probe
    finally:
        probe.close()


# ------------------------------------------------------------------------------------ fixtures

_PIPES: dict[str, object] = {}
_REFS: dict[tuple, np.ndarray] = {}


@pytest.fixture
def pipes(tiny_dirs):
    """family -> a loaded tiny pipeline (loaded once); every cache is removed after the test."""

    def get(family: str):
        if family not in _PIPES:
            _PIPES[family] = load_pipe(tiny_dirs[family])
        return _PIPES[family]

    yield get
    for pipe in _PIPES.values():
        remove_cache(pipe)


def family_of(name: str) -> str:
    return "wan" if name == "wan2" else name


def reference(pipes, name: str, seed: int = 0) -> np.ndarray:
    key = (name, seed)
    if key not in _REFS:
        pipe = pipes(name)
        remove_cache(pipe)
        _REFS[key] = run_pipe(pipe, family_of(name), steps=STEPS, seed=seed)
    return _REFS[key]


# ------------------------------------------------------------------------------------ rules
# The rules of METHODS.md / the method modules, re-derived here from what the probe saw.


def _pab_expected(pipe, probe: Probe, params: dict) -> list[dict[str, bool]]:
    """Per forward: attention key -> expected to compute."""
    layouts = [base.layout_of(t) for t in (pipe.transformer, getattr(pipe, "transformer_2", None))
               if t is not None]
    trs = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
    calls, cached, out = {}, set(), []
    for f in probe.forwards:
        expect = {}
        for key, _, kind in layouts[f.expert].attention_modules(trs[f.expert]):
            r, (lo, hi) = params[f"{kind}_range"], params[f"{kind}_window"]
            slot = (f.expert, f.branch, key)
            c = calls.get(slot, 0)  # VideoSys: every call counts, inside the window or not
            calls[slot] = c + 1
            compute = not (lo < f.t < hi) or c % r == 0 or slot not in cached
            cached.add(slot)
            expect[key] = compute
        out.append(expect)
    return out


def _fastercache_expected(pipe, probe: Probe, params: dict, family: str):
    """Per forward: (rows the blocks run with, attention key -> expected rows computed). The phases
    are the official script's (counter c = step + 1)."""
    trs = [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]
    lo_a, hi_a = params["attention_window"]
    lo_c, hi_c = params["cfg_window"]
    cfg_on = params.get("cfg_cache", True) and family != "hunyuan"
    history, last_run = {}, {}
    delta, cond_step = {}, {}
    next_t = {}  # (expert, branch, step) -> t of that branch's forward one step later
    for f in probe.forwards:
        next_t[(f.expert, f.branch, f.step - 1)] = f.t
    out = []
    for f in probe.forwards:
        e, b = f.expert, f.branch
        rows = f.batch
        in_cfg = lo_c < f.t < hi_c and (f.step + 1) % params["cfg_range"] != 0
        if cfg_on and family == "wan":
            if b == "cond":
                cond_step[e] = f.step
            elif cond_step.get(e) == f.step:
                if in_cfg and delta.get(e):
                    rows = 0
                else:
                    delta[e] = True
        elif cfg_on and rows == 2:
            if in_cfg and delta.get(e):
                rows = 1
            else:
                delta[e] = True
        keep = True  # Wan's uncond keeps outputs only for a next step inside attention, outside CFG
        if cfg_on and family == "wan" and b == "uncond":
            t = next_t.get((e, b, f.step))
            keep = t is not None and lo_a < t < hi_a and not lo_c < t < hi_c
        attn = {}
        if rows:
            contiguous = last_run.get((e, b)) == f.step - 1
            for key, _, kind in base.layout_of(trs[e]).attention_modules(trs[e]):
                if kind != "spatial":
                    attn[key] = rows
                    continue
                slot = (e, b, key)
                if not contiguous:  # a gap: the history is stale
                    history[slot] = []
                hist = history.setdefault(slot, [])
                fits = len(hist) >= 2 and all(h in (rows, 2 * rows) for h in hist[-2:])
                compute = not (lo_a < f.t < hi_a and (f.step + 1) % params["attention_range"] != 0 and fits)
                if compute:
                    if keep:
                        hist.append(rows)
                    else:
                        hist.clear()
                attn[key] = rows if compute else 0
            last_run[(e, b)] = f.step
        out.append((rows, attn))
    return out


def _check_rule(method, pipe, probe, params, family):
    n_blocks = len(base.layout_of(pipe.transformer).blocks(pipe.transformer))
    if method == "pab":
        for f, expect in zip(probe.forwards, _pab_expected(pipe, probe, params), strict=True):
            assert len(f.blocks) == n_blocks, "PAB never skips a block"
            computed = {k for k in expect if k in f.attention}
            assert computed == {k for k, c in expect.items() if c}, (f.step, f.branch)
    elif method == "fastercache":
        expected = _fastercache_expected(pipe, probe, params, family)
        for f, (rows, attn) in zip(probe.forwards, expected, strict=True):
            assert set(f.blocks.values()) == ({rows} if rows else set()), (f.step, f.branch)
            assert f.attention == {k: r for k, r in attn.items() if r}, (f.step, f.branch)
    else:  # teacache: what its decisions were is checked in the TeaCache tests; here: all or none
        for f in probe.forwards:
            assert len(f.blocks) in (0, n_blocks)
            assert bool(f.attention) == bool(f.blocks)


def _probe_ratios(pipe, probe: Probe, family: str) -> tuple[float, float]:
    """compute_ratio and attention_compute_ratio as the probe saw them: rows computed per module
    (one row = one CFG branch) over modules x branches."""
    branches = 2 if family == "cogvideox" else 1
    run = total = arun = atotal = 0
    for f in probe.forwards:
        tr = (pipe.transformer, getattr(pipe, "transformer_2", None))[f.expert]
        layout = base.layout_of(tr)
        run += sum(f.blocks.values())
        arun += sum(f.attention.values())
        total += len(layout.blocks(tr)) * branches
        atotal += len(layout.attention_modules(tr)) * branches
    return run / total, arun / atotal


# ------------------------------------------------------------------------------------ tests


def test_registry_and_fields():
    assert METHOD_NAMES[0] == "none" and set(METHODS) <= set(METHOD_NAMES)
    assert method_fields("none") == set()
    assert method_fields("bogus") is None
    assert "spatial_window" in method_fields("pab")
    assert {"cfg_window", "attention_weight"} <= method_fields("fastercache")
    assert {"thresh", "coefficients"} <= method_fields("teacache")
    assert vidcache.apply_cache is apply_cache


@pytest.mark.parametrize("method", METHODS)
def test_unknown_key_and_bad_values_raise(pipes, method):
    pipe = pipes("wan")
    with pytest.raises(ValueError, match="bogus_key"):
        apply_cache(pipe, method, bogus_key=1)
    with pytest.raises(ValueError, match="bogus_key"):
        apply_cache(pipe, method, params={"bogus_key": 1})
    bad = {"pab": {"spatial_range": 0}, "fastercache": {"cfg_window": [5, 1]},
           "teacache": {"coefficients": "no-such-set"}}[method]
    with pytest.raises(ValueError):
        apply_cache(pipe, method, **bad)
    with pytest.raises(ValueError, match="unknown cache method"):
        apply_cache(pipe, "bogus")
    assert base.forward_hook(pipe.transformer) is None  # nothing half-attached


def test_presets_load_apply_and_run(pipes):
    """Every shipped preset's method tables validate and attach; the tiny ones run."""
    from vidcache import presets

    wan = pipes("wan")
    for name in presets.available():
        preset = check_preset(presets.load(name))  # validates through method_fields
        family = next((f for f in ("cogvideox", "hunyuan") if name.startswith(f)), "wan")
        for method in METHODS:
            assert method in preset.methods, (name, method)
            pipe = pipes(family)
            params = apply_cache(pipe, method, preset=name)
            json.dumps(params)
            remove_cache(pipe)
    params = vidcache.apply_cache(wan, "teacache", preset="tiny", thresh=0.1)
    assert params["thresh"] == 0.1 and params["coefficients"] == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert apply_cache(wan, "pab", preset="wan2.1-t2v-1.3b")["spatial_window"] == [272, 944]
    for method in METHODS:
        apply_cache(wan, method, preset="tiny")
        run_pipe(wan, "wan", steps=20)
        stats = cache_stats(wan)
        assert stats["method"] == method and len(stats["per_step"]) == 40


# The steps each shipped PAB window covers at the preset's default step count, with the model's
# real scheduler: the same share of steps as the official CogVideoX window (steps 8-44 of 50).
PAB_STEPS = {"tiny": (4, 22, 25), "wan": (8, 44, 50), "wan-14b": (8, 44, 50),
             "wan2.2-ti2v-5b": (8, 44, 50), "wan2.2-t2v-a14b": (6, 35, 40),
             "hunyuan": (8, 44, 50), "cogvideox": (8, 44, 50), "cogvideox-5b": (8, 44, 50),
             "wan-i2v": (8, 44, 50), "wan-i2v-720p": (8, 44, 50), "wan2.2-i2v-a14b": (6, 35, 40),
             "cogvideox-5b-i2v": (8, 44, 50),
             "hunyuan-i2v": (8, 44, 50), "hunyuan15": (8, 44, 50), "hunyuan15-i2v": (8, 44, 50)}
# first step of FasterCache's attention reuse / CFG-Cache (the official CogVideoX script: 17 and 17 of 50)
FC_STEPS = {"tiny": (8, 8), "wan2.2-t2v-a14b": (14, 14), "wan2.2-i2v-a14b": (14, 14)}


@pytest.mark.parametrize("preset", sorted(REFERENCE_SCHEDULERS))
def test_preset_windows_cover_the_documented_steps(preset):
    from vidcache import presets

    ts = reference_timesteps(preset)
    first, last, n = PAB_STEPS[preset]
    assert len(ts) == n
    table = presets.load(preset).methods
    for kind in ("spatial", "cross"):
        if f"{kind}_window" in table["pab"]:
            covered = window_steps(ts, table["pab"][f"{kind}_window"])
            assert covered == list(range(first, last + 1)), (preset, kind)
    fc = table["fastercache"]
    a, c = FC_STEPS.get(preset, (17, 17))
    assert window_steps(ts, fc["attention_window"])[0] == a
    if fc.get("cfg_cache", True):
        assert window_steps(ts, fc["cfg_window"])[0] == c


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_method_on_family(pipes, method, family):
    """Skips what its rule says; within the bound of uncached; statistics match what ran; the next
    video starts clean; removal restores the uncached output bit for bit."""
    pipe = pipes(family)
    ref = reference(pipes, family)
    effective = apply_cache(pipe, method, params=params_for(method, family))
    json.dumps(effective)
    with probing(pipe, family) as probe:
        out = run_pipe(pipe, family, steps=STEPS)
    stats = cache_stats(pipe)

    _check_rule(method, pipe, probe, effective, family)
    ratio, attn_ratio = _probe_ratios(pipe, probe, family)
    assert ratio < 1.0 or attn_ratio < 1.0, "the cache never reused anything"
    assert stats["compute_ratio"] == pytest.approx(ratio)
    assert stats["attention_compute_ratio"] == pytest.approx(attn_ratio)
    assert len(stats["per_step"]) == len(probe.forwards) == STEPS * (2 if family == "wan" else 1)
    assert stats["steps_reused"] > 0 and stats["memory_bytes"] > 0
    assert not [w for w in stats["warnings"] if "never" in w]
    json.dumps(stats)

    err = float(np.abs(out - ref).max())
    assert 0 < err <= BOUNDS[(method, family)], err

    run_pipe(pipe, family, steps=STEPS, seed=1)  # another video in between, no reset_cache
    again = run_pipe(pipe, family, steps=STEPS)
    assert np.array_equal(again, out), "the second video did not start from clean state"

    remove_cache(pipe)
    assert np.array_equal(run_pipe(pipe, family, steps=STEPS), ref)


@pytest.mark.parametrize("method", METHODS)
def test_wan_uncond_never_consumes_cond_state(pipes, method):
    pipe = pipes("wan")
    params = params_for(method, "wan")
    if method == "fastercache":
        params["cfg_cache"] = False  # the CFG-Cache uses cond's output by design; tested apart
    if method == "teacache":
        params["thresh"] = 1e9
    apply_cache(pipe, method, params=params)
    with probing(pipe, "wan", keep_outputs=True) as probe:
        run_pipe(pipe, "wan", steps=STEPS, prompt="a big blue square moving up")
    # every reused value must be this branch's own; "telling" reuses are those where the other
    # branch's value differs (block 0's self attention sees the same input in both branches)
    telling = 0
    if method == "teacache":
        last = {}
        for f in probe.forwards:
            residual = f.stack_out - f.stack_in
            if f.blocks:
                last[f.branch] = residual
                continue
            other = last["cond" if f.branch == "uncond" else "uncond"]
            torch.testing.assert_close(residual, last[f.branch], rtol=0, atol=1e-5)
            telling += not torch.allclose(residual, other, atol=1e-3)
    else:
        computed: dict[tuple, list] = {}
        w = params.get("attention_weight", 0.5)
        for f in probe.forwards:
            for key, value in f.attn_out.items():
                mine = computed.setdefault((f.branch, key), [])
                if key in f.attention:
                    mine.append(value)
                    continue
                if method == "pab":
                    expect, other = mine[-1], computed[("cond", key)][-1]
                else:
                    theirs = computed[("cond" if f.branch == "uncond" else "uncond", key)]
                    expect = mine[-1] + w * (mine[-1] - mine[-2])
                    other = theirs[-1] + w * (theirs[-1] - theirs[-2])
                torch.testing.assert_close(value, expect, rtol=0, atol=1e-6)
                telling += f.branch == "uncond" and not torch.allclose(expect, other, atol=1e-4)
    assert telling > 0


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_fastercache_cfg_cache_rebuilds_uncond_from_this_steps_cond(pipes, family):
    """With alpha = 0 a synthesised uncond is exactly this step's cond + the stored delta: on Wan
    the uncond forward does not run at all, on CogVideoX only the cond rows run."""
    pipe = pipes(family)
    apply_cache(pipe, "fastercache", params=dict(TEST_PARAMS["fastercache"], alpha=0.0))
    outputs = []
    handle = pipe.transformer.register_forward_hook(lambda m, a, out: outputs.append(out[0]))
    try:
        with probing(pipe, family) as probe:
            run_pipe(pipe, family, steps=STEPS)
    finally:
        handle.remove()
    synthesised, delta = 0, None
    for i, f in enumerate(probe.forwards):
        if family == "wan":
            if f.branch != "uncond":
                continue
            uncond, cond = outputs[i], outputs[i - 1]
            full = bool(f.blocks)
        else:
            uncond, cond = outputs[i].chunk(2)
            full = set(f.blocks.values()) == {2}
        if full:
            delta = uncond.float() - cond.float()
        else:
            synthesised += 1
            assert not f.blocks or set(f.blocks.values()) == {1}
            torch.testing.assert_close(uncond, (cond.float() + delta).to(cond.dtype))
    assert synthesised > 0


def test_fastercache_band_split():
    x = torch.randn(2, 3, 4, 10, 12)
    torch.testing.assert_close(band(x, low=True) + band(x, low=False), x, atol=1e-5, rtol=0)
    const = torch.full((1, 1, 10, 12), 3.0)
    torch.testing.assert_close(band(const, low=True), const, atol=1e-5, rtol=0)
    cond, delta = torch.randn(1, 4, 2, 10, 12), torch.randn(1, 4, 2, 10, 12)
    torch.testing.assert_close(synthesise_uncond(cond, delta, 1.0, 1.0), cond + delta)
    cfg = FasterCacheConfig(alpha=0.2, cfg_t0=500.0)
    w_lf, w_hf = band_weights(cfg, 800.0, 3, 3)  # the paper's rule: low band boosted early, whatever k
    assert (w_lf, w_hf) == (1.2, 1.0)
    early = synthesise_uncond(cond, delta, w_lf, w_hf)
    torch.testing.assert_close(early, cond + delta + 0.2 * band(delta, low=True), atol=1e-5, rtol=0)
    cfg = FasterCacheConfig(band_weights="compound", band_growth=1.1)
    assert band_weights(cfg, 400.0, 2, 0) == pytest.approx((1.21, 1.0))
    both = synthesise_uncond(cond, delta, 1.21, 1.1)
    expected = cond + 1.21 * band(delta, low=True) + 1.1 * band(delta, low=False)
    torch.testing.assert_close(both, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_teacache_threshold_extremes(pipes, family):
    """thresh = 0 computes every step; a huge thresh computes only the forced first and last."""
    pipe = pipes(family)
    n_blocks = len(base.layout_of(pipe.transformer).blocks(pipe.transformer))
    apply_cache(pipe, "teacache", params=dict(params_for("teacache", family), thresh=0.0))
    with probing(pipe, family) as probe:
        run_pipe(pipe, family, steps=STEPS)
    assert all(len(f.blocks) == n_blocks for f in probe.forwards)
    assert cache_stats(pipe)["compute_ratio"] == 1.0
    assert any("never reused" in w for w in cache_stats(pipe)["warnings"])

    apply_cache(pipe, "teacache", params=dict(params_for("teacache", family), thresh=1e9))
    with probing(pipe, family) as probe:
        run_pipe(pipe, family, steps=STEPS)
    computed = {(f.branch, f.step) for f in probe.forwards if f.blocks}
    branches = {f.branch for f in probe.forwards}
    assert computed == {(b, s) for b in branches for s in (0, STEPS - 1)}
    assert all(len(f.blocks) in (0, n_blocks) for f in probe.forwards)


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_teacache_schedule_is_precomputable(pipes, family):
    """Wan's and CogVideoX's indicator depends on the timestep only: the schedule computed before
    the run is the one every branch follows, whatever the prompt."""
    pipe = pipes(family)
    params = params_for("teacache", family)
    apply_cache(pipe, "teacache", params=params)
    for prompt in ("a red ball moving left", "green triangle bouncing"):
        with probing(pipe, family) as probe:
            run_pipe(pipe, family, steps=STEPS, prompt=prompt)
        schedule = precompute_schedule(pipe.transformer, pipe.scheduler.timesteps,
                                       TeaCacheConfig(**params))
        for branch in {f.branch for f in probe.forwards}:
            ran = [bool(f.blocks) for f in probe.forwards if f.branch == branch]
            assert ran == schedule, (prompt, branch)
        assert not all(schedule) and sum(schedule) > 2


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
def test_teacache_planned_distances_equal_per_forward_ones(pipes, family, monkeypatch):
    """The one-read plan (every distance from the scheduler's timesteps) decides exactly as reading
    the live indicator in every forward does: same steps skipped, same distances, same video."""
    from vidcache.caches.teacache import TeaCacheBlockHook

    pipe = pipes(family)
    apply_cache(pipe, "teacache", params=params_for("teacache", family))
    try:
        runs = []
        for plan in (True, False):
            if not plan:
                monkeypatch.setattr(TeaCacheBlockHook, "_plan", lambda self, *a: {})
            video = run_pipe(pipe, family, steps=STEPS)
            entries = cache_stats(pipe)["per_step"]
            runs.append((video, entries))
    finally:
        remove_cache(pipe)
    (planned, p_entries), (live, l_entries) = runs
    assert [e["blocks"] for e in p_entries] == [e["blocks"] for e in l_entries]
    assert any(e["blocks"][0] == 0 for e in p_entries)
    for a, b in zip(p_entries, l_entries):
        assert (a["rel_l1"] is None) == (b["rel_l1"] is None)
        if a["rel_l1"] is not None:
            assert a["rel_l1"] == pytest.approx(b["rel_l1"], rel=1e-4, abs=1e-7)
    np.testing.assert_allclose(np.asarray(planned), np.asarray(live), atol=1e-5)


def test_teacache_retention_mode_forces_first_five(pipes):
    pipe = pipes("wan")
    apply_cache(pipe, "teacache", retention=True, coefficients=[0, 0, 0, 1.0, 0], thresh=1e9)
    with probing(pipe, "wan") as probe:
        run_pipe(pipe, "wan", steps=STEPS)
    assert {f.step for f in probe.forwards if f.blocks} == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("method", METHODS)
def test_two_experts_keep_separate_state(pipes, method):
    """Wan 2.2 A14B: each expert has its own hooks and state; the low-noise expert's first forward
    in each branch computes everything, inheriting nothing from the high-noise expert."""
    pipe = pipes("wan2")
    ref = reference(pipes, "wan2")
    params = params_for(method, "wan2")
    if method == "teacache":
        params["thresh"] = 1e9
    apply_cache(pipe, method, params=params)
    hooks = [base.forward_hook(pipe.transformer), base.forward_hook(pipe.transformer_2)]
    assert hooks[0] is not None and hooks[1] is not None and hooks[0].states is not hooks[1].states
    with probing(pipe, "wan") as probe:
        out = run_pipe(pipe, "wan", steps=STEPS)
    experts = [f.expert for f in probe.forwards]
    assert 0 in experts and 1 in experts
    n_blocks = len(base.layout_of(pipe.transformer_2).blocks(pipe.transformer_2))
    n_attn = len(base.layout_of(pipe.transformer_2).attention_modules(pipe.transformer_2))
    for branch in ("cond", "uncond"):
        first = next(f for f in probe.forwards if f.expert == 1 and f.branch == branch)
        assert len(first.blocks) == n_blocks and len(first.attention) == n_attn
    stats = cache_stats(pipe)
    assert {e["expert"] for e in stats["per_step"]} == {0, 1}
    assert len(stats["per_step"]) == len(probe.forwards)
    assert stats["steps_reused"] > 0
    assert float(np.abs(out - ref).max()) <= 0.05
    remove_cache(pipe)
    assert np.array_equal(run_pipe(pipe, "wan", steps=STEPS), ref)


def test_reset_cache_and_stats_lifecycle(pipes):
    pipe = pipes("hunyuan")
    assert cache_stats(pipe)["method"] == "none" and cache_stats(pipe)["compute_ratio"] == 1.0
    apply_cache(pipe, "pab", params=TEST_PARAMS["pab"])
    run_pipe(pipe, "hunyuan", steps=STEPS)
    # diffusers resets stateful hooks at the end of every pipeline call: the stats survive it
    stats = cache_stats(pipe)
    assert len(stats["per_step"]) == STEPS and stats["memory_bytes"] > 0
    hook = base.forward_hook(pipe.transformer)
    assert hook.held_bytes() == 0  # the cached tensors themselves were freed
    reset_cache(pipe)
    assert cache_stats(pipe)["per_step"] == []
    apply_cache(pipe, "pab", spatial_window=[0, 1])  # covers no step
    run_pipe(pipe, "hunyuan", steps=STEPS)
    warnings = cache_stats(pipe)["warnings"]
    assert len(warnings) == 1 and "pab never reused anything" in warnings[0]


def test_clock_reads_accelerator_timesteps_from_the_schedule_copy(pipes):
    """A timestep that lives on an accelerator is never read in a forward (a host-device sync):
    the clock takes it from its per-video host copy of the scheduler's timesteps. A meta tensor
    stands in for the device tensor: reading it would raise."""
    pipe = pipes("wan")
    apply_cache(pipe, "pab")
    hook = base.forward_hook(pipe.transformer)
    pipe.scheduler.set_timesteps(5)
    hook._detect_new_video()
    ctx = CacheContext("cond")
    on_device = torch.empty(1, device="meta")
    expected = float(pipe.scheduler.timesteps[3])
    assert hook._timestep(ctx, 3, (), {"timestep": on_device}) == expected


_RANK_SCRIPT = textwrap.dedent(
    """
    import datetime, json, torch, torch.distributed as dist
    from vidcache.caches import base
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    rank = dist.get_rank()
    prev = torch.ones(64)
    # rank 0 sees a small change (0.05), rank 1 a large one (0.5): alone they would disagree
    cur = prev + (0.05 if rank == 0 else 0.5)
    local = ((cur - prev).abs().sum() / prev.abs().sum()).item()
    agreed = base.relative_l1(cur, prev)
    print(json.dumps({"rank": rank, "local_skip": local < 0.2, "agreed": agreed,
                      "skip": agreed < 0.2}))
    dist.barrier()
    dist.destroy_process_group()
    """
)


def test_rank_agreement_over_gloo(tmp_path):
    """Two ranks with different local metrics take the same branch after the all-reduce."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), PYTHONPATH=root)
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=90)
            assert p.returncode == 0, stderr[-2000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert results[0]["local_skip"] != results[1]["local_skip"]
    assert results[0]["skip"] == results[1]["skip"]
    assert results[0]["agreed"] == pytest.approx(0.275) == results[1]["agreed"]

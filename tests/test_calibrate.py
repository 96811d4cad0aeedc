"""`vidcache calibrate`: TeaCache's polynomial fitted from uncached runs of the tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vidcache.cli import app

SMALL = ["--frames", "9", "--height", "32", "--width", "32", "--set", "defaults.text_len=16"]
PROMPTS = ["-p", "a red ball", "-p", "a blue box"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# pairs of consecutive forwards per video: branches x (steps - 1)
@pytest.mark.parametrize("family, branches", [("wan", 2), ("cogvideox", 1), ("hunyuan", 1)])
def test_calibrate_writes_a_preset_fragment_gen_uses(tiny_dirs, tmp_path, family, branches):
    out = tmp_path / "calib.toml"
    r = invoke("calibrate", "--model", tiny_dirs[family], *PROMPTS, *SMALL, "--steps", 6, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    fit = json.loads(r.stdout)
    assert fit["family"] == family and fit["videos"] == 2
    assert fit["points"] == 2 * branches * 5  # no pair spans two videos or two branches
    assert len(fit["coefficients"]) == 5 and all(np.isfinite(fit["coefficients"]))
    from vidcache import presets

    table = presets.load_file(out).methods["teacache"]
    assert table["coefficients"] == pytest.approx(fit["coefficients"], rel=1e-9)

    gen_out = tmp_path / "gen"
    r = invoke("gen", "--model", tiny_dirs[family], "-p", "a red ball", *SMALL, "--steps", 4, "--cache", "teacache",
               "--preset", out, "-o", gen_out)
    assert r.exit_code == 0, r.output
    report = json.loads(next(p for p in gen_out.glob("a-red-ball-*.json")).read_text())
    assert report["cache"]["params"]["coefficients"] == pytest.approx(fit["coefficients"], rel=1e-9)


def test_indicator_is_the_one_teacache_reads(tiny_dirs, tmp_path):
    """On Wan the recorded indicator changes are exactly TeaCache's planned distances for the same
    schedule (both branches), and the output changes are those of the pipeline's own predictions."""
    from vidcache import calibrate as calib
    from vidcache.caches.teacache import TeaCacheConfig, _schedule_distances
    from vidcache.jobs import Prompt
    from vidcache.models import ADAPTERS
    from vidcache.runner import RunConfig, Runner, plan_run

    cfg = RunConfig(model=tiny_dirs["wan"], cache="none", sets=["defaults.text_len=16"], out=tmp_path,
                    flags={"frames": 9, "height": 32, "width": 32, "steps": 7})
    runner = Runner(plan_run(cfg, [Prompt("a red ball", {}, "test")]))
    try:
        result = calib.calibrate(runner)
        ts = runner.pipe.scheduler.timesteps
        expected = _schedule_distances(runner.pipe.transformer, ADAPTERS["wan"], ts.float(), TeaCacheConfig())
    finally:
        runner.close()
    # forwards alternate cond, uncond: pairs are recorded per branch, in step order, interleaved
    cond, uncond = result.x[0::2], result.x[1::2]
    assert cond == pytest.approx(expected, rel=1e-5) and uncond == pytest.approx(expected, rel=1e-5)
    assert all(y > 0 for y in result.y)
    from diffusers.hooks import HookRegistry

    assert calib.HOOK not in HookRegistry.check_if_exists_or_initialize(runner.pipe.transformer).hooks
    assert not runner.pipe.transformer.condition_embedder._forward_hooks  # the recording is gone


def test_fit_recovers_a_known_polynomial():
    from vidcache.calibrate import fit

    rng = np.random.default_rng(0)
    truth = [3.0, -2.0, 0.5, 1.5, 0.01]
    x = rng.uniform(0.01, 0.5, 200)
    assert fit(list(x), list(np.polyval(truth, x))) == pytest.approx(truth, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--steps", 2], "fewer than 5 distinct indicator changes"),
    (["--steps", 4, "-o", "calib.txt"], "expected a .toml file"),
    (["--steps", 4, "--retention", "--model", "@cogvideox"], "--retention exists for Wan only"),
])
def test_calibrate_refuses_with_one_line(tiny_dirs, tmp_path, args, message):
    args = [tiny_dirs["cogvideox"] if a == "@cogvideox" else a for a in args]
    if "-o" not in args:
        args += ["-o", tmp_path / "calib.toml"]
    else:
        args[args.index("-o") + 1] = tmp_path / args[args.index("-o") + 1]
    model = [] if "--model" in args else ["--model", tiny_dirs["wan"]]
    r = invoke("calibrate", *model, "-p", "a red ball", *SMALL, *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "calib.toml").exists()


def test_calibrate_leaves_no_hook_behind(tiny_dirs, tmp_path):
    from vidcache import calibrate as calib
    from vidcache.jobs import Prompt
    from vidcache.runner import RunConfig, Runner, plan_run

    cfg = RunConfig(model=tiny_dirs["hunyuan"], cache="none", sets=["defaults.text_len=16"], out=tmp_path,
                    flags={"frames": 9, "height": 32, "width": 32, "steps": 7})
    runner = Runner(plan_run(cfg, [Prompt("a red ball", {}, "test")]))
    try:
        calib.calibrate(runner)
        tr = runner.pipe.transformer
        block0 = tr.transformer_blocks[0]
        assert not block0._forward_pre_hooks and not block0._forward_pre_hooks_with_kwargs
        with torch.no_grad():  # a later uncached video still runs
            runner.generate(runner.plan.jobs[0])
    finally:
        runner.close()

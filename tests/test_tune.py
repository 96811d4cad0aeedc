"""`vidcache tune` on the embedded tiny model at a small size, `--cache auto`, and the step-count rule."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from typer.testing import CliRunner

from vidcache.cli import app

SMALL = ["--model", "tiny", "--frames", "9", "--height", "64", "--width", "64", "--steps", "10"]
PROMPTS = ["-p", "a blue square moving down", "-p", "a white square moving right"]
TARGET = 30.0


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


class Counting:
    """Counts ``Runner.generate`` calls (every video a command renders)."""

    def __init__(self, monkeypatch):
        from vidcache.runner import Runner

        self.calls = 0
        original = Runner.generate

        def generate(runner, job):
            self.calls += 1
            return original(runner, job)

        monkeypatch.setattr(Runner, "generate", generate)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One tune of two methods (the expensive part, shared by the tests below)."""
    folder = tmp_path_factory.mktemp("tune")
    out = folder / "tiny.toml"
    r = invoke("tune", *SMALL, *PROMPTS, "--cache", "teacache,pab", "--target-psnr", TARGET, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def _psnr_of(fragment, method: str, out) -> list[float]:
    """The method of ``fragment`` rendered by plain runner calls, against uncached renders."""
    from vidcache import jobs, metrics
    from vidcache.runner import RunConfig, Runner, plan_run
    from vidcache.video import to_uint8

    prompts = jobs.read_prompts(None, PROMPTS[1::2])
    flags = {"frames": 9, "height": 64, "width": 64, "steps": 10}
    cfg = RunConfig(model="tiny", cache=method, preset_file=str(fragment), flags=flags, out=out)
    runner = Runner(plan_run(cfg, prompts))
    runner.load()
    try:
        out = []
        for job in runner.plan.jobs:
            runner.set_cache(runner.plan.method, None, runner.plan.cache_params)
            cached = to_uint8(runner.generate(job)[0]) / 255.0
            runner.set_cache("none", None, {})
            ref = to_uint8(runner.generate(job)[0]) / 255.0
            out.append(metrics.psnr(ref, cached))
        return out
    finally:
        runner.close()


def test_chosen_points_meet_the_target_on_the_tuning_prompts(tuned, tmp_path):
    """The fragment loads as a preset, and each method's table, rendered anew, meets the target."""
    from vidcache import caches, presets

    out, summary = tuned
    preset = caches.check_preset(presets.load_file(out))
    assert preset.tuned["target_psnr"] == TARGET and preset.tuned["steps"] == 10
    assert set(preset.methods) == {"teacache", "pab"} == {m for m, v in summary["methods"].items() if v["met"]}
    for method in ("teacache", "pab"):
        psnr = _psnr_of(out, method, tmp_path)
        assert sum(psnr) / len(psnr) - preset.tuned[method]["psnr_se"] >= TARGET - 0.01
        assert sum(psnr) / len(psnr) == pytest.approx(preset.tuned[method]["psnr"], abs=0.01)
        chosen = summary["methods"][method]["chosen"]
        assert chosen["compute_ratio"] == pytest.approx(preset.tuned[method]["compute_ratio"], abs=1e-3)
        # the fastest that meets it: every measured point that is faster missed it on its prompts
        for p in summary["methods"][method]["points"]:
            faster = (p["compute_ratio"], p["attention_compute_ratio"]) < (chosen["compute_ratio"],
                                                                           chosen["attention_compute_ratio"])
            if faster:  # missed: the mean less its standard error under the target
                assert p["psnr"] - p["psnr_se"] < TARGET, p
    assert summary["methods"]["teacache"]["chosen"]["compute_ratio"] < 1  # it reuses something
    assert summary["methods"]["pab"]["chosen"]["attention_compute_ratio"] < 1


def test_rerun_reuses_references_and_measured_points(tuned, monkeypatch):
    out, summary = tuned
    refs = out.parent / ".vidcache-tune"
    files = sorted(refs.glob("*.safetensors"))
    assert len(files) == 2  # one reference per prompt
    mtimes = [f.stat().st_mtime_ns for f in files]
    counter = Counting(monkeypatch)
    again = out.parent / "again.toml"
    r = invoke("tune", *SMALL, *PROMPTS, "--cache", "pab,teacache", "--target-psnr", TARGET, "-o", again, "--json")
    assert r.exit_code == 0, r.output
    rerun = json.loads(r.stdout)
    assert counter.calls == 0 and rerun["videos"] == 0  # nothing rendered again
    assert summary["reused_points"] == 0
    assert rerun["reused_points"] == sum(p["prompts"] for m in summary["methods"].values() for p in m["points"])
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    for method in ("pab", "teacache"):
        assert rerun["methods"][method]["chosen"]["params"] == summary["methods"][method]["chosen"]["params"]

    # another target: the shared points are reused, only new ones rendered (no reference)
    counter.calls = 0
    r = invoke("tune", *SMALL, *PROMPTS, "--cache", "teacache", "--target-psnr", TARGET + 4, "-o", again, "--json")
    assert r.exit_code in (0, 1), r.output
    assert sorted(refs.glob("*.safetensors")) == files and [f.stat().st_mtime_ns for f in files] == mtimes
    assert json.loads(r.stdout)["reused_points"] >= 2  # at least the two ends on the bracket prompts


def test_unmeetable_target_exits_1_with_the_best_psnr(tuned):
    out, _ = tuned
    never = out.parent / "never.toml"
    r = invoke("tune", *SMALL, *PROMPTS, "--cache", "teacache", "--target-psnr", 99, "-o", never,
               "--refs", out.parent / ".vidcache-tune")
    assert r.exit_code == 1, r.output
    line = r.output.strip().splitlines()[-1]
    assert "no setting of teacache meets PSNR >= 99 dB" in line and "the best reached" in line and "x)" in line
    assert not never.exists()


@pytest.mark.parametrize("args, message", [
    (["--cache", "nosuch", "--target-psnr", 30], "--cache nosuch: unknown method"),
    (["--cache", "auto", "--target-psnr", 30], "none and auto have nothing to tune"),
    (["--target-psnr", "nan"], "expected a PSNR in dB"),
    (["--target-psnr", -3], "expected a PSNR in dB"),
    (["--target-psnr", 30, "--target-speedup", 2], "exactly one of"),
    ([], "exactly one of"),
    (["--target-speedup", 0.5], "expected a number above 1"),
    (["--target-psnr", 30, "--model", "./no-such-model"], "no such folder"),
    (["--target-psnr", 30, "-o", "x.txt"], "expected a .toml file"),
    (["--target-psnr", 30, "--shard", "0/2"], "tune runs in one process"),
    (["--target-psnr", 30, "--set", "colour=3"], "no method being tuned"),
    (["--target-psnr", 30, "--cache", "pab", "--set", "teacache.thresh=0.1"], "no method being tuned"),
])
def test_bad_input_exits_2_before_loading(tmp_path, monkeypatch, args, message):
    import vidcache.runner

    def no_load(*a, **k):
        raise AssertionError("loaded a model")

    monkeypatch.setattr(vidcache.runner, "load_pipeline", no_load)
    if "-o" not in args:
        args = [*args, "-o", tmp_path / "t.toml"]
    model = [] if "--model" in args else ["--model", "tiny"]
    r = invoke("tune", *model, "-p", "a red ball", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "t.toml").exists()


# ---------------------------------------------------------------------------- --cache auto

FRAGMENT = """
[teacache]
thresh = 0.2
[pab]
spatial_range = 3
[mixcache]
step_budget = 0.1
[fbcache]
threshold = 0.1

[tuned]
model = "tiny"
target_psnr = 30.0
[tuned.teacache]
psnr = 36.0
compute_ratio = 0.5
speedup = 1.9
[tuned.pab]
psnr = 40.0
compute_ratio = 1.0
attention_compute_ratio = 0.6
speedup = 1.3
[tuned.mixcache]
psnr = 31.0
compute_ratio = 0.3
speedup = 2.6
"""


def _auto_plan(tmp_path, quality=None, text=FRAGMENT, **flags):
    from vidcache.jobs import Prompt
    from vidcache.runner import RunConfig, plan_run

    path = tmp_path / "tuned.toml"
    path.write_text(text)
    cfg = RunConfig(model="tiny", cache="auto", quality=quality, preset_file=str(path), flags=flags, out=tmp_path)
    return plan_run(cfg, [Prompt("a red ball", {}, "test")])


@pytest.mark.parametrize("quality, method", [(None, "mixcache"), (35, "teacache"), (36, "teacache"),
                                             (38, "pab"), (30.5, "mixcache")])
def test_auto_picks_the_fastest_method_meeting_the_quality(tmp_path, quality, method):
    plan = _auto_plan(tmp_path, quality)
    assert plan.method == method
    assert plan.cache_params["schedule_steps"] == 25  # stated for the tiny preset's steps
    assert plan.auto["psnr"] >= (quality or 30.0)


def test_auto_refuses_what_no_measurement_supports(tmp_path):
    from vidcache.errors import UsageError

    with pytest.raises(UsageError, match="no tuned method meets PSNR 45 dB .*pab at 40.00 dB"):
        _auto_plan(tmp_path, 45)
    with pytest.raises(UsageError, match="no method of the presets carries a measurement"):
        _auto_plan(tmp_path, None, "[teacache]\nthresh = 0.2\n")
    with pytest.raises(UsageError, match="expected a PSNR"):
        _auto_plan(tmp_path, math.nan)
    with pytest.raises(UsageError, match="names no cache method"):
        _auto_plan(tmp_path, None, FRAGMENT + "[tuned.nosuch]\npsnr = 1.0\ncompute_ratio = 1.0\n")
    with pytest.raises(UsageError, match="unknown key 'colour'"):
        _auto_plan(tmp_path, None, FRAGMENT.replace('model = "tiny"', 'colour = "red"'))


def test_sets_go_to_the_methods_that_have_them():
    from vidcache.tune.tuner import sets_by_method

    got = sets_by_method(["defaults.steps=12", "thresh=0.2", "pab.spatial_range=3", "threshold=0.1"],
                         ["teacache", "pab", "fbcache", "magcache"])
    assert got == {None: ["defaults.steps=12"], "teacache": ["thresh=0.2"], "pab": ["pab.spatial_range=3"],
                   "fbcache": ["threshold=0.1"], "magcache": ["threshold=0.1"]}


def test_a_later_table_without_measurement_drops_the_old_one(tmp_path):
    from vidcache import presets

    first = presets.parse_preset(presets.tomllib.loads(FRAGMENT), "a", "a")
    second = presets.parse_preset({"mixcache": {"step_budget": 0.5}}, "b", "b")
    merged = presets.merge(first, second)
    assert "mixcache" not in merged.tuned and "teacache" in merged.tuned


def test_gen_cache_auto_renders_with_the_tuned_choice(tuned, tmp_path):
    from vidcache.tune.auto import speed_key

    out, summary = tuned
    r = invoke("gen", *SMALL, "-p", "a blue square moving down", "--cache", "auto", "--preset", out, "-o",
               tmp_path / "gen", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(next((tmp_path / "gen").glob("a-blue-square-*.json")).read_text())
    met = {m: v["chosen"] for m, v in summary["methods"].items() if v["met"]}  # all at >= the file's target
    assert report["cache"]["method"] == min(met, key=lambda m: speed_key(met[m]))
    r = invoke("gen", *SMALL, "-p", "x", "--cache", "teacache", "--quality", 30, "-o", tmp_path / "g2")
    assert r.exit_code == 2 and "--quality is the bar of --cache auto" in r.output


# ---------------------------------------------------------------------------- the step-count rule


def test_fractional_periods_and_the_stretch():
    from vidcache.caches.steps import GAMMA, StepScale, due

    for p in (1, 2, 3, 5):
        assert [due(c, p) for c in range(12)] == [c % p == 0 for c in range(12)]
    assert sum(due(c, 1.5) for c in range(30)) == 20  # 2 calls of 3
    assert sum(due(c, 1.2) for c in range(30)) == 25  # 5 of 6
    s = StepScale(25)
    assert s.period(2, 25) == 2 and s.cap(3, 25) == 3 and s.forced(1, 25) == 1 and s.threshold(0.1, 25) == 0.1
    assert s.period(2, 40) == pytest.approx(2 * 1.6**GAMMA) and s.forced(1, 40) == 2 and s.forced(1, 15) == 1
    assert s.threshold(0.1, 40) == pytest.approx(0.1 * 1.6 ** (GAMMA - 1))
    assert StepScale(None).period(2, 40) == 2 and StepScale(None).threshold(0.1, 40) == 0.1


def test_counts_follow_the_steps_of_the_run(tmp_path):
    """The tiny preset's PAB at its own 25 steps reuses as stated (range 2: every second call, counted
    over the whole video as VideoSys counts);
    at 40 steps its period stretches by (40/25)^0.58, and the report says so."""
    from vidcache.caches.steps import GAMMA

    for steps in (25, 40):
        r = invoke("gen", "--model", "tiny", "--frames", "5", "--height", "32", "--width", "32", "--steps", steps,
                   "-p", "a blue square moving down", "--cache", "pab", "-o", tmp_path / str(steps))
        assert r.exit_code == 0, r.output
        report = json.loads(next((tmp_path / str(steps)).glob("a-blue-square-*.json")).read_text())
        params, per_step = report["cache"]["params"], report["cache"]["stats"]["per_step"]
        assert params["schedule_steps"] == 25
        lo, hi = params["spatial_window"]
        calls = list(enumerate(e for e in per_step if e["branch"] == "cond"))  # VideoSys counts every call
        inside = [(c, e) for c, e in calls if lo < e["t"] < hi]
        computed = [e["attention"]["spatial"][0] > 0 for _, e in inside]
        period = 2 * (steps / 25) ** GAMMA
        assert computed == [math.floor(c / period + 1e-9) > math.floor((c - 1) / period + 1e-9) or c == 0
                            for c, _ in inside]
        if steps == 25:
            assert "schedule_scale" not in params
        else:
            assert params["schedule_scale"] == {"steps": 40, "factor": 1.6}


def test_speedup_target_keeps_the_best_psnr_at_that_speed(tuned):
    """--target-speedup: the least aggressive measured setting at or above the speed, reusing the refs."""
    out, _ = tuned
    fast = out.parent / "fast.toml"
    r = invoke("tune", *SMALL, *PROMPTS, "--cache", "teacache", "--target-speedup", 1.3, "-o", fast, "--json")
    assert r.exit_code == 0, r.output
    method = json.loads(r.stdout)["methods"]["teacache"]
    chosen = method["chosen"]
    assert chosen["speedup"] >= 1.3
    slower = [p for p in method["points"] if p["x"] < chosen["x"] and p["line"] == chosen["line"]]
    assert all(p["speedup"] < 1.3 or p["prompts"] < chosen["prompts"] for p in slower)
    from vidcache import presets

    assert presets.load_file(fast).tuned["target_speedup"] == 1.3


def test_every_cache_method_has_a_knob():
    """Whatever `--cache` can run, `vidcache tune --cache` can tune (diffusers' SeaCache included)."""
    from vidcache import caches
    from vidcache.tune import knobs

    assert set(knobs.BUILDERS) == set(caches.REGISTRY)


def test_a_backed_off_setting_is_refined_towards_the_miss(monkeypatch):
    """The bracket prompts are easier than the others: the bracket's candidate misses on all prompts,
    a gentler one meets the target; the search then bisects between the two on all prompts instead of
    keeping the gentler one (which can be far slower than needed)."""
    from vidcache.tune import search
    from vidcache.tune.knobs import Knob, Line

    monkeypatch.setattr(search, "BACKOFFS", 10)
    offsets = [3.0, 3.0, -3.0, -3.0]  # PSNR = 60 - 40 x + offset; bracket: the first two

    def measure(point, indices):
        for i in indices:
            c = 1 - 0.6 * point.x
            point.per_prompt[i] = {"psnr": 60 - 40 * point.x + offsets[i], "ssim": 1.0, "compute_ratio": c,
                                   "attention_compute_ratio": c, "speedup": 1 / c}

    knob = Knob("synthetic", "x", {}, lambda params, x: ({**params, "x": x}, f"x{x:.4f}"), [Line("preset", {})])
    result = search.Search(search.Target(psnr=35.0), measure, [0, 1, 2, 3]).run(knob)
    s = result.chosen.summary()
    limit = (60 - 35 - statistics.stdev(offsets) / 2) / 40  # the most aggressive x meeting it on all four
    assert s["psnr"] - s["psnr_se"] >= 35.0 and limit - 0.02 < result.chosen.x <= limit

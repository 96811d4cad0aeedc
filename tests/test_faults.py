"""The batch run under faults and bad input: nothing lost, nothing wrong called done.

What a user relies on: a video is ``done`` only when its report names an MP4 that is there, whole, of
the job's settings (size, SHA-256 and frame count checked here independently of vidcache); anything a
crash, a full disk, a signal or a second process leaves is redone or refused, never reported done.

Most cases run the CLI in this process with the embedded tiny model at 5 frames of 32x32 and 2 steps;
those that need a real process (kill -9, signals, two runs at once) start ``python -m vidcache gen``
(about 5 s each on the CI machine, mostly imports), so they are few and each covers several stages.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vidcache.cli import app
from vidcache.video import read_mp4

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2"]
TEMP = re.compile(r"^\..*\.(mp4|json)$")  # vidcache's temp files beside the outputs


def invoke(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def reports(out: Path) -> dict[str, dict]:
    """Every video report in ``out`` (strict JSON), by name."""
    found = {}
    for p in sorted(out.glob("*.json")):
        if p.name != "run.json" and not p.name.startswith("."):  # temp files are nobody's report
            rep = strict_json(p.read_text())
            found[rep["name"]] = rep
    return found


def verified(out: Path) -> dict[str, dict]:
    """The reports that say ``done``, each checked against its MP4: it must be there with the size and
    SHA-256 the report names and decode to the report's frames at its size. Fails on any that is not."""
    good = {}
    for name, rep in reports(out).items():
        if rep["status"] != "done":
            continue
        mp4 = out / rep["mp4"]
        data = mp4.read_bytes()
        assert len(data) == rep["mp4_bytes"] and hashlib.sha256(data).hexdigest() == rep["mp4_sha256"], name
        assert read_mp4(mp4).shape == (rep["frames"], rep["height"], rep["width"], 3), name
        good[name] = rep
    return good


def leftovers(out: Path) -> list[str]:
    """Temp files and claims left in ``out`` (none once a run has ended or a rerun has swept)."""
    found = [p.name for p in out.iterdir() if TEMP.match(p.name)]
    claims = out / ".claims"
    if claims.is_dir():
        found += [f".claims/{p.name}" for p in claims.iterdir()]
    runs = out / "runs"
    if runs.is_dir():
        found += [f"runs/{p.name}" for p in runs.iterdir() if p.name.startswith(".")]
    return found


def run_gen(out: Path, *args, fault: str | None = None, timeout: int = 180, **popen) -> subprocess.CompletedProcess:
    """``python -m vidcache gen`` in a process of its own; ``fault``: VIDCACHE_TEST_FAULT (a stage at
    which the process sends itself a signal)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    env.pop("VIDCACHE_TEST_FAULT", None)
    if fault:
        env["VIDCACHE_TEST_FAULT"] = fault
    cmd = [sys.executable, "-m", "vidcache", "gen", *map(str, args), "--out", str(out), *TINY]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **popen)


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# --------------------------------------------------------------------------------------------
# 1. the writer's status and the written file
# --------------------------------------------------------------------------------------------

FAKE_FFMPEG = r'''
import os, subprocess, sys
real, args = os.environ["REAL_FFMPEG"], sys.argv[1:]
if "-i" not in args or args[args.index("-i") + 1] != "-":  # reading a video: the real ffmpeg
    os.execv(real, [real, *args])
counter = os.environ["FAKE_COUNTER"]
n = int(open(counter).read()) if os.path.exists(counter) else 0
open(counter, "w").write(str(n + 1))
modes = os.environ["FAKE_MODES"].split(",")
mode = modes[n] if n < len(modes) else "ok"
rc = subprocess.run([real, *args]).returncode
out = args[-1]
if mode == "disk-full":  # the disk filled up: part of the file, and ffmpeg says so
    os.truncate(out, os.path.getsize(out) // 2)
    print("av_interleaved_write_frame(): No space left on device", file=sys.stderr)
    rc = 1
elif mode == "fail-at-end":  # ffmpeg fails while finishing the file
    os.truncate(out, 0)
    rc = 1
elif mode == "silent-truncate":  # a writer that says it worked but did not
    os.truncate(out, os.path.getsize(out) // 2)
sys.exit(rc)
'''


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch):
    """Make ``FAKE_MODES``' writes fail one after the other (reads and later writes are real)."""
    import imageio_ffmpeg

    script = tmp_path / "fake_ffmpeg.py"
    script.write_text(FAKE_FFMPEG)
    wrapper = tmp_path / "ffmpeg"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("REAL_FFMPEG", imageio_ffmpeg.get_ffmpeg_exe())
    monkeypatch.setenv("FAKE_COUNTER", str(tmp_path / "count"))
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(wrapper))

    def modes(*names):
        monkeypatch.setenv("FAKE_MODES", ",".join(names))

    return modes


def test_writer_failures_are_failed_never_done_and_rerun_redoes(tmp_path, fake_ffmpeg, monkeypatch):
    fake_ffmpeg("disk-full", "fail-at-end", "silent-truncate", "ok")
    args = ["gen", "-p", "a red ball", "-p", "a blue box", "-p", "a green circle", "-p", "a white square",
            "--out", tmp_path / "out", *TINY, "--json"]
    r = invoke(*args)
    assert r.exit_code == 1, r.output
    summary = strict_json(r.stdout)
    assert [v["status"] for v in summary["videos"]] == ["failed", "failed", "failed", "done"]
    errors = [v["error"] for v in summary["videos"][:3]]
    assert "ffmpeg exited with status 1" in errors[0] and "No space left on device" in errors[0]
    assert "ffmpeg exited with status 1" in errors[1]
    assert "decodes to" in errors[2] or "cannot be decoded" in errors[2], errors[2]
    out = tmp_path / "out"
    assert list(verified(out)) == [summary["videos"][3]["name"]]
    assert sorted(p.name for p in out.glob("*.mp4")) == [summary["videos"][3]["name"] + ".mp4"]
    assert leftovers(out) == []
    monkeypatch.setenv("FAKE_MODES", "")  # the disk has room again
    again = strict_json(invoke(*args).stdout)
    assert [v["status"] for v in again["videos"]] == ["done", "done", "done", "skipped"]
    assert len(verified(out)) == 4


def test_rerun_redoes_a_damaged_or_foreign_mp4(tmp_path):
    """A truncated MP4, one replaced by another job's video (what a crash between the two renames of
    an older vidcache left: a new MP4 beside the old report), an MP4 without its report: redone."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "name": n}) + "\n" for p, n in
                               (("a red ball", "a"), ("a blue box", "b"), ("a green circle", "c"), ("a dot", "d"))))
    out = tmp_path / "out"
    assert invoke("gen", prompts, "--out", out, *TINY).exit_code == 0
    first = {n: read_mp4(out / f"{n}.mp4") for n in "abcd"}
    size = (out / "a.mp4").stat().st_size
    with open(out / "a.mp4", "r+b") as fh:
        fh.truncate(size // 2)
    (out / "b.mp4").write_bytes((out / "c.mp4").read_bytes())
    (out / "c.json").unlink()
    r = invoke("gen", prompts, "--out", out, *TINY, "--json")
    assert r.exit_code == 0, r.output
    assert [v["status"] for v in strict_json(r.stdout)["videos"]] == ["done", "done", "done", "skipped"]
    assert sorted(verified(out)) == ["a", "b", "c", "d"]
    for n in "abcd":
        assert np.array_equal(read_mp4(out / f"{n}.mp4"), first[n]), n


# --------------------------------------------------------------------------------------------
# 3. names
# --------------------------------------------------------------------------------------------


def test_names_are_unique_per_job_and_never_replace_another_jobs_video(tmp_path):
    out = tmp_path / "out"
    for prompt in ("一只猫在跳舞", "一只狗在跑步", "🎈🎈", "Café au lait"):
        assert invoke("gen", "-p", prompt, "--out", out, *TINY).exit_code == 0
    names = sorted(verified(out))
    assert len(names) == 4 and len(set(n.rsplit("-", 1)[0] for n in names)) == 2  # slug-seed "video-0" twice
    assert any(n.startswith("cafe-au-lait-0-") for n in names)
    assert all(re.fullmatch(r"[a-z0-9-]+-0-[0-9a-f]{8}", n) for n in names), names


def test_a_named_job_never_replaces_another_jobs_finished_video(tmp_path):
    out = tmp_path / "out"
    first, second = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    first.write_text(json.dumps({"prompt": "a red ball", "name": "clip"}) + "\n")
    second.write_text(json.dumps({"prompt": "a blue box", "name": "clip"}) + "\n")
    assert invoke("gen", first, "--out", out, *TINY).exit_code == 0
    before = (out / "clip.mp4").read_bytes(), (out / "clip.json").read_bytes()
    r = invoke("gen", second, "--out", out, *TINY)
    assert r.exit_code == 1, r.output
    assert "clip" in r.output and "another job" in r.output and "--overwrite" in r.output
    assert ((out / "clip.mp4").read_bytes(), (out / "clip.json").read_bytes()) == before
    assert invoke("gen", second, "--out", out, *TINY, "--overwrite").exit_code == 0
    assert verified(out)["clip"]["prompt"] == "a blue box"


# --------------------------------------------------------------------------------------------
# 4-6. bad --out, bad values, reserved names: exit 2, one line, before loading
# --------------------------------------------------------------------------------------------


def test_out_that_is_a_file_or_cannot_be_made_is_refused_before_loading(tmp_path, no_loading):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, cause in ((afile, "is a file, not a folder"), (afile / "sub", "cannot create the folder")):
        r = invoke("gen", "-p", "x", "--out", out, *TINY)
        assert r.exit_code == 2, r.output
        assert len(error_lines(r.output)) == 1 and f"error: --out {out}: {cause}" in r.output, r.output


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (a folder nobody can write in)")
def test_out_that_cannot_be_written_is_refused_before_loading(tmp_path, no_loading):
    targets = [Path("/proc")]
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        targets.append(locked)
    for out in targets:
        r = invoke("gen", "-p", "x", "--out", out, *TINY)
        assert r.exit_code == 2, r.output
        assert len(error_lines(r.output)) == 1 and f"--out {out}: cannot write in the folder" in r.output, r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--guidance", "inf"], "guidance inf not allowed: a finite number from 0 to 100 (--guidance)"),
        (["--guidance", "nan"], "guidance nan not allowed"),
        (["--set", "defaults.guidance=-inf"], "guidance -inf not allowed"),
        (["--flow-shift", "nan"], "flow_shift nan not allowed: a finite number above 0, at most 100 (--flow-shift)"),
        (["--flow-shift", "0"], "flow_shift 0.0 not allowed"),
        (["--fps", "2147483648"], "fps 2147483648 not allowed: an integer from 1 to 240 (--fps)"),
        (["--seed", str(2**70)], f"seed {2**70} not allowed: an integer from 0 to {2**64 - 1} (--seed)"),
        (["--seed", "-1"], "seed -1 not allowed"),
        (["--steps", str(10**20)], f"steps {10**20} not allowed: an integer from 1 to 10000 (--steps)"),
        (["--frames", "100000001"], "frames 100000001 not allowed: at most 10000 (--frames)"),
        (["--height", "65536"], "height 65536 not allowed: at most 8192 (--height)"),
        (["--set", "defaults.text_len=0"], "text_len 0 not allowed: an integer from 1 to 4096 (--set"),
        (["--cache", "teacache", "--set", "thresh=abc"], "--cache teacache: 'thresh' must be a number, got 'abc'"),
        (["--cache", "teacache", "--set", "thresh=nan"], "--cache teacache: 'thresh' must be a finite number"),
        (["--cache", "pab", "--set", "spatial_window=[nan, 800]"], "--cache pab: 'spatial_window'"),
        (["--cache", "mixcache", "--set", "step_budget=inf"], "--cache mixcache: 'step_budget' must be a finite"),
        (["@nan.jsonl"], "nan.jsonl:1: guidance nan not allowed"),
    ],
)
def test_values_are_checked_before_loading(tmp_path, no_loading, args, message):
    (tmp_path / "nan.jsonl").write_text('{"prompt": "x", "guidance": NaN}\n')
    args = [str(tmp_path / a[1:]) if a.startswith("@") else a for a in args]
    prompt = [] if any(a.endswith(".jsonl") for a in args) else ["-p", "x"]
    r = invoke("gen", *prompt, "--out", tmp_path / "out", *TINY, *args)
    assert r.exit_code == 2, r.output
    assert len(error_lines(r.output)) == 1 and message in r.output, r.output
    assert not (tmp_path / "out").exists()  # nothing made before every input was checked


def test_reports_are_strict_json(tmp_path):
    from vidcache.video import write_json

    with pytest.raises(ValueError, match=r"not JSON.*cache\.stats\.x"):
        write_json(tmp_path / "r.json", {"cache": {"stats": {"x": float("nan")}}})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["run", "RUN", "runs", "report", "Report"])
def test_names_vidcache_writes_itself_are_reserved(tmp_path, no_loading, name):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "x", "name": name}) + "\n")
    r = invoke("gen", prompts, "--out", tmp_path / "out", *TINY)
    assert r.exit_code == 2, r.output
    assert f"name '{name}' is reserved" in r.output and len(error_lines(r.output)) == 1


# --------------------------------------------------------------------------------------------
# 7. printed presets read back
# --------------------------------------------------------------------------------------------


def test_printed_preset_is_the_file_and_reads_back(tmp_path):
    import tomllib

    from vidcache import presets

    for name in ("tiny", "wan", "hunyuan"):
        r = invoke("presets", name)
        assert r.exit_code == 0
        assert r.stdout == presets.source_text(name)
        printed = tmp_path / f"{name}.toml"
        printed.write_text(r.stdout)
        assert tomllib.loads(r.stdout) == tomllib.loads(presets.source_text(name))
        back = presets.load_file(printed)
        shipped = presets.load(name)
        assert (back.defaults, back.methods) == (shipped.defaults, shipped.methods)


# --------------------------------------------------------------------------------------------
# 8-9. signals, temp files, one summary per run
# --------------------------------------------------------------------------------------------


def test_sigterm_finishes_the_write_then_stops_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "out"
    prompts = ["-p", "a red ball", "-p", "a blue box", "-p", "a green circle"]
    # SIGTERM while the first video is being written: the write finishes, the run stops there
    r = run_gen(out, *prompts, fault="mp4-temp:1:TERM")
    assert r.returncode == 143, r.stderr[-2000:]
    lines = [ln for ln in error_lines(r.stderr) if "interrupted" in ln]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(verified(out)) == 1 and leftovers(out) == []
    (summary_file,) = (out / "runs").iterdir()
    summary = strict_json(summary_file.read_text())
    assert summary["status"] == "interrupted" and summary["counts"]["done"] == 1
    assert strict_json((out / "run.json").read_text()) == summary
    # SIGTERM in the middle of the second video's denoising: nothing of it is kept
    r = run_gen(out, *prompts, fault="step:2:TERM")
    assert r.returncode == 143, r.stderr[-2000:]
    assert len(verified(out)) == 1 and leftovers(out) == []
    summary = strict_json((out / "run.json").read_text())
    assert summary["status"] == "interrupted"
    assert [v["status"] for v in summary["videos"]] == ["skipped", "interrupted"]
    assert len(list((out / "runs").iterdir())) == 2
    r = invoke("gen", *prompts, "--out", out, *TINY, "--json")
    assert r.exit_code == 0, r.output
    assert strict_json(r.stdout)["counts"] == {"done": 2, "skipped": 1, "claimed": 0, "failed": 0, "interrupted": 0}
    assert len(verified(out)) == 3 and len(list((out / "runs").iterdir())) == 3


def test_early_sigint_is_one_line(tmp_path):
    out = tmp_path / "out"
    r = run_gen(out, "-p", "a red ball", fault="load:1:INT")  # before the weights load
    assert r.returncode == 130, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-2000:]
    assert len([ln for ln in error_lines(r.stderr) if "interrupted by SIGINT" in ln]) == 1, r.stderr[-2000:]
    assert not list(out.glob("*.mp4")) and leftovers(out) == []
    assert strict_json((out / "run.json").read_text())["status"] == "interrupted"


def test_stale_temp_files_are_swept_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [out / f".x.vc{dead.pid}-{host}.abcd1234.mp4", out / f".y.z.vc{dead.pid}-{host}.efgh5678.json"]
        live = out / f".x.vc{alive.pid}-{host}.ijkl9012.mp4"
        other_host = out / f".x.vc{dead.pid}-elsewhere-node.mnop3456.mp4"  # recent: maybe a live writer there
        users = [out / ".notes.txt", out / ".x.mp4"]  # not vidcache's naming: never touched
        for p in [*stale, live, other_host, *users]:
            p.write_bytes(b"partial")
        assert invoke("gen", "-p", "a red ball", "--out", out, *TINY).exit_code == 0
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in [live, other_host, *users])
    finally:
        alive.kill()
        alive.wait()


def test_every_run_keeps_its_summary(tmp_path):
    out = tmp_path / "out"
    for shard in ("0/2", "1/2", None):
        extra = ["--shard", shard] if shard else []
        assert invoke("gen", "-p", "a", "-p", "b", "-p", "c", "--out", out, *TINY, *extra).exit_code == 0
    files = {}
    for f in (out / "runs").iterdir():  # runs/<UTC start>-<shard>.json
        m = re.fullmatch(r"\d{8}T\d{6}(\.\d+)?Z-(all|shard\dof2)(-\d+)?\.json", f.name)
        assert m, f.name
        files[m[2]] = f
    assert sorted(files) == ["all", "shard0of2", "shard1of2"]
    runs = {label: strict_json(f.read_text()) for label, f in files.items()}
    assert [v["status"] for v in runs["all"]["videos"]] == ["skipped"] * 3
    assert runs["shard0of2"]["counts"]["done"] == 2 and runs["shard1of2"]["counts"]["done"] == 1
    latest = strict_json((out / "run.json").read_text())
    assert latest == runs["all"] and latest["summary_file"] == f"runs/{files['all'].name}"


# --------------------------------------------------------------------------------------------
# 10. claims: two processes, one folder
# --------------------------------------------------------------------------------------------


def _write_claim(out: Path, name: str, pid: int, host: str | None = None, age_s: float = 0.0) -> Path:
    claims = out / ".claims"
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / f"{name}.claim"
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01T00:00:00Z",
                                "token": "test"}))
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def test_claimed_job_is_left_to_its_owner_and_a_dead_owners_claim_is_taken_over(tmp_path):
    out = tmp_path / "out"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"a {c} ball", "name": c}) + "\n"
                               for c in ("red", "blue", "green", "white")))
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        _write_claim(out, "red", alive.pid)  # a live run on this machine is rendering it
        _write_claim(out, "blue", dead.pid)  # that run was killed
        _write_claim(out, "green", 1234, host="other-node")  # another machine, heard from just now
        _write_claim(out, "white", 1234, host="other-node", age_s=7200)  # another machine, silent for 2 h
        r = invoke("gen", prompts, "--out", out, *TINY, "--json")
        assert r.exit_code == 0, r.output
        rows = {v["name"]: v for v in strict_json(r.stdout)["videos"]}
        assert {n: v["status"] for n, v in rows.items()} == {"red": "claimed", "blue": "done", "green": "claimed",
                                                              "white": "done"}
        assert f"pid {alive.pid}" in rows["red"]["owner"] and "other-node" in rows["green"]["owner"]
        assert sorted(verified(out)) == ["blue", "white"]
        assert sorted(p.name for p in (out / ".claims").iterdir()) == ["green.claim", "red.claim"]
    finally:
        alive.kill()
        alive.wait()
    r = invoke("gen", prompts, "--out", out, *TINY, "--json")  # the owner died: its claim is taken over
    assert [v["status"] for v in strict_json(r.stdout)["videos"]] == ["done", "skipped", "claimed", "skipped"]


def test_a_driver_without_a_model_sees_and_claims_what_gen_wrote(tmp_path):
    """What a farm driver or worker calls (vidcache.outputs with Plan.target): the same done-check and
    claims as gen, without loading a model."""
    from vidcache import jobs, outputs
    from vidcache.runner import RunConfig, plan_run

    out = tmp_path / "out"
    assert invoke("gen", "-p", "a red ball", "-p", "a blue box", "--out", out, *TINY).exit_code == 0
    flags = {"frames": 5, "height": 32, "width": 32, "steps": 2}
    plan = plan_run(RunConfig(out=out, flags=flags), jobs.read_prompts(None, ["a red ball", "a blue box", "a dot"]))
    targets = [plan.target(job) for job in plan.jobs]
    assert [outputs.finished(t) is not None for t in targets] == [True, True, False]
    assert outputs.conflict(targets[2]) is None
    held = outputs.claim(targets[2])
    assert held is not None and outputs.claim(targets[2]) is None  # this live process holds it
    assert f"pid {os.getpid()}" in outputs.describe(outputs.holder(targets[2]))
    r = invoke("gen", "-p", "a red ball", "-p", "a blue box", "-p", "a dot", "--out", out, *TINY, "--json")
    assert [v["status"] for v in strict_json(r.stdout)["videos"]] == ["skipped", "skipped", "claimed"]
    held.release()
    assert outputs.holder(targets[2]) is None and outputs.claim(targets[2]) is not None


def test_two_runs_into_one_folder_render_each_video_once(tmp_path):
    out = tmp_path / "out"
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"a ball number {i}\n" for i in range(6)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "vidcache", "gen", str(prompts), "--out", str(out), *TINY, "--json",
           "--steps", "6"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in results]
    summaries = [strict_json(o) for o, _ in results]
    done = [v["name"] for s in summaries for v in s["videos"] if v["status"] == "done"]
    assert len(done) == len(set(done)) == 6, [s["counts"] for s in summaries]
    assert len(verified(out)) == 6 and leftovers(out) == []


# --------------------------------------------------------------------------------------------
# Done when: kill -9 at any point of a batch, then a rerun
# --------------------------------------------------------------------------------------------


def test_kill_9_at_every_stage_then_rerun_leaves_every_video_finished_and_correct(tmp_path):
    """Each run is killed (SIGKILL, sent by the process to itself at a named stage of the write path);
    after every kill the folder may hold less, never a wrong or broken file reported done; the final
    rerun leaves every video done, equal to a clean run's, and no temp file or claim behind."""
    prompts = ["-p", "a red ball", "-p", "a blue box"]
    ref = tmp_path / "ref"
    assert invoke("gen", *prompts, "--out", ref, *TINY).exit_code == 0
    expected = {n: read_mp4(ref / rep["mp4"]) for n, rep in verified(ref).items()}
    out = tmp_path / "out"
    # generated, nothing written / MP4 temp / report temp / MP4 renamed / both reports renamed
    stages = ["frames:1", "mp4-temp:1", "report-temp:1", "mp4:1", "report:2"]
    for stage in stages:
        r = run_gen(out, *prompts, fault=f"{stage}:KILL")
        assert r.returncode == -signal.SIGKILL, (stage, r.stderr[-2000:])
        for name, rep in verified(out).items():
            assert np.array_equal(read_mp4(out / rep["mp4"]), expected[name]), (stage, name)
    assert len(verified(out)) == 2  # the last kill came after both reports
    r = invoke("gen", *prompts, "--out", out, *TINY, "--json")
    assert r.exit_code == 0, r.output
    assert [v["status"] for v in strict_json(r.stdout)["videos"]] == ["skipped", "skipped"]
    good = verified(out)
    assert sorted(good) == sorted(expected)
    for name, rep in good.items():
        assert np.array_equal(read_mp4(out / rep["mp4"]), expected[name])
    assert leftovers(out) == []
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(f"{n}.mp4" for n in expected)


# --------------------------------------------------------------------------------------------
# 11. the small ones
# --------------------------------------------------------------------------------------------


def test_preset_that_is_a_folder_or_not_utf8_is_a_usage_error(tmp_path, no_loading):
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"[defaults]\nsteps = 3\n# \xff\xfe\n")
    for preset, cause in ((tmp_path, "is a folder"), (binary, "not UTF-8")):
        r = invoke("gen", "-p", "x", "--preset", preset, "--out", tmp_path / "out")
        assert r.exit_code == 2, r.output
        assert len(error_lines(r.output)) == 1 and f"preset file {preset}" in r.output and cause in r.output


def test_unreachable_hub_fails_at_once_without_retries(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.utils._http as hub_http

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there: connections are refused
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False, raising=False)
    waits = []
    monkeypatch.setattr(hub_http.time, "sleep", lambda s: waits.append(s))
    r = invoke("gen", "-p", "x", "--model", "nobody/not-a-model", "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert "not in the Hugging Face cache" in r.output and len(error_lines(r.output)) == 1
    assert waits == []


def test_version():
    from vidcache import __version__

    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"vidcache {__version__}"


def test_results_table_says_where_the_files_are(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["gen", "-p", "a red ball", "--out", str(out), *TINY], terminal_width=200)
    assert r.exit_code == 0, r.output
    run_file = strict_json((out / "run.json").read_text())["summary_file"]
    assert f"in {out}" in r.stdout and f"{out}/{run_file}" in r.stdout, r.stdout


def test_command_line_seed_wins_over_a_lines_seed(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a red ball", "seed": 3}) + "\n" + json.dumps({"prompt": "a box"}) + "\n")
    r = invoke("gen", prompts, "--out", tmp_path / "a", *TINY)
    assert r.exit_code == 0, r.output
    assert sorted(rep["seed"] for rep in reports(tmp_path / "a").values()) == [0, 3]  # default seed: 0
    r = invoke("gen", prompts, "--out", tmp_path / "b", *TINY, "--seed", "7")
    assert r.exit_code == 0, r.output
    assert sorted(rep["seed"] for rep in reports(tmp_path / "b").values()) == [7, 7]

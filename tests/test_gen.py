"""`vidcache gen` end to end on tiny Wan, CogVideoX and HunyuanVideo folders, through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vidcache.cli import app
from vidcache.video import read_mp4

REQUIRED = [
    ("prompt",), ("seed",), ("model", "name"), ("model", "family"), ("frames",), ("height",), ("width",),
    ("steps",), ("cache", "method"), ("cache", "params"), ("cache", "stats", "compute_ratio"),
    ("timing", "text_encode_s"), ("timing", "denoise_s"), ("timing", "decode_s"), ("timing", "total_s"),
    ("timing", "step_s"), ("memory", "peak_bytes"), ("device",), ("versions", "vidcache"),
    ("versions", "torch"), ("versions", "diffusers"), ("quantize", "mode"),
]
SMALL = ["--frames", "9", "--height", "64", "--width", "64", "--steps", "3"]


def invoke(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def get(d, path):
    for k in path:
        d = d[k]
    return d


def reports(out: Path) -> list[dict]:
    """The video reports in ``out``, in the prompt file's order."""
    found = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "run.json"]
    return sorted(found, key=lambda rep: rep["job"]["index"])


def named(name: str, stem: str) -> bool:
    """A default name: the prompt's slug and seed, then 8 hex digits of the job key."""
    return re.fullmatch(re.escape(stem) + r"-[0-9a-f]{8}", name) is not None


def test_default_command_uses_embedded_model(tmp_path):
    r = invoke("gen", "--prompt", "a red ball bouncing", "--out", tmp_path, "--steps", "4")
    assert r.exit_code == 0, r.output
    (rep,) = reports(tmp_path)
    assert rep["model"]["name"] == "tiny" and rep["model"]["family"] == "wan"
    video = read_mp4(tmp_path / f"{rep['name']}.mp4")
    assert video.shape == (rep["frames"], rep["height"], rep["width"], 3)
    assert named(rep["name"], "a-red-ball-bouncing-0") and rep["job_key"].startswith(rep["name"][-8:])


@pytest.mark.parametrize("family", ["wan", "cogvideox", "hunyuan"])
def test_each_family_writes_video_and_complete_report(tiny_dirs, tmp_path, family):
    prompts = tmp_path / "p.jsonl"
    short = 17 if family == "cogvideox" else 5  # CogVideoX takes 8k+1 frames
    prompts.write_text(
        json.dumps({"prompt": "a red ball", "seed": 3}) + "\n\n"
        + json.dumps({"prompt": "a blue box moving up", "frames": short, "steps": 2, "name": "second"}) + "\n"
    )
    out = tmp_path / "out"
    r = invoke("gen", "--model", tiny_dirs[family], prompts, "--out", out, "--height", 64, "--width", 80,
               "--set", "defaults.frames=9", "--set", "defaults.steps=3", "--set", "defaults.text_len=16")
    assert r.exit_code == 0, r.output
    first, second = reports(out)
    assert named(first["name"], "a-red-ball-3") and first["seed"] == 3 and second["name"] == "second"
    for rep, frames, steps in ((first, 9, 3), (second, short, 2)):
        for path in REQUIRED:
            get(rep, path)
        assert rep["model"]["family"] == family
        assert (rep["frames"], rep["height"], rep["width"], rep["steps"]) == (frames, 64, 80, steps)
        assert len(rep["timing"]["step_s"]) == steps and all(s > 0 for s in rep["timing"]["step_s"])
        for key in ("text_encode_s", "denoise_s", "decode_s", "total_s"):
            assert rep["timing"][key] > 0
        assert rep["timing"]["total_s"] >= rep["timing"]["denoise_s"] + rep["timing"]["decode_s"]
        assert rep["cache"]["stats"]["compute_ratio"] == 1.0 and rep["memory"]["peak_bytes"] > 0
        assert read_mp4(out / f"{rep['name']}.mp4").shape == (frames, 64, 80, 3)
    run = json.loads((out / "run.json").read_text())
    assert run["counts"] == {"done": 2, "skipped": 0, "claimed": 0, "failed": 0, "interrupted": 0}


def test_two_expert_wan_runs_both_experts(tiny_dirs, tmp_path):
    import vidcache.loading as loading

    calls = {"transformer": 0, "transformer_2": 0}
    real = loading.load_pipeline

    def counting(*a, **k):
        pipe, dev, dt = real(*a, **k)
        for name in calls:
            getattr(pipe, name).register_forward_pre_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
        return pipe, dev, dt

    loading_patch = pytest.MonkeyPatch()
    loading_patch.setattr("vidcache.runner.load_pipeline", counting)
    try:
        r = invoke("gen", "--model", tiny_dirs["wan2"], "--prompt", "a ball", "--out", tmp_path, *SMALL,
                   "--steps", 8)
    finally:
        loading_patch.undo()
    assert r.exit_code == 0, r.output
    assert calls["transformer"] > 0 and calls["transformer_2"] > 0


def test_same_seed_same_video_and_other_seed_differs(tiny_dirs, tmp_path):
    videos = []
    for i, seed in enumerate((5, 5, 6)):
        out = tmp_path / str(i)
        r = invoke("gen", "--model", tiny_dirs["wan"], "-p", "a red ball", "--seed", seed, "--out", out, *SMALL)
        assert r.exit_code == 0, r.output
        videos.append(read_mp4(next(out.glob("*.mp4"))))
    assert np.array_equal(videos[0], videos[1])
    assert not np.array_equal(videos[0], videos[2])


def test_resume_skips_finished_and_redoes_changed(tiny_dirs, tmp_path):
    args = ["gen", "--model", tiny_dirs["wan"], "-p", "one", "-p", "two", "--out", tmp_path, *SMALL]
    assert invoke(*args).exit_code == 0
    mp4s = sorted(tmp_path.glob("*.mp4"))
    stamps = [p.stat().st_mtime_ns for p in mp4s]
    r = invoke(*args, "--json")
    assert r.exit_code == 0
    summary = json.loads(r.stdout)
    assert summary["counts"] == {"done": 0, "skipped": 2, "claimed": 0, "failed": 0, "interrupted": 0}
    assert [p.stat().st_mtime_ns for p in mp4s] == stamps
    (tmp_path / mp4s[0].name).unlink()  # an interrupted batch: one video missing
    summary = json.loads(invoke(*args, "--json").stdout)
    assert (summary["counts"]["done"], summary["counts"]["skipped"]) == (1, 1)
    summary = json.loads(invoke(*args[:-2], "--steps", "2", "--json").stdout)  # other parameters: other videos
    assert summary["counts"]["done"] == 2 and len(list(tmp_path.glob("*.mp4"))) == 4  # the first two are kept
    summary = json.loads(invoke(*args[:-2], "--steps", "2", "--json", "--overwrite").stdout)
    assert summary["counts"]["done"] == 2


def test_stdin_and_txt_comments(tiny_dirs, tmp_path):
    r = invoke("gen", "--model", tiny_dirs["wan"], "-", "--out", tmp_path, *SMALL, "--json",
               input="# a comment\n\na red ball\n   \na blue box\n")
    assert r.exit_code == 0, r.output
    first, second = (v["name"] for v in json.loads(r.stdout)["videos"])
    assert named(first, "a-red-ball-0") and named(second, "a-blue-box-0")


def test_job_name_never_escapes_out(tiny_dirs, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "x", "name": "../../etc/evil name"}) + "\n")
    out = tmp_path / "out"
    assert invoke("gen", "--model", tiny_dirs["wan"], prompts, "--out", out, *SMALL).exit_code == 0
    assert [p.name for p in out.glob("*.mp4")] == ["etc-evil-name.mp4"]
    assert not list(tmp_path.glob("*.mp4"))


def test_shard_splits_jobs(tiny_dirs, tmp_path):
    r = invoke("gen", "--model", tiny_dirs["wan"], "-p", "a", "-p", "b", "-p", "c", "--shard", "1/2",
               "--out", tmp_path, *SMALL, "--json")
    assert r.exit_code == 0, r.output
    (video,) = json.loads(r.stdout)["videos"]
    assert named(video["name"], "b-0")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.txt"], "prompt file missing.txt not found"),
        (["@empty"], "has no prompts"),
        (["@bad"], "bad.jsonl:2: malformed JSON"),
        (["@badkey"], "unknown key(s) colour"),
        (["-p", "x", "--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
        (["-p", "x", "--model", "@notpipe"], "not a diffusers pipeline folder"),
        (["-p", "x", "--model", "@unsupported"], "is not supported"),
        (["-p", "x", "--model", "nobody/not-a-model"], "not in the Hugging Face cache"),
        (["-p", "x", "--model", "@wan", "--frames", "10"], "10 frames not allowed: Wan takes 4k+1 frames"),
        (["-p", "x", "--model", "@wan", "--height", "65"], "height 65 not allowed: sizes must be multiples of 16"),
        (["-p", "x", "--model", "@cogvideox", "--frames", "53"], "CogVideoX takes 8k+1 frames up to 49"),
        (["-p", "x", "--model", "wan2.2-ti2v-5b", "--height", "720"], "multiples of 32"),
        (["-p", "x", "--cache", "nosuch"], "--cache nosuch: unknown method"),
        (["-p", "x", "--set", "thresh=1"], "--set thresh=1: unknown key for none"),
        (["-p", "x", "--set", "defaults.frame=9"], "unknown key 'frame'"),
        (["-p", "x", "--preset", "@badpreset"], "unknown key 'stepz'"),
        (["-p", "x", "--shard", "3/2"], "--shard '3/2'"),
        (["-p", "x", "--device", "cuda"], "no CUDA device"),
        (["-p", "x", "--attention", "xformers"], "--attention xformers needs a CUDA device (use sdpa on cpu)"),
        (["-p", "x", "--attention", "sage"], "--attention sage needs a CUDA device (use sdpa on cpu)"),
        (["-p", "x", "--quantize", "fp8"], "--quantize fp8 needs a CUDA GPU with fp8 matmuls"),
    ],
)
def test_usage_errors_one_line_exit_2(tiny_dirs, tmp_path, args, message):
    files = {
        "@empty": ("empty.txt", "# only a comment\n\n"),
        "@bad": ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": oops}\n'),
        "@badkey": ("badkey.jsonl", '{"prompt": "ok", "colour": "red"}\n'),
        "@badpreset": ("bad.toml", "[defaults]\nstepz = 3\n"),
    }
    (tmp_path / "notpipe").mkdir()
    (tmp_path / "unsupported").mkdir()
    (tmp_path / "unsupported" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    resolved = []
    for a in args:
        if a in files:
            name, text = files[a]
            (tmp_path / name).write_text(text)
            a = str(tmp_path / name)
        elif a.startswith("@"):
            a = tiny_dirs.get(a[1:], str(tmp_path / a[1:]))
        resolved.append(a)
    r = invoke("gen", *resolved, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert not list((tmp_path / "out").glob("*.mp4")) if (tmp_path / "out").exists() else True


def test_error_line_with_brackets_is_printed_as_text(tmp_path):
    """gloo's and CUDA's messages carry "[/path:line]"; rich must not read them as markup."""
    r = invoke("gen", "-p", "x", "--model", str(tmp_path / "x[/bad]"), "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert "x[/bad]: no such folder" in r.output and "Traceback" not in r.output


def test_unknown_flag_value_is_usage_error(tmp_path):
    r = invoke("gen", "-p", "x", "--dtype", "fp8", "--out", tmp_path)
    assert r.exit_code == 2 and "fp8" in r.output


def test_failed_video_exit_1_others_written(tiny_dirs, tmp_path, monkeypatch):
    import torch

    from vidcache.runner import Runner

    real = Runner.generate

    def flaky(self, job):
        if job.index == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if job.index == 2:
            raise RuntimeError("something broke\nsecond line")
        return real(self, job)

    monkeypatch.setattr(Runner, "generate", flaky)
    r = invoke("gen", "--model", tiny_dirs["wan"], "-p", "a", "-p", "b", "-p", "c", "--out", tmp_path, *SMALL)
    assert r.exit_code == 1
    assert "out of memory" in r.output and "--offload" in r.output and "something broke" in r.output
    assert "second line" not in r.output and "Traceback" not in r.output
    (mp4,) = tmp_path.glob("*.mp4")
    assert named(mp4.stem, "a-0")
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["counts"] == {"done": 1, "skipped": 0, "claimed": 0, "failed": 2, "interrupted": 0}


def test_models_and_presets_commands():
    r = invoke("models", "--json")
    assert r.exit_code == 0
    names = {m["name"]: m for m in json.loads(r.stdout)}
    assert {"tiny", "wan", "wan-14b", "wan2.2-ti2v-5b", "wan2.2-t2v-a14b", "hunyuan", "cogvideox",
            "cogvideox-5b"} <= set(names)
    assert names["hunyuan"]["family"] == "hunyuan" and names["wan"]["defaults"]["frames"] == 81
    assert invoke("models").exit_code == 0
    r = invoke("presets", "wan", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["wan"]["defaults"]["steps"] == 50
    r = invoke("presets", "nosuch")
    assert r.exit_code == 2 and "no preset named 'nosuch'" in r.output


def test_known_model_without_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    r = invoke("gen", "-p", "x", "--model", "cogvideox", "--out", tmp_path / "o", "--frames", "9",
               "--height", "64", "--width", "64")
    assert r.exit_code == 2, r.output
    assert "not available locally" in r.output and "THUDM/CogVideoX-2b" in r.output

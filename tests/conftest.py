"""Tiny Wan, CogVideoX and HunyuanVideo pipelines, built offline once per session and saved to disk,
so that every test loads them through the same ``from_pretrained`` path a user's folder takes."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: threads cost more than they give

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ("wan", "cogvideox", "hunyuan")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    """family -> folder of a saved tiny pipeline (plus "wan2" for a two-expert Wan 2.2 layout)."""
    from vidcache.tiny import build_tiny_cogvideox, build_tiny_hunyuan, build_tiny_wan

    root = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for fam, build in (("wan", build_tiny_wan), ("cogvideox", build_tiny_cogvideox), ("hunyuan", build_tiny_hunyuan)):
        dirs[fam] = str(root / fam)
        build(dirs[fam])
    dirs["wan2"] = str(root / "wan2")
    build_tiny_wan(dirs["wan2"], two_experts=True)
    # image-to-video: Wan 2.1 I2V (CLIP), Wan 2.2 I2V A14B (two experts), Wan 2.2 TI2V-5B, CogVideoX-5B-I2V
    for name, build, kw in (("wan-i2v", build_tiny_wan, {"mode": "i2v"}),
                            ("wan2-i2v", build_tiny_wan, {"mode": "i2v", "two_experts": True}),
                            ("wan-ti2v", build_tiny_wan, {"mode": "ti2v"}),
                            ("cogvideox-i2v", build_tiny_cogvideox, {"mode": "i2v"})):
        dirs[name] = str(root / name)
        build(dirs[name], **kw)
    return dirs


@pytest.fixture(scope="session")
def hunyuan_dirs(tmp_path_factory) -> dict[str, str]:
    """Tiny HunyuanVideo-I2V, HunyuanVideo 1.5 text-to-video and image-to-video folders (about 1 s to
    build each; the 1.5 ones are 18 MB, for diffusers' fixed 2048-wide ByT5 projection)."""
    from vidcache.tiny import build_tiny_hunyuan15, build_tiny_hunyuan_i2v

    root = tmp_path_factory.mktemp("tiny-hunyuan")
    dirs = {name: str(root / name) for name in ("hunyuan-i2v", "hunyuan15", "hunyuan15-i2v")}
    build_tiny_hunyuan_i2v(dirs["hunyuan-i2v"])
    build_tiny_hunyuan15(dirs["hunyuan15"])
    build_tiny_hunyuan15(dirs["hunyuan15-i2v"], image_to_video=True)
    return dirs


@pytest.fixture
def no_loading(monkeypatch):
    """Weights must not load in this test: every input is checked before (returns the monkeypatch)."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before every input was checked")

    monkeypatch.setattr("vidcache.runner.load_pipeline", refuse)
    return monkeypatch


def load_pipe(folder: str, cls=None):
    """Load a saved tiny pipeline the way vidcache does, every component in eval mode (``cls``: a
    pipeline class other than the folder's own, as for Wan 2.2 TI2V with an image)."""
    from diffusers import DiffusionPipeline

    pipe = (cls or DiffusionPipeline).from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.eval()
    return pipe


TINY_CALL = {"height": 64, "width": 64, "num_frames": 9, "output_type": "np"}


def run_pipe(pipe, family: str, steps: int = 6, seed: int = 0, prompt: str = "a red ball moving left"):
    """One tiny video as a float array, with CFG active where the family has it."""
    kwargs = dict(TINY_CALL, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    if family == "hunyuan":
        kwargs.update(max_sequence_length=32)
    else:
        kwargs.update(negative_prompt="", guidance_scale=5.0, max_sequence_length=16)
    with torch.no_grad():
        return pipe(prompt, **kwargs).frames[0]


REPORT_PROMPTS = {  # renders/none gets A-D, renders/teacache B, A, E, C: the same jobs at other places
    "A": "a red ball moving left", "B": "a blue square moving up", "C": "a green ball moving right",
    "D": "a yellow square moving down", "E": "a red square moving right </script><!-- <b>",
}


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory) -> dict:
    """What ``vidcache report`` reads, made by the embedded tiny model: renders/none (uncached),
    renders/teacache (teacache.fast, other order, one job the other lacks and each way round) and
    renders/bench (a one-prompt ``vidcache bench``)."""
    import json

    from typer.testing import CliRunner

    from vidcache.cli import app

    root = tmp_path_factory.mktemp("renders")
    small = ["--steps", "12", "--frames", "17", "--height", "96", "--width", "96"]
    for cache, keys in (("none", "ABCD"), ("teacache.fast", "BAEC")):
        prompts = root / f"{cache}.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": REPORT_PROMPTS[k], "seed": 5}) + "\n" for k in keys))
        out = root / cache.split(".")[0]
        r = CliRunner().invoke(app, ["gen", str(prompts), "--cache", cache, "--out", str(out), *small])
        assert r.exit_code == 0, r.output
        prompts.unlink()
    r = CliRunner().invoke(app, ["bench", "--caches", "teacache.fast", "-p", REPORT_PROMPTS["A"], "--repeat", "1",
                                 "--out", str(root / "bench"), "--steps", "4", "--frames", "9", "--height", "64",
                                 "--width", "64"])
    assert r.exit_code == 0, r.output
    return {"root": root, "none": root / "none", "teacache": root / "teacache", "bench": root / "bench"}

"""The tiny reference model's world, its training script and the quality metrics.

The training script is run on a toy config (seconds) so that a change to it cannot silently
break the path from training to a folder ``WanPipeline.from_pretrained`` loads; the adherence
probe must both accept correct clips and reject wrong colours and wrong directions, or its numbers
mean nothing.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from vidcache import metrics as M
from vidcache import reference as R

ROOT = Path(__file__).resolve().parent.parent


def _frames(batch: R.ClipBatch, i: int) -> torch.Tensor:
    return batch.video[i].permute(1, 2, 3, 0)  # (T, H, W, 3)


def _clip(shape: str, colour: str, direction: str, seed: int = 0, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return _frames(R.make_batch(1, combos=[(shape, colour, direction)], generator=g, **kw), 0)


def test_vocabulary_and_held_out():
    assert R.parse_prompt("a red circle moving left") == ("circle", "red", "left")
    assert R.parse_prompt("A Blue BALL moving up.") == ("circle", "blue", "up")
    assert R.parse_prompt("something else") == (None, None, None)
    held = set(R.HELD_OUT)
    assert held and held <= set(R.all_combos())
    assert not held & set(R.train_combos())
    assert len(R.train_combos()) + len(held) == len(R.all_combos())
    for s, c, d in held:  # every word of a held-out combo is still trained in other combos
        train = R.train_combos()
        assert any(x[0] == s for x in train) and any(x[1] == c for x in train)
        assert any(x[2] == d for x in train)
    assert R.is_held_out(R.prompt_of(*R.HELD_OUT[0]))
    assert R.DEFAULTS["frames"] % 4 == 1 and R.DEFAULTS["height"] % 16 == 0


def test_tokenizer_knows_every_word():
    from vidcache.tiny import WORDS, t5_tokenizer

    words = set(R.SHAPES) | set(R.COLOURS) | set(R.DIRECTIONS) | set(R.SYNONYMS) | {"a", "moving"}
    assert words <= set(WORDS)
    tok = t5_tokenizer()
    assert tok.unk_token_id not in tok("a purple triangle moving down").input_ids


def test_make_batch_is_vectorised_seeded_and_in_frame():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = R.make_batch(6, frames=9, height=64, width=64, generator=g1)
    b = R.make_batch(6, frames=9, height=64, width=64, generator=g2)
    assert a.video.shape == (6, 3, 9, 64, 64)
    assert torch.equal(a.video, b.video) and a.prompts == b.prompts
    assert 0.0 <= float(a.video.min()) and float(a.video.max()) <= 1.0
    assert (a.centre >= 0).all() and (a.centre <= 64).all()
    assert all(R.parse_prompt(p) in set(R.train_combos()) for p in a.prompts)
    held = R.make_batch(4, combos=list(R.HELD_OUT), frames=5, height=32, width=32)
    assert all(R.is_held_out(p) for p in held.prompts)


@pytest.mark.parametrize("combo", [("circle", "red", "left"), ("triangle", "blue", "up"),
                                   ("square", "yellow", "down"), ("square", "white", "right")])
def test_probe_accepts_the_right_clip(combo):
    res = M.adherence(_clip(*combo).numpy(), R.prompt_of(*combo))
    assert res["colour_ok"] and res["direction_ok"] and res["ok"], res


def test_probe_rejects_wrong_colour_and_wrong_direction():
    clip = _clip("circle", "green", "right", seed=5)
    wrong_colour = M.adherence(clip, "a purple circle moving right")
    assert not wrong_colour["colour_ok"] and wrong_colour["direction_ok"] and not wrong_colour["ok"]
    wrong_way = M.adherence(clip, "a green circle moving left")
    assert wrong_way["colour_ok"] and not wrong_way["direction_ok"] and not wrong_way["ok"]
    still = clip[:1].expand(clip.shape[0], -1, -1, -1)  # no motion at all
    assert not M.adherence(still, "a green circle moving right")["direction_ok"]
    empty = torch.zeros_like(clip)  # nothing there
    assert not M.adherence(empty, "a green circle moving right")["ok"]


def test_accuracy_reports_train_and_held_out_apart():
    good = _clip("circle", "red", "left")
    held = R.HELD_OUT[0]
    samples = [(good, "a red circle moving left"), (good, "a blue circle moving left"),
               (_clip(*held), R.prompt_of(*held))]
    acc = M.adherence_accuracy(samples)
    assert acc["train"]["n"] == 2 and acc["train"]["ok"] == 0.5 and acc["train"]["direction"] == 1.0
    assert acc["held_out"]["n"] == 1 and acc["held_out"]["ok"] == 1.0
    assert math.isnan(M.adherence_accuracy([])["train"]["ok"])


def test_psnr_ssim_sanity():
    a = _clip("square", "green", "up", frames=5, height=64, width=64)
    assert M.psnr(a, a) == M.PSNR_CAP
    assert M.ssim(a, a) == pytest.approx(1.0, abs=1e-4)
    g = torch.Generator().manual_seed(0)
    noisy = (a + 0.05 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    other = _clip("circle", "red", "down", frames=5, height=64, width=64, seed=9)
    assert 20 < M.psnr(a, noisy) < 40
    assert M.psnr(a, other) < M.psnr(a, noisy)
    assert M.ssim(a, other) < 0.999 and M.ssim(a, noisy) < 0.999
    assert M.psnr(a.numpy(), noisy.numpy()) == pytest.approx(M.psnr(a, noisy))
    lp = M.lpips(a, noisy)
    assert lp is None or lp > 0
    with pytest.raises(ValueError):
        M.psnr(a, a[:2])


def test_train_script_tiny_run_loads_with_diffusers(tmp_path):
    from diffusers import WanPipeline

    script = ROOT / "scripts" / "train_reference.py"
    spec = importlib.util.spec_from_file_location("train_reference", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "tiny-ref"
    assert mod.main(["--tiny-test", "--out", str(out), "--threads", "1"]) == 0
    assert (out / "model_index.json").is_file()
    assert list(out.rglob("*.safetensors")) and not list(out.rglob("*.bin"))
    assert (tmp_path / "tiny-ref.train.log").read_text().count("dit step") >= 1
    # the recipe is reproducible: same seed, flags and thread count give the same weights, byte for byte
    again = tmp_path / "tiny-ref-again"
    assert mod.main(["--tiny-test", "--out", str(again), "--threads", "1"]) == 0
    for f in sorted(out.rglob("*.safetensors")):
        assert f.read_bytes() == (again / f.relative_to(out)).read_bytes(), f.relative_to(out)

    pipe = WanPipeline.from_pretrained(str(out), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    cfg = mod.CONFIGS["tiny-test"]
    # the script's text path is the pipeline's: same states for the same prompts
    prompts = ["a red circle moving left", ""]
    ids, mask = mod.tokenize(pipe.tokenizer, prompts, cfg["text_len"])
    with torch.no_grad():
        mine = mod.embed(pipe.text_encoder, ids, mask)
        theirs = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                    max_sequence_length=cfg["text_len"])[0]
    torch.testing.assert_close(mine, theirs)
    with torch.no_grad():
        frames = pipe("a red circle moving left", negative_prompt="", guidance_scale=4.0,
                      height=cfg["height"], width=cfg["width"], num_frames=cfg["frames"],
                      num_inference_steps=2, max_sequence_length=cfg["text_len"],
                      generator=torch.Generator().manual_seed(0), output_type="np").frames[0]
    assert frames.shape == (cfg["frames"], cfg["height"], cfg["width"], 3)


@pytest.mark.skipif(not (ROOT / "vidcache" / "assets" / "tiny" / "model_index.json").is_file(),
                    reason="the trained reference model is not in the tree")
def test_shipped_model_is_small_and_safetensors_only():
    folder = ROOT / "vidcache" / "assets" / "tiny"
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 8.5e6
    assert not [f for f in files if f.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"}]

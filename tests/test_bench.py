"""`vidcache bench` on a tiny random model: the three files with the promised columns, paired timing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vidcache.caches import METHOD_NAMES
from vidcache.cli import app

ROW_KEYS = {"method", "preset", "speedup", "speedup_e2e", "compute_ratio", "psnr", "psnr_median", "psnr_min",
            "worst_frame", "worst_frame_min", "ssim", "per_prompt"}
MD_HEADER = ("| method | preset | speedup | speedup_e2e | compute_ratio | psnr | psnr_median | psnr_min | worst_frame "
             "| worst_frame_min | ssim | lpips | adherence | cache_memory_mb |")


def test_bench_writes_json_md_png(tiny_dirs, tmp_path):
    methods = [m for m in METHOD_NAMES if m != "none"][:2]
    assert len(methods) == 2, "the bench test needs two registered caching methods"
    out = tmp_path / "bench"
    r = CliRunner().invoke(app, [
        "bench", "--model", tiny_dirs["wan"], "--caches", ",".join(methods), "-p", "a red ball", "-p", "a blue box",
        "--repeat", "1", "--out", str(out), "--frames", "9", "--height", "64", "--width", "64", "--steps", "8",
        "--set", "defaults.text_len=16", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "bench.json").read_text())
    assert json.loads(r.stdout) == rows
    assert [row["method"] for row in rows] == ["none", *methods]
    for row in rows:
        assert ROW_KEYS <= set(row)
    for row in rows[1:]:
        assert row["pairs"] == 2  # 2 prompts x 1 repeat
        assert row["speedup"] > 0 and row["speedup_e2e"] > 0
        assert 0 < row["compute_ratio"] <= 1.0
        assert row["psnr"] > 10 and 0 < row["ssim"] <= 1.0
        # the spread over prompts and the worst frame, consistent with the per-prompt numbers
        per = row["per_prompt"]
        assert [p["prompt"] for p in per] == ["a red ball", "a blue box"]
        assert row["psnr_min"] == min(p["psnr"] for p in per) <= row["psnr_median"] <= max(p["psnr"] for p in per)
        assert row["worst_frame_min"] == min(p["worst_frame"] for p in per) <= row["worst_frame"] <= row["psnr"]
        assert all(p["worst_frame"] <= p["psnr"] and 0 <= p["worst_frame_index"] < 9 for p in per)
    md = (out / "bench.md").read_text()
    assert md.startswith(MD_HEADER) and all(f"| {m} |" in md for m in methods)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_unknown_method_before_loading(tmp_path):
    r = CliRunner().invoke(app, ["bench", "--caches", "nosuch", "-p", "x", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--cache nosuch: unknown method" in r.output
    r = CliRunner().invoke(app, ["bench", "--caches", "none", "-p", "x", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "at least one caching method" in r.output


def test_bench_quality_finds_the_broken_frame():
    """One broken frame in a clip: the mean over frames barely moves, the worst frame says which."""
    import numpy as np

    from vidcache import bench

    rng = np.random.default_rng(0)
    ref = rng.uniform(0.2, 0.8, size=(9, 16, 16, 3)).astype(np.float32)
    test = ref + 0.001
    test[0] += rng.normal(0, 0.2, size=test[0].shape).astype(np.float32)
    q = bench.clip_quality(ref, np.clip(test, 0, 1), "a red ball", probe=False)
    assert q["worst_frame_index"] == 0 and q["worst_frame"] < 16 < 40 < q["psnr"]
    samples = [dict(q, prompt="a", compute_ratio=0.5), dict(q, prompt="b", compute_ratio=0.5, psnr=q["psnr"] + 6)]
    summary = bench.psnr_summary(samples)
    assert summary["psnr_min"] == q["psnr"] and summary["psnr_median"] == q["psnr"] + 3
    assert summary["worst_frame_min"] == q["worst_frame"] and len(summary["per_prompt"]) == 2


def test_bench_quantized_rows_against_the_unquantized_baseline(tiny_dirs, tmp_path):
    """METHOD@int8 rows: the cache on int8 weights, and none@int8 (quantization alone), each paired with
    and measured against the unquantized uncached video; the table gains a quantize column."""
    pytest.importorskip("torchao", reason="the 'quant' extra (torchao) is not installed")
    out = tmp_path / "bench"
    r = CliRunner().invoke(app, [
        "bench", "--model", tiny_dirs["wan"], "--caches", "pab,pab@int8,none@int8", "-p", "a red ball", "--repeat", "1",
        "--out", str(out), "--frames", "9", "--height", "64", "--width", "64", "--steps", "6",
        "--set", "defaults.text_len=16", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "bench.json").read_text())
    assert [(row["method"], row["quantize"]) for row in rows] == [
        ("none", "none"), ("pab", "none"), ("pab", "int8"), ("none", "int8")]
    plain, quantized, alone = rows[1:]
    assert alone["preset"] == "-" and alone["compute_ratio"] == 1.0 and alone["pairs"] == 1
    assert quantized["compute_ratio"] == plain["compute_ratio"]
    # int8 is lossy but close on this random tiny model (measured about 84 dB; identical videos score 100)
    assert 40 < alone["psnr"] < 99 and quantized["psnr"] > 40 and alone["speedup"] > 0
    md = (out / "bench.md").read_text()
    assert md.startswith("| method | preset | quantize | speedup |") and "| pab | default | int8 |" in md
    assert "measured against the same unquantized uncached video" in md

"""`vidcache report` on folders the tiny model rendered: what the page and --json say, pairing with
--against, the numbers against vidcache.metrics, bad input (one line each), usage errors (exit 2)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPORT_PROMPTS
from PIL import Image
from typer.testing import CliRunner

from vidcache import metrics
from vidcache.cli import app
from vidcache.jobs import pair_key, slug
from vidcache.page import images
from vidcache.video import read_mp4


def report(*args):
    r = CliRunner().invoke(app, ["report", *map(str, args)])
    return r


def as_json(r) -> dict:
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def reports(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json") if p.name != "run.json"}


def prompt_of(name: str) -> str:
    return next(k for k, p in REPORT_PROMPTS.items() if re.fullmatch(re.escape(f"{slug(p)}-5-") + "[0-9a-f]{8}", name))


def test_against_pairs_jobs_by_key_and_measures_them(report_runs, tmp_path):
    page = tmp_path / "compare.html"
    s = as_json(report(report_runs["teacache"], "--against", report_runs["none"], "--out", page, "--json"))
    assert s["page"] == str(page) and page.is_file()
    assert s["counts"] == {"done": 4, "skipped": 0, "failed": 0, "missing": 0} and s["problems"] == []
    mine, theirs = reports(report_runs["teacache"]), reports(report_runs["none"])
    paired = {prompt_of(v["name"]): v for v in s["videos"] if "reference" in v}
    assert sorted(paired) == ["A", "B", "C"]  # E has no uncached twin, D no cached one
    assert [prompt_of(u["name"]) for u in s["unpaired"]["here"]] == ["E"]
    assert [prompt_of(u["name"]) for u in s["unpaired"]["against"]] == ["D"]
    for key, v in paired.items():
        ref = v["reference"]
        assert prompt_of(ref["name"]) == key and ref["name"] != v["name"]  # other places in the batch
        a = read_mp4(ref["mp4"]).astype(np.float32) / 255
        b = read_mp4(v["mp4"]).astype(np.float32) / 255
        assert v["psnr"] == pytest.approx(metrics.psnr(a, b), abs=1e-3)
        assert v["ssim"] == pytest.approx(metrics.ssim(a, b), abs=1e-4)
        assert v["psnr_min"] == pytest.approx(min(metrics.psnr_frames(a, b)), abs=1e-3)
        assert v["psnr"] < 60  # teacache.fast reuses steps: not the same video
        want = theirs[ref["name"]]["timing"]["total_s"] / mine[v["name"]]["timing"]["total_s"]
        assert v["speedup"] == pytest.approx(want, rel=1e-3)
    (line,) = s["caches"]
    assert line["cache"] == "teacache.fast" and line["pairs"] == 3
    assert line["psnr_worst"] == min(v["psnr_min"] for v in paired.values())
    assert line["speedup"] == pytest.approx(float(np.median([v["speedup"] for v in paired.values()])), rel=1e-3)


def test_heat_strip_is_brightest_where_psnr_is_worst(report_runs, tmp_path):
    page = tmp_path / "r.html"
    s = as_json(report(report_runs["teacache"], "--against", report_runs["none"], "--out", page, "--json"))
    v = next(v for v in s["videos"] if "reference" in v)
    files = tmp_path / "r_files"
    (strip_path,) = [p for p in files.glob("*-vs-*.png") if p.name.startswith(Path(v["mp4"]).stem)]
    strip = np.asarray(Image.open(strip_path).convert("RGB")).astype(float)
    frames = read_mp4(v["mp4"]).shape[0]
    cell = strip.shape[1] // frames
    assert strip.shape == (images.STRIP_HEIGHT, cell * frames, 3) and cell == images.STRIP_HEIGHT  # square frames
    heat = [strip[:, i * cell:(i + 1) * cell].mean() for i in range(frames)]
    a, b = read_mp4(v["reference"]["mp4"]) / 255, read_mp4(v["mp4"]) / 255
    per_frame = metrics.psnr_frames(a, b)
    assert heat[int(np.argmin(per_frame))] > heat[int(np.argmax(per_frame))]
    posters = sorted(files.glob("*.jpg"))
    assert len(posters) == 7  # this folder's four and the three references
    for p in posters:
        assert Image.open(p).size == (96, 96)


def test_folder_tree_with_bench_and_two_caches(report_runs, tmp_path):
    s = as_json(report(report_runs["root"], "--out", tmp_path / "all.html", "--json"))
    assert s["problems"] == []
    assert sorted(c["cache"] for c in s["caches"]) == ["none", "teacache.fast"]
    assert all(c["videos"] == 4 and c["done"] == 4 for c in s["caches"])
    assert {Path(v["dir"]).name for v in s["videos"]} == {"none", "teacache"}  # relative to the page's folder
    assert all(Path(tmp_path / v["dir"], Path(v["mp4"]).name).is_file() for v in s["videos"])
    (bench,) = s["bench"]
    assert [r["method"] for r in bench["rows"]] == ["none", "teacache"] and bench["png"].endswith("pareto.png")
    html = (tmp_path / "all.html").read_text()
    assert html.count("</script>") == 2  # the prompt with '</script>' in it stays inside the data
    assert "<!-- <b>" not in html


def test_two_caches_against_one_reference(report_runs, tmp_path):
    root = tmp_path / "renders"
    shutil.copytree(report_runs["root"], root)
    shutil.copytree(root / "teacache", root / "teacache-again")
    s = as_json(report(root, "--against", root / "none", "--json"))
    paired = [v for v in s["videos"] if "reference" in v]
    assert len(paired) == 6 and {Path(v["dir"]).name for v in paired} == {"teacache", "teacache-again"}
    assert all(prompt_of(v["name"]) == prompt_of(v["reference"]["name"]) for v in paired)
    assert sorted(prompt_of(u["name"]) for u in s["unpaired"]["here"]) == ["E", "E"]
    assert [prompt_of(u["name"]) for u in s["unpaired"]["against"]] == ["D"]
    assert not any(Path(v["dir"]).name == "none" for v in s["videos"])  # the reference run is not its own video


def test_default_page_beside_the_videos(report_runs, tmp_path):
    folder = tmp_path / "none"
    shutil.copytree(report_runs["none"], folder)
    r = report(folder)
    assert r.exit_code == 0, r.output
    assert (folder / "report.html").is_file() and len(list((folder / "report_files").glob("*.jpg"))) == 4
    assert "wrote" in r.stderr and r.stdout == ""
    again = report(folder, "--json")  # its own report_files/ is not read as foreign JSON
    assert as_json(again)["problems"] == []


def _bad_folder(report_runs, tmp_path) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path / "bad"
    shutil.copytree(report_runs["none"], folder)
    names = sorted(reports(folder))
    gone = folder / f"{names[0]}.mp4"
    gone.unlink()
    broken_mp4 = folder / f"{names[1]}.mp4"
    broken_mp4.write_bytes(b"not an mp4 at all")
    (folder / "foreign.json").write_text(json.dumps({"hello": "world"}))
    (folder / "broken.json").write_text('{"name": "x", ')
    run = json.loads((folder / "run.json").read_text())
    run["videos"].append({"name": "0009-ran-out-0", "status": "failed", "error": "out of memory on cuda: try fewer"})
    next(r for r in run["videos"] if r["name"] == names[2])["status"] = "skipped"
    (folder / "run.json").write_text(json.dumps(run))
    return folder, {"gone": gone, "broken_mp4": broken_mp4, "foreign": folder / "foreign.json",
                    "broken": folder / "broken.json"}


def test_run_summaries_in_runs_folder_and_a_pointer(report_runs, tmp_path):
    """Run summaries may live in runs/ with run.json pointing at the latest: the latest word on a
    video counts, and a run.json of another shape is no problem."""
    folder = tmp_path / "farm"
    shutil.copytree(report_runs["none"], folder)
    run = json.loads((folder / "run.json").read_text())
    (folder / "runs").mkdir(exist_ok=True)  # gen keeps its own summaries there too
    old = run | {"videos": run["videos"] + [{"name": "0042-gone-0", "status": "failed", "error": "first try"}]}
    (folder / "runs" / "1-shard0.json").write_text(json.dumps(old))
    (folder / "runs" / "2-shard0.json").write_text(json.dumps(
        run | {"videos": [{"name": "0042-gone-0", "status": "failed", "error": "second try"}]}))
    os.utime(folder / "runs" / "1-shard0.json", ns=(1, 1))
    (folder / "run.json").write_text(json.dumps({"latest": "runs/2-shard0.json"}))
    s = as_json(report(folder, "--json"))
    assert s["problems"] == []
    (failed,) = [v for v in s["videos"] if v["status"] == "failed"]
    assert failed["error"] == "second try" and s["counts"]["done"] == 4


def test_bad_input_one_line_each_page_still_built(report_runs, tmp_path):
    folder, bad = _bad_folder(report_runs, tmp_path)
    r = report(folder, "--json")
    s = as_json(r)
    assert s["counts"] == {"done": 2, "skipped": 1, "failed": 1, "missing": 1}
    for what, path in bad.items():
        lines = [ln for ln in r.stderr.splitlines() if str(path) in ln]
        assert len(lines) == 1, (what, r.stderr)
    assert len(s["problems"]) == 4 and (folder / "report.html").is_file()
    failed = next(v for v in s["videos"] if v["status"] == "failed")
    assert failed["name"] == "0009-ran-out-0" and failed["error"].startswith("out of memory")
    assert failed["cache"] == "none"  # from the run summary it came from


@pytest.mark.parametrize("case", ["no-folder", "empty", "only-foreign", "against-missing", "against-empty",
                                  "against-itself", "out-folder", "out-suffix"])
def test_usage_errors_exit_2_one_line(report_runs, tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    good = report_runs["none"]
    if case == "only-foreign":
        (empty / "x.json").write_text("[1, 2]")
    args = {"no-folder": [tmp_path / "nope"], "empty": [empty], "only-foreign": [empty],
            "against-missing": [good, "--against", tmp_path / "nope"], "against-empty": [good, "--against", empty],
            "against-itself": [good, "--against", good], "out-folder": [good, "--out", tmp_path / "no" / "r.html"],
            "out-suffix": [good, "--out", tmp_path / "r.txt"]}[case]
    r = report(*args)
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.output


def test_rebuild_decodes_nothing_already_made(report_runs, tmp_path, monkeypatch):
    page = tmp_path / "r.html"
    first = as_json(report(report_runs["teacache"], "--against", report_runs["none"], "--out", page, "--json"))

    def refuse(*a, **k):
        raise AssertionError("decoded an MP4 again")

    monkeypatch.setattr("vidcache.video.read_mp4", refuse)
    monkeypatch.setattr(images, "middle_frame", refuse)
    second = as_json(report(report_runs["teacache"], "--against", report_runs["none"], "--out", page, "--json"))
    assert second["videos"] == first["videos"] and second["problems"] == []


def test_pair_key_ignores_cache_place_and_name_only(report_runs):
    mine, theirs = reports(report_runs["teacache"]), reports(report_runs["none"])

    def key(r):
        return pair_key(r["job"], r["model"], r["dtype"])

    a_mine = next(r for n, r in mine.items() if prompt_of(n) == "A")
    a_theirs = next(r for n, r in theirs.items() if prompt_of(n) == "A")
    assert a_mine["job"]["index"] != a_theirs["job"]["index"] and a_mine["job_key"] != a_theirs["job_key"]
    assert key(a_mine) == key(a_theirs)
    assert key(a_mine) != pair_key(a_mine["job"] | {"seed": 6}, a_mine["model"], a_mine["dtype"])
    assert key(a_mine) != pair_key(a_mine["job"], a_mine["model"] | {"name": "wan"}, a_mine["dtype"])
    assert len({key(r) for r in mine.values()}) == 4

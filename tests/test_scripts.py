"""The batch scripts users copy, run for real on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--frames", "5", "--height", "32", "--width", "32", "--steps", "2"]


def run_script(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, VIDCACHE=f"{sys.executable} -m vidcache", HF_HUB_OFFLINE="1")
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def prompt_dir(tmp_path) -> Path:
    d = tmp_path / "prompts"
    d.mkdir()
    (d / "animals.txt").write_text("a red ball\n# skipped\na blue box\n")
    (d / "shapes.jsonl").write_text(json.dumps({"prompt": "a green circle", "name": "circle"}) + "\n")
    return d


def test_render_folder_renders_every_file(prompt_dir, tmp_path):
    r = run_script("render_folder.sh", prompt_dir, tmp_path / "out", *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name[:-len("-01234567.mp4")] for p in (tmp_path / "out" / "animals").glob("*.mp4")) == [
        "a-blue-box-0", "a-red-ball-0"]
    assert [p.name for p in (tmp_path / "out" / "shapes").glob("*.mp4")] == ["circle.mp4"]


def test_render_folder_stops_on_usage_error(prompt_dir, tmp_path):
    (prompt_dir / "0-broken.jsonl").write_text("{not json\n")
    r = run_script("render_folder.sh", prompt_dir, tmp_path / "out", *SMALL, cwd=tmp_path)
    assert r.returncode == 2
    assert "0-broken.jsonl:1: malformed JSON" in r.stderr and "stopping" in r.stderr
    assert not (tmp_path / "out" / "animals").exists()  # stopped before the next file


def test_compare_caches_one_folder_per_method(prompt_dir, tmp_path):
    from vidcache.caches import METHOD_NAMES

    methods = " ".join(METHOD_NAMES[:2])
    r = run_script("compare_caches.sh", prompt_dir / "animals.txt", tmp_path / "cmp", methods, *SMALL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for m in METHOD_NAMES[:2]:
        assert len(list((tmp_path / "cmp" / m).glob("*.mp4"))) == 2
        assert m in r.stdout


def test_docs_cache_memory_table_is_the_presets_own():
    """docs/benchmarks.md's memory table is what users read before renting a GPU: it must be what
    the presets' parameters give today (it once used MixCache's default window, twice the preset's)."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "cache_memory_table.py")],
                         capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 6 and "mixcache" in rows[0]
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    missing = [row for row in rows if row not in docs]
    assert not missing, "docs/benchmarks.md is stale; rerun scripts/cache_memory_table.py:\n" + "\n".join(missing)

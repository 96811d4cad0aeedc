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


def run_script(name: str, *args, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VIDCACHE=f"{sys.executable} -m vidcache", HF_HUB_OFFLINE="1") | env
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


def _script_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_front_finds_the_peers_front(tmp_path):
    plot = _script_module("plot_front")
    points = [(0.5, 30.0), (0.6, 40.0), (0.55, 29.0), (0.8, 50.0), (0.9, 45.0)]
    line = plot.front(points)
    assert line == [(0.5, 30.0), (0.6, 40.0), (0.8, 50.0)]  # (0.55, 29) and (0.9, 45) are beaten
    assert plot.front_psnr(line, 0.7) == pytest.approx(45.0) and plot.front_psnr(line, 0.95) == 50.0
    assert plot.front_psnr(line, 0.4) is None
    rows = [{"method": "x", "preset": "a", "compute_ratio": c, "psnr": p, "psnr_min": p - 1, "psnr_median": p}
            for c, p in points] + [{"method": "teacache", "preset": "default", "compute_ratio": 0.7, "psnr": 46.0,
                                    "psnr_min": 40.0, "psnr_median": 46.0}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_front.py"), str(tmp_path / "rows.json"),
                          "-o", str(tmp_path / "f.png")], capture_output=True, text=True, check=True).stdout
    assert "teacache: compute 0.700, PSNR 46.00 (front 45.00 dB, margin +1.00 dB)" in out
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_cachedit_says_what_is_missing(tmp_path):
    """cache-dit is an optional comparison: without it the script stops with one line and exit 2."""
    import importlib.util

    if importlib.util.find_spec("cache_dit") is not None:
        pytest.skip("cache-dit is installed here")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_cachedit.py"), "--prompts", "x.txt", "--out",
                        str(tmp_path / "o.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "cache-dit is not installed" in r.stderr
    assert "pip install --no-deps cache-dit" in r.stderr


def test_slurm_farm_refuses_outside_slurm(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_farm.sbatch"), "p.txt", str(tmp_path / "out")],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not inside a Slurm job" in r.stderr and "vidcache farm" in r.stderr
    assert not (tmp_path / "out").exists()


def test_slurm_farm_follows_the_ray_on_slurm_pattern():
    """What the script must do on a real allocation, which CI has not: the head on the first node,
    one `ray start --address` per other node by srun, then the driver with --address."""
    script = (ROOT / "scripts" / "slurm_farm.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "slurm_farm.sbatch")]).returncode == 0
    for needle in ('scontrol show hostnames "$SLURM_JOB_NODELIST"',
                   'srun --nodes=1 --ntasks=1 --nodelist="$head_node" hostname --ip-address',
                   '"${ray[@]}" start --head --node-ip-address="$head_ip" --port="$port"',
                   '--ntasks-per-node=1 --exclude="$head_node"',
                   '"${ray[@]}" start --address="$address"',
                   '"${vidcache[@]}" farm "$prompts" --out "$out" --address "$address" "$@"',
                   "export RAY_AUTH_MODE=token", "#SBATCH --signal=B:TERM@"):
        assert needle in script, needle


def test_slurm_farm_on_a_one_node_allocation(prompt_dir, tmp_path):
    """The whole script on this machine as a one-node allocation: srun and scontrol stand-ins run
    the step here, a real Ray head starts, the farm joins it by address, the head stops at the end."""
    import socket

    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text('#!/usr/bin/env bash\nwhile [[ $# -gt 0 && $1 == --* ]]; do shift; done\nexec "$@"\n')
    (shims / "scontrol").write_text('#!/usr/bin/env bash\n[[ "$1 $2" == "show hostnames" ]] && hostname\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    r = run_script("slurm_farm.sbatch", prompt_dir / "animals.txt", out, *SMALL, "--device", "cpu", "--workers", "1",
                   "--json", cwd=tmp_path, PATH=f"{shims}:{os.environ['PATH']}", SLURM_JOB_ID="1",
                   SLURM_JOB_NODELIST=socket.gethostname(), SLURM_CPUS_PER_TASK="1", GPUS_PER_NODE="0",
                   RAY_PORT=str(port), RAY=f"{sys.executable} -m ray.scripts.scripts")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["counts"]["done"] == 2 and summary["counts"]["failed"] == 0
    assert summary["farm"]["address"].endswith(f":{port}")
    assert sorted(p.name[:-len("-01234567.mp4")] for p in out.glob("*.mp4")) == ["a-blue-box-0", "a-red-ball-0"]

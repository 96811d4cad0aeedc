"""Context and CFG parallelism on CPU: 2 gloo processes must render what 1 process renders.

Each 2-rank check is a case run by this file itself as a torchrun worker (``python -m
torch.distributed.run --standalone --nproc_per_node=2 tests/test_parallel.py --worker SPEC OUT``):
one launch renders many cases on one process group, because starting two Python processes with
torch and diffusers costs more than all the tiny videos together. Every launch has a timeout, so a
rank waiting forever on a collective (a cache that made ranks disagree) fails the test instead of
hanging CI. The 1-rank references run in the pytest process through the same code path.

At 9 frames of 32 x 32 the tiny CogVideoX's joint sequence is 16 text + 12 video tokens, so under
2-rank Ulysses rank 0 holds text only and rank 1 mostly video: every cache must then agree across
ranks whose shares have nothing in common (this caught a per-rank decision in AdaCache's MoReg).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SMALL = {"frames": 9, "height": 32, "width": 32, "steps": 6}
PROMPT = "a red ball"  # shorter than text_len: HunyuanVideo's text mask has padding to hide
# A method's threshold, where it has one, is raised so that its data-dependent skips fire on these
# tiny runs (the presets' values are tuned for 50-step real models and often never fire here).
FIRING = {"thresh": 0.2, "threshold": 0.2}
# A rank left waiting in a collective (ranks that disagree) fails after COLLECTIVE_TIMEOUT; the
# whole launch is a backstop for anything else.
COLLECTIVE_TIMEOUT = 120
LAUNCH_TIMEOUT = 900


# --------------------------------------------------------------------------------------------
# Rendering cases (both in pytest and in the torchrun workers)
# --------------------------------------------------------------------------------------------


def run_cases(cases: list[dict], out: Path) -> None:
    """Render each case with vidcache's runner; rank 0 saves the frames (.npy) and the report."""
    import torch

    from vidcache import caches
    from vidcache.errors import UsageError
    from vidcache.jobs import Prompt
    from vidcache.loading import LoadOptions
    from vidcache.parallel import ParallelOptions
    from vidcache.runner import RunConfig, Runner, plan_run

    torch.manual_seed(0)
    for case in cases:
        method = case.get("cache", "none")
        fields = caches.method_fields(method) or set()
        sets = case.get("sets", ["defaults.text_len=16"]) + [f"{k}={v}" for k, v in FIRING.items() if k in fields]
        cfg = RunConfig(
            model=case["model"], cache=method, sets=sets, out=out, image=case.get("image"),
            flags=dict(SMALL) | case.get("flags", {}),
            parallel=ParallelOptions(ulysses=case.get("ulysses"), cfg=case.get("cfg", False)),
            load=LoadOptions(quantize=case.get("quantize", "none")),
        )
        plan = plan_run(cfg, [Prompt(PROMPT, {}, "test")])
        runner = Runner(plan)
        try:
            runner.load()
            frames, report = runner.generate(plan.jobs[0])
        except UsageError as err:  # refused after loading (a cache that cannot split): every rank alike
            if runner.is_main:
                (out / f"{case['id']}.json").write_text(json.dumps({"error": str(err)}))
            continue
        finally:
            runner.close()
        if runner.is_main:
            np.save(out / f"{case['id']}.npy", np.asarray(frames, dtype=np.float32))
            (out / f"{case['id']}.json").write_text(json.dumps(report))
            print(f"case {case['id']} done", file=sys.stderr, flush=True)


def _worker(spec: str, out: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    if json.loads(Path(spec).read_text())[0].get("cli"):
        return _cli_worker(json.loads(Path(spec).read_text())[0])
    dist.init_process_group("gloo", timeout=timedelta(seconds=COLLECTIVE_TIMEOUT))
    try:
        run_cases(json.loads(Path(spec).read_text()), Path(out))
    finally:
        dist.destroy_process_group()


def _cli_worker(spec: dict) -> None:
    """`vidcache gen` as users launch it, with the video of ``fail_prompt`` raising on ``fail_ranks``."""
    from vidcache import runner as runner_mod
    from vidcache.cli import app

    real = runner_mod.Runner.generate

    def generate(self, job):
        if job.prompt == spec["fail_prompt"] and int(os.environ["RANK"]) in spec["fail_ranks"]:
            raise RuntimeError("injected failure")
        return real(self, job)

    runner_mod.Runner.generate = generate
    app(spec["cli"])


def launch(cases: list[dict], tmp: Path, nproc: int = 2) -> Path:
    """Run ``cases`` on ``nproc`` gloo ranks; returns the folder with rank 0's results."""
    out = tmp / "ranks"
    out.mkdir(parents=True, exist_ok=True)
    spec = tmp / "cases.json"
    spec.write_text(json.dumps(cases))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           __file__, "--worker", str(spec), str(out)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                              start_new_session=True)
    except subprocess.TimeoutExpired as err:
        done = [ln for ln in (err.stderr or b"").decode(errors="replace").splitlines() if ln.startswith("case ")]
        pytest.fail(f"2-rank launch still running after {LAUNCH_TIMEOUT}s; last: {done[-1:]}")
    if proc.returncode != 0:  # the failing rank's own traceback comes first, torchrun's summary last
        tails = ["\n".join([ln for ln in proc.stderr.splitlines() if ln.startswith(f"[rank{r}]")][-12:])
                 for r in range(nproc)]
        pytest.fail("2-rank launch failed:\n" + "\n".join(tails) + "\n" + proc.stderr[-1500:])
    return out


def load(folder: Path, case_id: str) -> tuple[np.ndarray, dict]:
    report = json.loads((folder / f"{case_id}.json").read_text())
    assert "error" not in report, report["error"]
    return np.load(folder / f"{case_id}.npy"), report


def same_decisions(one: list[dict], two: list[dict]) -> None:
    """Per-step records agree: every decision exactly, the metrics behind them to rounding (each rank
    sums its own part of the sequence before the all-reduce, so the last digits differ)."""
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert a.keys() == b.keys(), (a, b)
        for key in a:
            if isinstance(a[key], float) and isinstance(b[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)


def methods() -> list[str]:
    from vidcache.caches import METHOD_NAMES

    return [m for m in METHOD_NAMES if m != "none"]


FAMILIES = ("wan", "cogvideox", "hunyuan")


# --------------------------------------------------------------------------------------------
# One 2-rank launch for the whole matrix
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def matrix(tiny_dirs, tmp_path_factory):
    """Every case rendered on 1 rank (here) and on 2 ranks (one torchrun launch)."""
    tmp = tmp_path_factory.mktemp("parallel")
    single, double = [], []
    for fam in FAMILIES:
        single.append({"id": f"{fam}-none", "model": tiny_dirs[fam]})
        double.append({"id": f"{fam}-none", "model": tiny_dirs[fam], "ulysses": 2})
        for method in methods():
            single.append({"id": f"{fam}-{method}", "model": tiny_dirs[fam], "cache": method})
            double.append({"id": f"{fam}-{method}", "model": tiny_dirs[fam], "cache": method, "ulysses": 2})
    double.append({"id": "wan-cfg", "model": tiny_dirs["wan"], "cfg": True})
    for method in methods():
        double.append({"id": f"wan-cfg-{method}", "model": tiny_dirs["wan"], "cache": method, "cfg": True})
    double.append({"id": "cogvideox-cfg", "model": tiny_dirs["cogvideox"], "cfg": True})
    double.append({"id": "wan2-none", "model": tiny_dirs["wan2"], "ulysses": 2})
    single.append({"id": "wan2-none", "model": tiny_dirs["wan2"]})
    # image-to-video (Wan 2.1 I2V keeps its 512 text tokens; CogVideoX-5B-I2V its 64 x 64 size)
    from PIL import Image

    image = tmp / "image.png"
    Image.new("RGB", (48, 40), (200, 40, 40)).save(image)
    for name, extra in (("wan-i2v", {"sets": []}), ("wan2-i2v", {}), ("wan-ti2v", {}),
                        ("cogvideox-i2v", {"flags": {"height": 64, "width": 64}})):
        case = {"model": tiny_dirs[name], "image": str(image), **extra}
        single.append({"id": f"{name}-none", **case})
        double.append({"id": f"{name}-none", **case, "ulysses": 2})
        single.append({"id": f"{name}-teacache", **case, "cache": "teacache"})
        double.append({"id": f"{name}-teacache", **case, "cache": "teacache", "ulysses": 2})
    double.append({"id": "wan-i2v-cfg", "model": tiny_dirs["wan-i2v"], "image": str(image), "sets": [], "cfg": True})
    for fam, method in QUANTIZED:  # --quantize int8 under context parallelism
        case = {"id": f"{fam}-int8-{method}", "model": tiny_dirs[fam], "cache": method, "quantize": "int8"}
        single.append(case)
        double.append({**case, "ulysses": 2})
    ref = tmp / "single"
    ref.mkdir()
    run_cases(single, ref)
    return ref, launch(double, tmp)


@pytest.mark.parametrize("family", [*FAMILIES, "wan2"])
def test_ulysses_two_ranks_equals_one(matrix, family):
    ref, par = matrix
    one, rep1 = load(ref, f"{family}-none")
    two, rep2 = load(par, f"{family}-none")
    assert one.shape == two.shape
    assert np.abs(one - two).max() <= 1e-5
    assert rep2["parallel"]["world_size"] == 2 and rep2["parallel"]["ulysses"] == 2
    assert len(rep2["parallel"]["peak_bytes_per_rank"]) == 2 and "parallel" not in rep1


@pytest.mark.parametrize("name", ["wan-i2v", "wan2-i2v", "wan-ti2v", "cogvideox-i2v"])
def test_image_to_video_two_ranks_equal_one(matrix, name):
    """Ulysses over 2 ranks renders the image-to-video pipelines as 1 rank does, uncached and with
    TeaCache deciding the same on both."""
    ref, par = matrix
    one, _ = load(ref, f"{name}-none")
    two, rep = load(par, f"{name}-none")
    assert rep["image"]["sha256"] and rep["parallel"]["ulysses"] == 2
    assert np.abs(one - two).max() <= 1e-4
    one, rep1 = load(ref, f"{name}-teacache")
    two, rep2 = load(par, f"{name}-teacache")
    same_decisions(rep1["cache"]["stats"]["per_step"], rep2["cache"]["stats"]["per_step"])
    assert np.abs(one - two).max() <= 1e-4


def test_image_to_video_cfg_parallel(matrix):
    ref, par = matrix
    one, _ = load(ref, "wan-i2v-none")
    two, rep = load(par, "wan-i2v-cfg")
    assert rep["parallel"]["cfg"] == 2 and np.abs(one - two).max() <= 1e-5


@pytest.mark.parametrize(("family", "tolerance"), [("wan", 1e-5), ("cogvideox", 1e-4)])
def test_cfg_parallel_equals_sequential_cfg(matrix, family, tolerance):
    """Wan's cond and uncond forwards are the same computations on either rank: exact. CogVideoX's
    batched [uncond, cond] forward becomes two batch-1 forwards, whose matrix products round
    differently from one batch-2 product (about 2e-5 here)."""
    ref, par = matrix
    one, _ = load(ref, f"{family}-none")
    two, rep = load(par, f"{family}-cfg")
    assert np.abs(one - two).max() <= tolerance
    assert rep["parallel"] == rep["parallel"] | {"world_size": 2, "ulysses": 1, "ring": 1, "cfg": 2}


@pytest.mark.parametrize("method", methods())
def test_cfg_parallel_caches_agree_or_are_refused(matrix, method):
    """Under --cfg-parallel on Wan each branch's cache lives on its own rank: a method keeping its
    state per branch decides as one process does; one sharing state between the branches is refused."""
    ref, par = matrix
    result = json.loads((par / f"wan-cfg-{method}.json").read_text())
    if "error" in result:
        assert "shares state between the cond and uncond branches" in result["error"]
        return
    one, rep1 = load(ref, f"wan-{method}")
    two, rep2 = load(par, f"wan-cfg-{method}")
    same_decisions(rep1["cache"]["stats"]["per_step"], rep2["cache"]["stats"]["per_step"])
    assert rep2["cache"]["stats"]["compute_ratio"] == pytest.approx(rep1["cache"]["stats"]["compute_ratio"])
    assert np.abs(one - two).max() <= 1e-4


@pytest.mark.parametrize("method", methods())
@pytest.mark.parametrize("family", FAMILIES)
def test_cache_same_decisions_on_two_ranks(matrix, family, method):
    ref, par = matrix
    one, rep1 = load(ref, f"{family}-{method}")
    two, rep2 = load(par, f"{family}-{method}")
    steps1, steps2 = rep1["cache"]["stats"]["per_step"], rep2["cache"]["stats"]["per_step"]
    assert steps1, "the cache recorded no forwards"
    same_decisions(steps1, steps2)
    assert np.abs(one - two).max() <= 1e-4


QUANTIZED = [("wan", "teacache"), ("wan", "pab"), ("hunyuan", "teacache")]


@pytest.mark.parametrize(("family", "method"), QUANTIZED)
def test_int8_quantized_two_ranks_equal_one(matrix, family, method):
    """Each rank quantizes its copy of the weights alike: 2 ranks still render what 1 renders, with
    the same cache decisions (HunyuanVideo's TeaCache indicator runs through a quantized layer)."""
    ref, par = matrix
    one, rep1 = load(ref, f"{family}-int8-{method}")
    two, rep2 = load(par, f"{family}-int8-{method}")
    assert rep1["quantize"]["mode"] == rep2["quantize"]["mode"] == "int8"
    same_decisions(rep1["cache"]["stats"]["per_step"], rep2["cache"]["stats"]["per_step"])
    assert np.abs(one - two).max() <= 1e-4
    plain, _ = load(ref, f"{family}-{method}")
    assert not np.array_equal(one, plain)  # the quantization did something


@pytest.mark.parametrize(("ulysses", "ring"), [(2, 1), (4, 1), (1, 2), (1, 4), (2, 2)])
def test_joint_text_mask_counts_each_text_key_once(ulysses, ring):
    """HunyuanVideo's replicated text, checked without a GPU: the keys one attention call sees under
    Ulysses x ring (every rank's [video share, all text], Ulysses copies side by side, each ring
    chunk under the same mask) give the attention of one process over [video, text]."""
    import torch
    import torch.nn.functional as F

    from vidcache.models.hunyuan_cp import joint_text_mask

    torch.manual_seed(0)
    p, n_video, n_text, valid, dim = ulysses * ring, 24, 6, 4, 8
    video_k, video_v = torch.randn(n_video, dim), torch.randn(n_video, dim)
    text_k, text_v = torch.randn(n_text, dim), torch.randn(n_text, dim)
    query = torch.randn(5, dim)
    text_ok = torch.arange(n_text) < valid  # padded text after `valid` tokens
    reference = F.scaled_dot_product_attention(
        query[None], torch.cat([video_k, text_k])[None], torch.cat([video_v, text_v])[None],
        attn_mask=torch.cat([torch.ones(n_video, dtype=torch.bool), text_ok])[None])[0]

    share = n_video // p
    local = torch.cat([torch.ones(share, dtype=torch.bool), text_ok]).reshape(1, 1, 1, -1)
    mask = joint_text_mask(local, n_text, ulysses, ring, torch.float32)
    keys, values = [], []
    for r in range(ring):  # ring chunk r: the Ulysses ranks' [video share, text], side by side
        for u in range(ulysses):
            i = r * ulysses + u
            keys += [video_k[i * share:(i + 1) * share], text_k]
            values += [video_v[i * share:(i + 1) * share], text_v]
    masks = mask.reshape(-1).repeat(ring)
    if masks.dtype == torch.bool:
        masks = torch.zeros(masks.shape).masked_fill(~masks, float("-inf"))
    out = F.scaled_dot_product_attention(query[None], torch.cat(keys)[None], torch.cat(values)[None],
                                         attn_mask=masks[None])[0]
    assert torch.allclose(out, reference, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Splits that cannot work: one line, exit 2, nothing loaded
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("world", "model", "args", "message"),
    [
        (1, "wan", ["--ulysses", "2"], "need 2 processes: launch with `torchrun --nproc_per_node=2"),
        (2, "wan", ["--ulysses", "3"], "world size 2 != ulysses 3 x ring 1 x cfg 1 = 3; with 2 processes use "
                                       "--ulysses 2"),
        (4, "wan", ["--ulysses", "4", "--cfg-parallel"], "with 4 processes use --ulysses 2 --cfg-parallel"),
        (4, "wan", ["--ulysses", "4"], "its 2 attention heads do not divide by Ulysses degree 4"),
        (2, "wan", ["--ring", "2"], "ring attention needs an attention backend that returns the log-sum-exp"),
        (2, "wan", ["--height", "48", "--width", "48"], "3x3x3 = 27 video tokens, not divisible by ulysses x ring = 2"),
        (2, "hunyuan", ["--cfg-parallel"], "is guidance-distilled"),
        (2, "wan", ["--cfg-parallel", "--guidance", "1"], "has guidance <= 1"),
        (2, "cogvideox", ["--set", "defaults.text_len=15"], "15 text + 3x4x4 = 48 video tokens make 63"),
        (2, "wan", ["--attention", "xformers"], "no context parallel support"),
    ],
)
def test_invalid_split_fails_before_loading(tiny_dirs, tmp_path, no_loading, world, model, args, message):
    from typer.testing import CliRunner

    from vidcache.cli import app

    no_loading.setenv("WORLD_SIZE", str(world))
    no_loading.setenv("RANK", "0")
    r = CliRunner().invoke(app, ["gen", "--model", tiny_dirs[model], "-p", PROMPT, "--out", str(tmp_path),
                                 "--frames", "9", "--height", "64", "--width", "64", "--set",
                                 "defaults.text_len=16", *args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in " ".join(r.output.split()), r.output
    assert not list(tmp_path.glob("*.mp4"))


# --------------------------------------------------------------------------------------------
# The command users run
# --------------------------------------------------------------------------------------------


def test_torchrun_gen_writes_once_and_resumes(tiny_dirs, tmp_path):
    """`torchrun -m vidcache gen`, launched by scripts/slurm_render.sbatch as it runs outside Slurm:
    one MP4 and report (rank 0 only) with `parallel` in it; a second launch skips the finished video
    on every rank; a bad split prints its line once (rank 0) and exits 2."""
    root = Path(__file__).resolve().parents[1]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPT + "\n")
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(root), GPUS_PER_NODE="2",
               TORCHRUN=f"{sys.executable} -m torch.distributed.run")
    env.pop("SLURM_JOB_ID", None)
    small = ["--model", tiny_dirs["wan"], "--frames", "9", "--height", "32", "--width", "32", "--steps", "3",
             "--set", "defaults.text_len=16"]

    def run(*extra):
        cmd = ["bash", str(root / "scripts" / "slurm_render.sbatch"), str(prompts), str(out), *small, *extra]
        try:
            return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
                                  start_new_session=True)
        except subprocess.TimeoutExpired:
            pytest.fail("torchrun launch hung")

    first = run("--cfg-parallel", "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)  # only rank 0 printed it
    assert summary["counts"] == {"done": 1, "skipped": 0, "claimed": 0, "failed": 0, "interrupted": 0}
    reports = [p for p in out.glob("*.json") if p.name != "run.json" and not p.name.startswith(".")]
    assert len(reports) == 1 and len(list(out.glob("*.mp4"))) == 1
    rep = json.loads(reports[0].read_text())
    assert rep["parallel"]["cfg"] == 2 and len(rep["parallel"]["peak_bytes_per_rank"]) == 2
    second = run("--cfg-parallel", "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["counts"] == {"done": 0, "skipped": 1, "claimed": 0, "failed": 0, "interrupted": 0}
    bad = run("--ulysses", "3")
    assert bad.returncode != 0
    assert bad.stderr.count("world size 2 != ulysses 3") == 1, bad.stderr[-3000:]
    assert "exitcode  : 2" in bad.stderr, bad.stderr[-3000:]  # torchrun may stop the other rank first


@pytest.mark.parametrize("fail_ranks", [[1], [0, 1]], ids=["one-rank", "every-rank"])
def test_failed_video_under_torchrun(tiny_dirs, tmp_path, fail_ranks):
    """A video that fails on every rank is failed on all and the batch goes on; one that fails on one
    rank only leaves the others inside it, so the launch stops within VIDCACHE_RANK_WAIT_S (not
    after the collective's timeout, minutes), saying which rank and why, with exit code 3 from that
    rank, and keeps the videos finished before it (a rerun resumes)."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball\na blue box\na green circle\n")
    out = tmp_path / "out"
    args = ["gen", str(prompts), "--model", tiny_dirs["wan"], "--ulysses", "2", "--frames", "9", "--height", "32",
            "--width", "32", "--steps", "3", "--set", "defaults.text_len=16", "-o", str(out), "--json"]
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps([{"cli": args, "fail_prompt": "a blue box", "fail_ranks": fail_ranks}]))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]), VIDCACHE_RANK_WAIT_S="5")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           "--worker", str(spec), str(tmp_path)]
    try:  # far below the main group's 30-minute timeout: a launch that waits on it fails here
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, start_new_session=True)
    except subprocess.TimeoutExpired:
        pytest.fail("a failed video left the launch waiting")
    mp4s = sorted(p.name for p in out.glob("*.mp4"))
    assert len(mp4s) == (2 if len(fail_ranks) == 2 else 1), (mp4s, proc.stderr[-3000:])
    assert any("red" in m for m in mp4s)  # the video before the failing one is kept
    if len(fail_ranks) == 2:
        assert proc.returncode == 1, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        assert summary["counts"] == {"done": 2, "skipped": 0, "claimed": 0, "failed": 1, "interrupted": 0}
        assert [v["status"] for v in summary["videos"]] == ["done", "failed", "done"]
        assert summary["videos"][1]["error"] == "RuntimeError: injected failure"
    else:
        assert proc.returncode != 0
        assert "exitcode  : 3" in proc.stderr, proc.stderr[-3000:]
        assert "rank 1: RuntimeError: injected failure; the ranks could not agree" in proc.stderr, \
            proc.stderr[-3000:]


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3])


def test_the_chosen_attention_backend_reaches_processors_put_in_place_for_cp(tiny_dirs, monkeypatch):
    """CogVideoX's context-parallel processors replace the model's own: `--attention` must be set
    on them afterwards (it was set on the replaced ones only, so Ulysses ran SDPA whatever was asked)."""
    from conftest import load_pipe

    from vidcache.parallel import ParallelPlan, ParallelRun

    tr = load_pipe(tiny_dirs["cogvideox"]).transformer
    seen = []
    monkeypatch.setattr(type(tr), "set_attention_backend",
                        lambda self, name: seen.append((name, {type(m.processor).__name__ for m in self.modules()
                                                               if hasattr(m, "processor")})))
    monkeypatch.setattr(type(tr), "enable_parallelism", lambda self, config, cp_plan: None)
    monkeypatch.setattr("vidcache.models.cogvideox.CogVideoXAdapter.finish_cp", lambda *a: None)
    run = ParallelRun.__new__(ParallelRun)
    run.plan = ParallelPlan(2, 2, 1, 1, "cogvideox", "batched", attention="flash")
    run._enable_cp(tr, config=None)
    assert seen == [("flash", {"CogVideoXAttnProcessorCP"})]

"""Prompt files to a list of Jobs: one video each, every parameter resolved and checked, a unique name.

A job's ``key`` hashes everything that decides its pixels (every field but its place, name and
source line) with the run's context (model, dtype, cache), so a rerun can tell a finished video
from one made with other settings. The default output name carries the key's first 8 hex digits
beside a readable slug, so different jobs never share a file name in one folder. A new input (an
image for image-to-video) is a new ``Job`` field: it enters the key, and so the name, by itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import unicodedata
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import UsageError
from .outputs import RESERVED

JSONL_KEYS = {"prompt", "negative_prompt", "seed", "frames", "height", "width", "steps", "guidance", "name", "image"}
PER_LINE = ("frames", "height", "width", "steps", "guidance", "negative_prompt")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
DEFAULT_SEED = 0  # the seed of a job whose line has none when --seed is not given
NOT_IN_KEY = ("index", "name", "where", "image")  # every other field decides the pixels (image: by its hash)

# the range of every number a job takes, and the flag that changes it (checked before loading)
INT_RANGES: dict[str, tuple[int, int, str]] = {
    "seed": (0, 2**64 - 1, "--seed"),  # what torch.Generator.manual_seed takes
    "frames": (1, 10_000, "--frames"),
    "height": (1, 8192, "--height"),
    "width": (1, 8192, "--width"),
    "steps": (1, 10_000, "--steps"),
    "fps": (1, 240, "--fps"),
    "text_len": (1, 4096, "--set defaults.text_len=N"),
}
FLOAT_RANGES: dict[str, tuple[float, float, str]] = {
    "guidance": (0.0, 100.0, "--guidance"),
    "guidance_2": (0.0, 100.0, "--set defaults.guidance_2=X"),
    "flow_shift": (0.0, 100.0, "--flow-shift"),  # above 0: a shift of 0 collapses the schedule
}


@dataclass(frozen=True)
class Prompt:
    """One entry of a prompt source, before defaults are applied."""

    text: str
    overrides: dict[str, Any]
    where: str  # "prompts.jsonl:3", for error messages


@dataclass(frozen=True)
class Job:
    index: int
    name: str  # "" until ``name_jobs`` gives the default name
    prompt: str
    negative_prompt: str
    seed: int
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    guidance_2: float | None
    flow_shift: float | None
    fps: int
    text_len: int
    image: str | None = None  # image-to-video: the conditioning image (absolute path)
    image_sha256: str | None = None
    fit: str | None = None  # how the image is fitted to the frame ("crop", "pad", "stretch")
    where: str = field(default="", compare=False)  # "prompts.jsonl:3", for error messages

    def key(self, context: dict[str, Any]) -> str:
        """Stable hash of what decides the job's pixels and what else decides its output (model,
        cache, dtype): not its place in the prompt file, its name or its source line. An image
        counts by its bytes and fit, not its path (a moved image is the same job, an edited one not);
        text-to-video jobs hash without the image fields."""
        job = {k: v for k, v in asdict(self).items() if k not in NOT_IN_KEY}
        if self.image is None:
            del job["image_sha256"], job["fit"]
        blob = json.dumps({"job": job, **context}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def pair_key(job: dict[str, Any], model: dict[str, Any], dtype: str | None) -> str:
    """Stable hash of what decides a video apart from its cache, from a report's ``job``, ``model`` and
    ``dtype``: two runs of one prompt file with different caches pair by it (``vidcache report
    --against``). A job's place in its batch and its output name are left out, and the model counts by
    name and family, not by the folder it was loaded from."""
    blob = json.dumps({"job": {k: v for k, v in job.items() if k not in ("index", "name")},
                       "model": [model.get("name"), model.get("family")], "dtype": dtype}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_source(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"prompt file {path} not found")
    try:
        return p.read_text(encoding="utf-8"), p.name
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"prompt file {path}: cannot read ({err})") from None


def _parse_jsonl(text: str, where: str, base: Path) -> list[Prompt]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{where}:{n}: malformed JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{where}:{n}: expected a JSON object")
        unknown = set(obj) - JSONL_KEYS
        if unknown:
            raise UsageError(
                f"{where}:{n}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(sorted(JSONL_KEYS))})"
            )
        prompt = obj.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f"{where}:{n}: 'prompt' must be a non-empty string")
        for key, typ in (("seed", int), ("frames", int), ("height", int), ("width", int), ("steps", int)):
            if key in obj and (isinstance(obj[key], bool) or not isinstance(obj[key], typ)):
                raise UsageError(f"{where}:{n}: '{key}' must be an integer")
        if "guidance" in obj and (isinstance(obj["guidance"], bool) or not isinstance(obj["guidance"], (int, float))):
            raise UsageError(f"{where}:{n}: 'guidance' must be a number")
        for key in ("negative_prompt", "name", "image"):
            if key in obj and not isinstance(obj[key], str):
                raise UsageError(f"{where}:{n}: '{key}' must be a string")
        overrides = {k: v for k, v in obj.items() if k != "prompt"}
        if "image" in overrides:  # relative to the prompt file's folder
            if not overrides["image"].strip():
                raise UsageError(f"{where}:{n}: 'image' must not be empty")
            overrides["image"] = str(base / Path(overrides["image"]).expanduser())
        out.append(Prompt(prompt.strip(), overrides, f"{where}:{n}"))
    return out


def _parse_txt(text: str, where: str) -> list[Prompt]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s and not s.startswith("#"):
            out.append(Prompt(s, {}, f"{where}:{n}"))
    return out


def read_prompts(path: str | None, inline: list[str]) -> list[Prompt]:
    """Prompts from ``--prompt`` flags, then from the file (``-`` = stdin; ``.jsonl`` = JSON lines)."""
    prompts = [Prompt(t.strip(), {}, f"--prompt #{i + 1}") for i, t in enumerate(inline) if t.strip()]
    if len(prompts) != len(inline):
        raise UsageError("--prompt must not be empty")
    if path is not None:
        text, where = _read_source(path)
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        is_jsonl = path.endswith(".jsonl") or (path == "-" and first.lstrip().startswith("{"))
        base = Path.cwd() if path == "-" else Path(path).resolve().parent
        found = _parse_jsonl(text, where, base) if is_jsonl else _parse_txt(text, where)
        if not found:
            raise UsageError(f"prompt file {path} has no prompts")
        prompts += found
    if not prompts:
        raise UsageError("no prompts: give a prompt file, '-' for stdin, or --prompt TEXT")
    return prompts


def slug(text: str, limit: int = 40) -> str:
    """A readable ASCII stem of a prompt: accents dropped (``Café`` -> ``cafe``), other scripts and
    emoji left out; ``video`` when nothing is left (the name's key hash keeps it unique)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    s = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return s[:limit].rstrip("-") or "video"


def safe_name(name: str, where: str) -> str:
    """A job's ``name``: a plain file stem, never a path outside ``--out``, never one of the names
    vidcache writes there itself (``run.json``, ``runs/``, ``report``; hidden files)."""
    cleaned = _SAFE_NAME.sub("-", name).strip("-.")
    if not cleaned:
        raise UsageError(f"{where}: name {name!r} has no usable characters")
    if cleaned.lower() in RESERVED:
        raise UsageError(f"{where}: name {name!r} is reserved: vidcache writes {', '.join(sorted(RESERVED))} in "
                         "--out itself; choose another")
    return cleaned[:120]


def build_jobs(prompts: list[Prompt], defaults: dict[str, Any], flags: dict[str, Any], seed: int | None,
               image: str | None = None, fit: str = "crop") -> list[Job]:
    """Resolve every job: preset defaults < per-line values < explicit command-line flags.

    Command-line flags win over a line's own values, because they are the user's latest word; so
    does ``seed`` when given (``--seed``; lines without a seed get ``DEFAULT_SEED`` otherwise), and
    ``image`` (``--image``) over a line's ``image``. Every value is checked (``check_values``) and
    every image opened and hashed here, before any weight loads (``images.check_image``; an error
    names the line). Names given by a line are kept (made safe); ``name_jobs`` gives the others.
    """
    from .images import check_fit, check_image

    check_fit(fit)
    checked: dict[str, Any] = {}
    jobs = []
    for i, p in enumerate(prompts):
        v = dict(defaults)
        v.update({k: p.overrides[k] for k in PER_LINE if k in p.overrides})
        v.update({k: val for k, val in flags.items() if val is not None})
        v["seed"] = seed if seed is not None else p.overrides.get("seed", DEFAULT_SEED)
        check_values(v, p.where)
        image_path = image if image is not None else p.overrides.get("image")
        info = None
        if image_path is not None:
            where = "--image" if image is not None else p.where
            info = checked.get(image_path) or check_image(image_path, where)
            checked[image_path] = info
        jobs.append(
            Job(
                index=i,
                name=safe_name(p.overrides["name"], p.where) if "name" in p.overrides else "",
                prompt=p.text,
                negative_prompt=v.get("negative_prompt", ""),
                seed=int(v["seed"]),
                frames=int(v["frames"]),
                height=int(v["height"]),
                width=int(v["width"]),
                steps=int(v["steps"]),
                guidance=float(v["guidance"]),
                guidance_2=float(v["guidance_2"]) if v.get("guidance_2") is not None else None,
                flow_shift=float(v["flow_shift"]) if v.get("flow_shift") is not None else None,
                fps=int(v["fps"]),
                text_len=int(v["text_len"]),
                image=info.path if info else None,
                image_sha256=info.sha256 if info else None,
                fit=fit if info else None,
                where=p.where,
            )
        )
    return jobs


def check_values(values: dict[str, Any], where: str) -> None:
    """Every number of a job finite and in its range, the message naming the flag that changes it."""
    for key, (lo, hi, flag) in INT_RANGES.items():
        if key not in values:
            continue
        val = values[key]
        if isinstance(val, bool) or not isinstance(val, int) or not lo <= val <= hi:
            if key in ("frames", "height", "width") and isinstance(val, int) and val > hi:
                raise UsageError(f"{where}: {key} {val} not allowed: at most {hi} ({flag})")
            raise UsageError(f"{where}: {key} {val} not allowed: an integer from {lo} to {hi} ({flag})")
    for key, (lo, hi, flag) in FLOAT_RANGES.items():
        val = values.get(key)
        if val is None:
            continue
        ok = not isinstance(val, bool) and isinstance(val, (int, float)) and math.isfinite(val) and lo <= val <= hi
        if key == "flow_shift":
            if not ok or val <= lo:
                raise UsageError(f"{where}: {key} {float(val)} not allowed: a finite number above {lo:g}, at most "
                                 f"{hi:g} ({flag})")
        elif not ok:
            raise UsageError(f"{where}: {key} {float(val)} not allowed: a finite number from {lo:g} to {hi:g} ({flag})")


def default_name(job: Job, key: str) -> str:
    """``<slug>-<seed>-<first 8 hex of the key>``: readable, and unique per job key."""
    return f"{slug(job.prompt)}-{job.seed}-{key[:8]}"


def name_jobs(jobs: list[Job], context: dict[str, Any]) -> list[Job]:
    """Give every job without a name its default name; refuse two different jobs under one name
    (a line that repeats another exactly is the same video: it is done once, then skipped)."""
    named, seen = [], {}
    for job in jobs:
        key = job.key(context)
        if not job.name:
            job = replace(job, name=default_name(job, key))
        if job.name in seen and seen[job.name][1] != key:
            raise UsageError(f"{job.where}: output name '{job.name}' already used by {seen[job.name][0]}")
        seen.setdefault(job.name, (job.where, key))
        named.append(job)
    return named


def shard(jobs: list[Job], spec: str | None) -> list[Job]:
    """``--shard i/n``: this worker's share (index % n == i), for render farms."""
    if not spec:
        return jobs
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or int(m[2]) < 1 or int(m[1]) >= int(m[2]):
        raise UsageError(f"--shard {spec!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    i, n = int(m[1]), int(m[2])
    return [j for j in jobs if j.index % n == i]


def validate(jobs: list[Job], family, size_multiple: int, max_frames: int | None = None) -> None:
    """Refuse what the model cannot take, before anything is loaded (``build_jobs`` checked the ranges)."""
    for j in jobs:
        where = j.where or f"job {j.name}"
        if not family.frames_ok(j.frames) or (max_frames and j.frames > max_frames):
            raise UsageError(f"{where}: {j.frames} frames not allowed: {family.frame_rule}")
        for dim, val in (("height", j.height), ("width", j.width)):
            if val < size_multiple or val % size_multiple:
                raise UsageError(f"{where}: {dim} {val} not allowed: sizes must be multiples of {size_multiple}")

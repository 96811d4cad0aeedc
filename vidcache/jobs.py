"""Prompt files to a list of Jobs: one video each, every parameter resolved, a safe output name.

A job's ``key`` hashes everything that determines its pixels, so a re-run can tell a finished video
from one that was made with other settings and must be redone.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

JSONL_KEYS = {"prompt", "negative_prompt", "seed", "frames", "height", "width", "steps", "guidance", "name", "image"}
PER_LINE = ("frames", "height", "width", "steps", "guidance", "negative_prompt")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Prompt:
    """One entry of a prompt source, before defaults are applied."""

    text: str
    overrides: dict[str, Any]
    where: str  # "prompts.jsonl:3", for error messages


@dataclass(frozen=True)
class Job:
    index: int
    name: str
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

    def key(self, context: dict[str, Any]) -> str:
        """Stable hash of the job and what else decides its output (model, cache, dtype). An image
        counts by its bytes and fit, not its path (a moved image is the same job, an edited one not);
        text-to-video jobs hash as they did before images existed."""
        fields = asdict(self) | {"index": None}
        del fields["image"]
        if self.image is None:
            del fields["image_sha256"], fields["fit"]
        blob = json.dumps({"job": fields, **context}, sort_keys=True)
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
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "video"


def safe_name(name: str, where: str) -> str:
    """A job's ``name``: a plain file stem, never a path outside ``--out``."""
    cleaned = _SAFE_NAME.sub("-", name).strip("-.")
    if not cleaned:
        raise UsageError(f"{where}: name {name!r} has no usable characters")
    return cleaned[:120]


def build_jobs(prompts: list[Prompt], defaults: dict[str, Any], flags: dict[str, Any], seed: int,
               image: str | None = None, fit: str = "crop") -> list[Job]:
    """Resolve every job: preset defaults < per-line values < explicit command-line flags.

    Command-line flags win over a line's own values, because they are the user's latest word;
    ``image`` (``--image``) likewise wins over a line's ``image``. Every image is opened and hashed
    here, before any weight loads (``images.check_image``; an error names the line).
    """
    from .images import check_fit, check_image

    check_fit(fit)
    checked: dict[str, Any] = {}
    jobs, names = [], {}
    for i, p in enumerate(prompts):
        v = dict(defaults)
        v.update({k: p.overrides[k] for k in PER_LINE if k in p.overrides})
        v.update({k: val for k, val in flags.items() if val is not None})
        job_seed = p.overrides.get("seed", seed)
        if "name" in p.overrides:
            name = safe_name(p.overrides["name"], p.where)
        else:
            name = f"{i:04d}-{slug(p.text)}-{job_seed}"
        if name in names:
            raise UsageError(f"{p.where}: output name '{name}' already used by {names[name]}")
        names[name] = p.where
        image_path = image if image is not None else p.overrides.get("image")
        info = None
        if image_path is not None:
            where = "--image" if image is not None else p.where
            info = checked.get(image_path) or check_image(image_path, where)
            checked[image_path] = info
        jobs.append(
            Job(
                index=i,
                name=name,
                prompt=p.text,
                negative_prompt=v.get("negative_prompt", ""),
                seed=int(job_seed),
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
            )
        )
    return jobs


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
    """Refuse what the model cannot take, before anything is loaded."""
    for j in jobs:
        where = f"job {j.name}"
        if not family.frames_ok(j.frames) or (max_frames and j.frames > max_frames):
            raise UsageError(f"{where}: {j.frames} frames not allowed: {family.frame_rule}")
        for dim, val in (("height", j.height), ("width", j.width)):
            if val < size_multiple or val % size_multiple:
                raise UsageError(f"{where}: {dim} {val} not allowed: sizes must be multiples of {size_multiple}")
        if j.steps < 1:
            raise UsageError(f"{where}: steps must be at least 1")
        if j.fps < 1:
            raise UsageError(f"{where}: fps must be at least 1")
        if j.guidance < 0:
            raise UsageError(f"{where}: guidance must not be negative")

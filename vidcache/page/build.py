"""``vidcache report``: a folder of videos and reports to one static page, and its summary for scripts.

The page (``report.html`` by default, in the folder) is one self-contained HTML file: its CSS, script
and data inline, no network. Videos are linked by relative path, so the page opens from a file on an
offline machine and from shared storage as long as it stays beside them; the poster frames and heat
strips lie in ``<page>_files/`` next to it. The script shows one page of the contact sheet at a time
and loads pictures lazily, so a farm folder of thousands of videos stays quick to open.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .. import __version__
from ..errors import UsageError, one_line
from . import compare, images
from .folder import Video, read_folder

KNOWN_KEYS = {"name", "status", "prompt", "negative_prompt", "seed", "model", "frames", "height", "width", "steps",
              "guidance", "guidance_2", "flow_shift", "fps", "cache", "timing", "memory", "device", "dtype",
              "versions", "job", "job_key", "mp4", "error", "parallel"}


@dataclass
class Built:
    page: Path
    summary: dict[str, Any]  # what ``--json`` prints
    problems: list[str]  # one line each, also listed on the page


def _sig(x: Any, digits: int = 4) -> float | None:
    """A number rounded to ``digits`` significant digits (the page's data stays small); None for
    anything else, infinities and NaN included."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinity (which reports may hold and strict JSON cannot) as None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def cache_label(report: dict[str, Any]) -> str:
    cache = report.get("cache") if isinstance(report.get("cache"), dict) else {}
    method = str(cache.get("method") or "?")
    return f"{method}.{cache['variant']}" if cache.get("variant") else method


def step_reuse(stats: dict[str, Any]) -> dict[str, list[float]]:
    """Per CFG branch, the share of the work each forward computed (1 = all of it, 0 = all reused)."""
    out: dict[str, list[float]] = {}
    for entry in stats.get("per_step") or []:
        if not isinstance(entry, dict):
            continue
        pairs = [entry.get("blocks")] + list((entry.get("attention") or {}).values())
        pairs = [p for p in pairs if isinstance(p, list) and len(p) == 2]
        total = sum(p[1] for p in pairs)
        out.setdefault(str(entry.get("branch", "-")), []).append(
            round(sum(p[0] for p in pairs) / total, 3) if total else 1.0)
    return out


def _scalars(d: Any) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool))} if isinstance(d, dict) else {}


def base_row(video: Video, root: Path) -> dict[str, Any]:
    """Everything the page shows of one video that its report says (no pictures, no comparison)."""
    r = video.report
    timing = r.get("timing") if isinstance(r.get("timing"), dict) else {}
    cache = r.get("cache") if isinstance(r.get("cache"), dict) else {}
    stats = cache.get("stats") if isinstance(cache.get("stats"), dict) else {}
    model = r.get("model") if isinstance(r.get("model"), dict) else {}
    memory = r.get("memory") if isinstance(r.get("memory"), dict) else {}
    device = r.get("device") if isinstance(r.get("device"), dict) else {}
    reuse = step_reuse(stats)
    return {
        "name": video.name,
        "dir": os.path.relpath(video.folder, root).replace(os.sep, "/"),
        "status": video.status,
        "error": r.get("error"),
        "prompt": r.get("prompt"),
        "negative_prompt": r.get("negative_prompt") or None,
        "seed": r.get("seed"),
        "model": model.get("name"),
        "family": model.get("family"),
        "cache": cache_label(r),
        "params": cache.get("params") if isinstance(cache.get("params"), dict) else {},
        "frames": r.get("frames"), "width": r.get("width"), "height": r.get("height"), "fps": r.get("fps"),
        "steps": r.get("steps"), "guidance": r.get("guidance"),
        "compute_ratio": _sig(stats.get("compute_ratio")),
        "reuse": reuse,
        "reused": {b: sum(f < 1.0 for f in fr) for b, fr in reuse.items()},
        "cache_warnings": [str(w) for w in stats.get("warnings") or []],
        "text_s": _sig(timing.get("text_encode_s")), "denoise_s": _sig(timing.get("denoise_s")),
        "decode_s": _sig(timing.get("decode_s")), "total_s": _sig(timing.get("total_s")),
        "step_s": [_sig(s, 3) for s in timing.get("step_s") or []],
        "peak_bytes": memory.get("peak_bytes"), "memory_kind": memory.get("kind"),
        "device": " ".join(str(device[k]) for k in ("type", "name") if device.get(k)) or None,
        "dtype": r.get("dtype"),
        "extra": {k: v for k, v in _scalars(r).items() if k not in KNOWN_KEYS},
        "report": _url(video.where, root) if video.where.suffix == ".json" else None,
    }


def _url(path: Path, root: Path) -> str:
    """``path`` as a link from a page in ``root``."""
    return quote(os.path.relpath(path, root).replace(os.sep, "/"))


def _tag(path: Path) -> str:
    return f"{path.stem[:60]}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def _fresh(made: Path, *sources: Path) -> bool:
    return made.is_file() and all(made.stat().st_mtime_ns >= s.stat().st_mtime_ns for s in sources)


class Pictures:
    """Posters, heat strips and per-frame quality, made only where missing or older than the MP4s."""

    def __init__(self, assets: Path, root: Path, problems: list[str]):
        self.assets, self.root, self.problems = assets, root, problems
        self.cache = compare.QualityCache(assets / "quality.json")
        self._metrics: bool | None = None

    @property
    def metrics(self) -> bool:
        """Whether PSNR / SSIM can be measured (torchmetrics, and with it torch, loads on first use)."""
        if self._metrics is None:
            try:
                import torchmetrics  # noqa: F401
                self._metrics = True
            except ImportError:
                self._metrics = False
                self.problems.append("PSNR / SSIM not computed: torchmetrics is not installed "
                                     "(pip install 'vidcache[metrics]')")
        return self._metrics

    def poster(self, video: Video, frames=None) -> str | None:
        path = self.assets / f"{_tag(video.mp4)}.jpg"
        if not _fresh(path, video.mp4):
            try:
                frame = frames[len(frames) // 2] if frames is not None else images.middle_frame(
                    video.mp4, video.report.get("frames"))
                images.write_poster(frame, path)
            except Exception as err:  # noqa: BLE001 - a broken MP4 is one line, the page still builds
                self.problems.append(f"{video.mp4}: cannot decode ({one_line(err)})")
                return None
        return _url(path, self.root)

    def compare(self, video: Video, ref: Video) -> tuple[dict[str, Any] | None, dict[str, str | None]]:
        """(quality of ``video`` against ``ref``, picture links {poster, ref_poster, strip})."""
        from ..video import read_mp4

        strip = self.assets / f"{_tag(video.mp4)}-vs-{_tag(ref.mp4)[-8:]}.png"
        key = f"{compare.stamp(ref.mp4)}|{compare.stamp(video.mp4)}"
        quality = self.cache.get(key) if self.metrics else None
        links: dict[str, str | None] = {"strip": None}
        frames = refs = None
        try:
            if (self.metrics and quality is None) or not _fresh(strip, video.mp4, ref.mp4):
                frames, refs = read_mp4(video.mp4), read_mp4(ref.mp4)
                if frames.shape != refs.shape:
                    raise ValueError(f"videos differ in shape: {refs.shape} vs {frames.shape}")
                images.write_heat_strip(refs, frames, strip)
                if self.metrics and quality is None:
                    quality = compare.frame_quality(refs, frames)
                    self.cache.put(key, quality)
            links["strip"] = _url(strip, self.root)
        except Exception as err:  # noqa: BLE001 - one pair that cannot be compared is one line
            self.problems.append(f"{video.mp4}: cannot compare with {ref.mp4} ({one_line(err)})")
            quality, frames, refs = None, None, None
        links["poster"] = self.poster(video, frames)
        links["ref_poster"] = self.poster(ref, refs)
        return quality, links


def _quality_fields(q: dict[str, list[float]] | None) -> dict[str, Any]:
    if not q or not q["psnr"]:
        return {"psnr": None, "psnr_min": None, "ssim": None, "ssim_min": None, "psnr_frames": [], "ssim_frames": []}
    return {"psnr": round(statistics.fmean(q["psnr"]), 3), "psnr_min": min(q["psnr"]),
            "ssim": round(statistics.fmean(q["ssim"]), 5), "ssim_min": min(q["ssim"]),
            "psnr_frames": q["psnr"], "ssim_frames": q["ssim"]}


def _ratio(a: Any, b: Any) -> float | None:
    return _sig(a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0 else None


def video_row(video: Video, ref: Video | None, root: Path, pictures: Pictures) -> dict[str, Any]:
    row = base_row(video, root)
    has_mp4 = video.mp4 is not None and video.status in ("done", "skipped")
    row["mp4"] = _url(video.mp4, root) if has_mp4 else None
    row["poster"] = None
    row["ref"] = None
    if ref is None:
        row["poster"] = pictures.poster(video) if has_mp4 else None
        return row
    theirs = base_row(ref, root)
    ref_mp4 = ref.mp4 is not None and ref.status in ("done", "skipped")
    row["ref"] = {k: theirs[k] for k in ("name", "dir", "status", "error", "cache", "compute_ratio", "text_s",
                                         "denoise_s", "decode_s", "total_s", "step_s", "report")}
    row["ref"]["mp4"] = _url(ref.mp4, root) if ref_mp4 else None
    row["speedup"] = _ratio(theirs["total_s"], row["total_s"])
    row["speedup_denoise"] = _ratio(theirs["denoise_s"], row["denoise_s"])
    quality, links = None, {"strip": None, "poster": None, "ref_poster": None}
    if has_mp4 and ref_mp4:
        quality, links = pictures.compare(video, ref)
    elif has_mp4:
        links["poster"] = pictures.poster(video)
    row["poster"], row["ref"]["poster"], row["strip"] = links["poster"], links["ref_poster"], links["strip"]
    row |= _quality_fields(quality)
    return row


def _median(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None]
    return _sig(statistics.median(xs)) if xs else None


def _mean(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None]
    return _sig(statistics.fmean(xs)) if xs else None


def cache_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per cache: what finished, where the time went and, beside a reference, the trade."""
    out = []
    for label in sorted({r["cache"] for r in rows}):
        rs = [r for r in rows if r["cache"] == label]
        line = {"cache": label, "videos": len(rs),
                **{s: sum(r["status"] == s for r in rs) for s in ("done", "skipped", "failed", "missing")},
                "mean_total_s": _mean([r["total_s"] for r in rs]),
                "mean_denoise_s": _mean([r["denoise_s"] for r in rs]),
                "compute_ratio": _mean([r["compute_ratio"] for r in rs]),
                "peak_bytes": max((r["peak_bytes"] for r in rs if isinstance(r["peak_bytes"], int)), default=None)}
        paired = [r for r in rs if r.get("ref")]
        if paired:
            line |= {"pairs": len(paired), "speedup": _median([r["speedup"] for r in paired]),
                     "speedup_denoise": _median([r["speedup_denoise"] for r in paired]),
                     "psnr": _mean([r["psnr"] for r in paired]),
                     "psnr_worst": min((r["psnr_min"] for r in paired if r["psnr_min"] is not None), default=None),
                     "ssim": _mean([r["ssim"] for r in paired]),
                     "ssim_worst": min((r["ssim_min"] for r in paired if r["ssim_min"] is not None), default=None)}
        out.append(line)
    return out


JSON_VIDEO_KEYS = ("name", "dir", "status", "error", "cache", "prompt", "seed", "model", "compute_ratio", "total_s",
                   "denoise_s", "mp4", "speedup", "speedup_denoise", "psnr", "psnr_min", "ssim", "ssim_min")


def _json_row(row: dict[str, Any], root: Path) -> dict[str, Any]:
    """A video as ``--json`` gives it: paths as files, not links."""
    out = {k: row.get(k) for k in JSON_VIDEO_KEYS}
    out["mp4"] = str(root / unquote(row["mp4"])) if row["mp4"] else None
    if row["ref"]:
        out["reference"] = {"name": row["ref"]["name"],
                            "mp4": str(root / unquote(row["ref"]["mp4"])) if row["ref"]["mp4"] else None}
    return out


def _bench(folder_bench: list[tuple[Path, list[dict[str, Any]]]], root: Path) -> list[dict[str, Any]]:
    out = []
    for path, rows in folder_bench:
        png = path.parent / "pareto.png"
        out.append({"file": _url(path, root), "png": _url(png, root) if png.is_file() else None,
                    "rows": [{k: v for k, v in r.items() if v is None or isinstance(v, (str, int, float))}
                             for r in rows]})
    return out


def render(data: dict[str, Any], title: str) -> str:
    """The page: template, CSS, script and data in one file."""
    here = resources.files(__package__)
    values = {"/*CSS*/": (here / "page.css").read_text(encoding="utf-8"),
              "/*JS*/": (here / "page.js").read_text(encoding="utf-8"),
              "__TITLE__": html.escape(title),
              # inside <script>: no "<" at all, so no "</script>" or "<!--" can end it early
              "__DATA__": json.dumps(finite(data), separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")}
    template = (here / "page.html").read_text(encoding="utf-8")
    return re.sub(r"/\*CSS\*/|/\*JS\*/|__TITLE__|__DATA__", lambda m: values[m.group()], template)


def _check_paths(folder: Path, against: Path | None, out: Path) -> None:
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    if against is not None and not against.is_dir():
        raise UsageError(f"--against {against}: no such folder")
    if against is not None and against.resolve() == folder.resolve():
        raise UsageError(f"--against {against}: the folder itself (give the reference run's folder)")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no such folder {out.parent}")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {out}: expected an .html file")


def build(folder: Path, against: Path | None = None, out: Path | None = None, on_video=None) -> Built:
    """Read ``folder`` (and ``against``), make the pictures, write the page; ``on_video(i, n, name)``
    is told before each video. Raises UsageError when there is nothing to show."""
    folder = Path(folder)
    against = Path(against) if against is not None else None
    out = Path(out) if out is not None else folder / "report.html"
    _check_paths(folder, against, out)
    root, assets = out.parent, out.parent / f"{out.stem}_files"
    skip = {assets} | ({against} if against is not None and _inside(against, folder) else set())
    mine = read_folder(folder, skip)
    problems = list(mine.problems)
    if not mine.videos and not mine.bench:
        raise UsageError(f"{folder}: no vidcache reports (no video reports, run summaries or bench.json)")
    pairs, alone, theirs_alone = [], list(mine.videos), []
    if against is not None:
        theirs = read_folder(against, {assets} | ({folder} if _inside(folder, against) else set()))
        problems += theirs.problems
        if not theirs.videos:
            raise UsageError(f"--against {against}: no vidcache video reports")
        pairs, alone, theirs_alone = compare.pair_up(mine.videos, theirs.videos)
    assets.mkdir(exist_ok=True)
    pictures = Pictures(assets, root, problems)
    ref_of = {id(p.video): p.ref for p in pairs}
    rows = []
    for i, video in enumerate(mine.videos):
        if on_video is not None:
            on_video(i, len(mine.videos), video.name)
        rows.append(video_row(video, ref_of.get(id(video)), root, pictures))
    if against is not None:
        pictures.cache.save()
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed", "missing")}
    caches = cache_summary(rows)
    unpaired = {"here": [{"name": v.name, "dir": os.path.relpath(v.folder, root)} for v in alone],
                "against": [{"name": v.name, "dir": os.path.relpath(v.folder, root)} for v in theirs_alone]}
    data = {"folder": str(folder), "against": str(against) if against else None, "vidcache": __version__,
            "built": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "counts": counts,
            "problems": problems, "caches": caches, "videos": rows, "unpaired": unpaired if against else None,
            "bench": _bench(mine.bench, root), "strip_full_scale": images.STRIP_FULL_SCALE}
    from ..video import write_text

    write_text(out, render(data, f"vidcache report: {folder}"))
    summary = {"page": str(out), "folder": str(folder), "against": data["against"], "counts": counts,
               "problems": problems, "caches": caches,
               "videos": [_json_row(r, root) for r in rows],
               "unpaired": data["unpaired"], "bench": data["bench"]}
    return Built(out, finite(summary), problems)

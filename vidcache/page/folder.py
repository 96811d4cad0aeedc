"""What a folder of vidcache output holds: the video reports, the run summaries, bench tables, and
one problem line for everything that is not what it should be.

Every ``*.json`` under the folder (subfolders included, hidden files and folders left out) is read and
sorted by its shape, not its name: a video report has a ``name`` and a ``job_key`` or ``status``; a run
summary has a ``videos`` list (``run.json`` and ``runs/*.json``); a bench table is a list of rows with a
``method`` and a ``speedup``. Fields this module does not know are kept, so reports of newer versions
and farm workers' extra fields pass through.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUSES = ("done", "failed", "skipped")


@dataclass
class Video:
    """One video as the folder tells it: its report (or a run summary's row when it has none)."""

    report: dict[str, Any]
    where: Path  # the report file, or the run summary that named it
    folder: Path  # where its MP4 lies
    status: str  # done / failed / skipped / missing (a finished report whose MP4 is not there)
    mp4: Path | None = None

    @property
    def name(self) -> str:
        return str(self.report.get("name"))


@dataclass
class Folder:
    root: Path
    videos: list[Video] = field(default_factory=list)
    bench: list[tuple[Path, list[dict[str, Any]]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def is_video_report(data: Any) -> bool:
    return (isinstance(data, dict) and isinstance(data.get("name"), str)
            and ("job_key" in data or "status" in data) and "videos" not in data)


def is_run_summary(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("videos"), list)


def is_bench_table(data: Any) -> bool:
    return (isinstance(data, list) and bool(data)
            and all(isinstance(r, dict) and "method" in r and "speedup" in r for r in data))


def is_page_folder(path: Path) -> bool:
    """A report page's own pictures and caches (``report_files/`` beside ``report.html``)."""
    return path.name.endswith("_files") and path.with_name(path.name[: -len("_files")] + ".html").is_file()


def json_files(root: Path, skip: set[Path]) -> list[Path]:
    """Every ``*.json`` under ``root``, hidden files and folders (and ``skip``) left out, sorted."""
    found = []
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(top) / d).resolve() not in skip
                         and not is_page_folder(Path(top) / d))
        found += [Path(top) / f for f in files if f.endswith(".json") and not f.startswith(".")]
    return sorted(found)


def _load(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError) as err:
        return None, f"cannot read ({type(err).__name__}: {err})"
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg}, line {err.lineno})"


def _video_of_report(folder: Folder, path: Path, report: dict[str, Any]) -> Video:
    status = report.get("status", "done")
    if status not in STATUSES:
        folder.problems.append(f"{path}: unknown status {status!r}, shown as failed")
        report = report | {"error": report.get("error") or f"status {status!r}"}
        status = "failed"
    mp4 = None
    if status == "done":
        name = report.get("mp4") if isinstance(report.get("mp4"), str) else f"{report['name']}.mp4"
        mp4 = path.parent / name
        if not mp4.is_file():
            folder.problems.append(f"{mp4}: MP4 missing (its report {path.name} says done)")
            status = "missing"
    return Video(report, path, path.parent, status, mp4)


def _apply_summaries(folder: Folder, summaries: list[tuple[Path, dict[str, Any]]]) -> None:
    """A run summary's word on videos: the latest run's ``skipped`` marks a video finished by an
    earlier run; a ``failed`` row with no report of its own becomes a failed video."""
    by_place = {(v.folder.resolve(), v.name): v for v in folder.videos}
    rows: dict[tuple[Path, str], tuple[Path, Path, dict[str, Any], dict[str, Any]]] = {}
    for path, summary in sorted(summaries, key=lambda s: (s[0].stat().st_mtime_ns, str(s[0]))):
        place = path.parent.parent if path.parent.name == "runs" else path.parent
        for row in summary["videos"]:
            if isinstance(row, dict) and isinstance(row.get("name"), str):
                rows[(place.resolve(), row["name"])] = (place, path, row, summary)
    for key, (place, path, row, summary) in rows.items():
        video = by_place.get(key)
        if video is None and row.get("status") == "failed":
            report = {k: summary[k] for k in ("model", "cache") if isinstance(summary.get(k), dict)}
            report |= {k: v for k, v in row.items() if k not in ("seconds", "seconds_per_step", "mp4")}
            folder.videos.append(Video(report, path, place, "failed"))
        elif video is not None and video.status == "done" and row.get("status") == "skipped":
            video.status = "skipped"


def read_folder(root: Path, skip: set[Path] = frozenset()) -> Folder:
    """Everything under ``root`` (``skip``: resolved folders to leave out, such as the page's own)."""
    folder = Folder(root)
    summaries = []
    for path in json_files(root, {p.resolve() for p in skip}):
        data, error = _load(path)
        if error:
            folder.problems.append(f"{path}: {error}, skipped")
        elif is_video_report(data):
            folder.videos.append(_video_of_report(folder, path, data))
        elif is_run_summary(data):
            summaries.append((path, data))
        elif is_bench_table(data):
            folder.bench.append((path, data))
        elif path.name == "run.json" or path.parent.name == "runs":
            pass  # a run's own bookkeeping in a shape this version does not know (a pointer to runs/)
        else:
            folder.problems.append(f"{path}: not a vidcache report (foreign JSON), skipped")
    _apply_summaries(folder, summaries)
    folder.videos.sort(key=lambda v: (str(v.folder), _index(v.report), v.name))
    return folder


def _index(report: dict[str, Any]) -> int:
    job = report.get("job")
    index = job.get("index") if isinstance(job, dict) else None
    return index if isinstance(index, int) else 1 << 30

"""What "done" means in ``--out``, and how several processes share one folder.

A video NAME is done when ``NAME.json`` says ``"status": "done"`` with the job's key and names
``NAME.mp4`` with the size and SHA-256 that file has now. ``publish`` writes in this order: the MP4
to a temp file (ffmpeg must exit 0), decoded back to every frame at its size, hashed; the report to
a temp file (strict JSON, synced); the MP4 renamed into place; the report renamed last. Whatever a
crash leaves (an MP4 without its report, a new MP4 beside an older report, a truncated file) is
therefore not done, and a rerun redoes it; a name that holds another job's finished video is never
written over unless the user passes ``--overwrite``.

Any process may use these functions on a shared folder (two ``vidcache gen`` runs, shards of any
sizes, a torchrun rank 0, farm workers): ``finished`` to skip, ``claim`` before rendering,
``publish`` to write, ``Claim.release`` at the end. A claim is ``.claims/NAME.claim``, created with
O_CREAT | O_EXCL and holding the owner's pid, host, process start time and a random token. It
protects a name's files, so two jobs that would write one name never write it at once; with the
default names (which carry the job key) one name is one job. A claim is stale, and taken over, when
- its host is this machine and its process is gone (or its pid now belongs to a process that
  started later), or
- its host is another machine and the file was not touched for ``VIDCACHE_CLAIM_STALE_S`` seconds
  (default 1800): a renderer touches its claim as it goes (``Claim.touch``, at most once a minute).
Temp files are named for their writer (``video.temp_beside``); ``sweep`` removes those of gone
processes by the same rules. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import faults, video
from .errors import OutputError, UsageError

CLAIMS = ".claims"
RUNS = "runs"
RUN_FILE = "run.json"
RESERVED = frozenset({"run", "runs", "report"})  # names of what vidcache writes in --out itself
STALE_S_DEFAULT = 1800.0
EMPTY_CLAIM_S = 60.0  # a claim file still empty after this long: its creator died before writing it


def stale_after_s() -> float:
    return float(os.environ.get("VIDCACHE_CLAIM_STALE_S", STALE_S_DEFAULT))


@dataclass(frozen=True)
class Target:
    """One job's files in ``out``: ``name`` (a safe file stem) and the job ``key`` they must carry."""

    out: Path
    name: str
    key: str

    @property
    def mp4(self) -> Path:
        return self.out / f"{self.name}.mp4"

    @property
    def report(self) -> Path:
        return self.out / f"{self.name}.json"

    @property
    def claim_path(self) -> Path:
        return self.out / CLAIMS / f"{self.name}.claim"


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------


def check_out(out: Path) -> None:
    """``--out`` must be a folder this process can write in: made if missing, else one clear line."""
    out = Path(out)
    flag = f"--out {out}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{flag}: cannot create the folder ({err.strerror or err})") from None
    try:
        video.temp_beside(out / "probe", ".tmp").unlink()
    except OSError as err:
        raise UsageError(f"{flag}: cannot write in the folder ({err.strerror or err})") from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def read_report(path: Path) -> dict[str, Any] | None:
    """A report as strict JSON, or None when it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describes_mp4(target: Target, report: dict[str, Any]) -> bool:
    """Whether ``report`` names this target's MP4 and the file is, byte for byte, the one it describes."""
    if report.get("mp4") != target.mp4.name:
        return False
    try:
        if target.mp4.stat().st_size != report.get("mp4_bytes"):
            return False
        return video.file_digest(target.mp4)[1] == report.get("mp4_sha256")
    except OSError:
        return False


def finished(target: Target) -> dict[str, Any] | None:
    """The report when the target's job is done (its key, its MP4 as written), else None."""
    report = read_report(target.report)
    if report is None or report.get("status") != "done" or report.get("job_key") != target.key:
        return None
    return report if _describes_mp4(target, report) else None


def conflict(target: Target) -> str | None:
    """Why the target must not be written: its name holds another job's finished video (None: free)."""
    report = read_report(target.report)
    if report is None or report.get("status") != "done" or report.get("job_key") == target.key:
        return None
    if not _describes_mp4(target, report):  # broken or mismatched leftovers are nobody's finished video
        return None
    prompt = str(report.get("prompt", ""))
    prompt = prompt if len(prompt) <= 40 else prompt[:39] + "…"
    return (f"{target.name}: the name holds a finished video of another job (job key {report.get('job_key')}, "
            f"prompt {prompt!r}); pass --overwrite to replace it, or give this job another name")


# --------------------------------------------------------------------------------------------
# Owners: processes, claims, stale files
# --------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, float] | None:
    """(state, start time in seconds since the epoch) of a Linux process; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        btime = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                     if ln.startswith("btime"))
        return fields[0], btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OSError, OverflowError):
        return False
    stat = _proc_stat(pid)
    return stat is None or stat[0] not in ("Z", "X")  # a zombie has finished


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _writer_alive(pid: int, host: str, path: Path) -> bool:
    """Whether the process named by a temp file's name may still be writing it."""
    if host != video.host_tag():
        return _age_s(path) < stale_after_s()
    if not _pid_alive(pid):
        return False
    stat = _proc_stat(pid)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return False
    return stat is None or stat[1] <= mtime + 2.0  # a process started after the last write is not the writer


def _holder_alive(holder: dict[str, Any] | None, path: Path) -> bool:
    """Whether the claim ``holder`` (read from ``path``) belongs to a process that may still render."""
    if holder is None:  # being written right now, or its writer died before writing it
        return _age_s(path) < EMPTY_CLAIM_S
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname():
        return _age_s(path) < stale_after_s()
    if isinstance(pid, bool) or not isinstance(pid, int) or not _pid_alive(pid):
        return False
    then, now = holder.get("proc_start"), _proc_stat(pid)
    return not (isinstance(then, (int, float)) and now is not None and abs(now[1] - then) > 2.0)


def holder(target: Target) -> dict[str, Any] | None:
    """Who holds the target's claim (its record), or None when nobody does."""
    return read_report(target.claim_path)


def describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "another process"
    return f"pid {record.get('pid')} on {record.get('host')} since {record.get('started')}"


@dataclass
class Claim:
    """This process's exclusive right to write one name's files; ``release`` it when done."""

    path: Path
    token: str
    _touched: float = field(default_factory=time.monotonic)

    def touch(self, every_s: float = 60.0) -> None:
        """Tell other machines this claim is alive (its mtime), at most every ``every_s`` seconds."""
        now = time.monotonic()
        if now - self._touched >= every_s:
            try:
                os.utime(self.path)
            except OSError:
                pass
            self._touched = now

    def release(self) -> None:
        record = read_report(self.path)
        if record is not None and record.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _break(path: Path, seen: dict[str, Any] | None) -> None:
    """Remove the stale claim ``seen`` at ``path``; if what was moved away is a newer claim (made
    after we looked), it is put back unless a newer one still is there."""
    tomb = path.with_name(f".{path.name}.{video.owner_tag()}.{secrets.token_hex(4)}.stale")
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return
    if read_report(tomb) != seen:
        try:
            os.link(tomb, path)
        except OSError:
            pass
    tomb.unlink(missing_ok=True)


def release_dead(target: Target, owners: list[dict[str, Any]]) -> bool:
    """Take away the target's claim when its holder is one of ``owners`` ({"pid", "host"}), processes
    the caller knows are gone: a farm worker that Ray saw die on another machine, whose claim would
    otherwise look alive until it is ``VIDCACHE_CLAIM_STALE_S`` old. True when one was taken away."""
    seen = holder(target)
    if not seen or not any(seen.get("pid") == o.get("pid") and seen.get("host") == o.get("host") for o in owners):
        return False
    _break(target.claim_path, seen)
    return True


def claim(target: Target) -> Claim | None:
    """Claim the target for this process; None when a live process holds it. Stale claims are
    taken over (see the module docstring)."""
    path = target.claim_path
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = _proc_stat(os.getpid())
    token = secrets.token_hex(8)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": proc[1] if proc else None,
              "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "token": token,
              "name": target.name, "key": target.key}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            seen = read_report(path)
            if _holder_alive(seen, path):
                return None
            _break(path, seen)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return Claim(path, token)
    return None


def sweep(out: Path) -> list[Path]:
    """Remove what processes that are gone left in ``out``: temp files named for their writer and
    stale claims. Another live run's files (this machine: its process runs; another machine: touched
    within the stale age) and files of any other naming are left alone."""
    removed: list[Path] = []
    for folder in (out, out / CLAIMS, out / RUNS):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = video.TEMP_NAME.match(p.name)
            if m and p.is_file() and not _writer_alive(int(m["pid"]), m["host"], p):
                p.unlink(missing_ok=True)
                removed.append(p)
            elif folder.name == CLAIMS and p.suffix == ".claim":
                seen = read_report(p)
                if not _holder_alive(seen, p):
                    _break(p, seen)
                    removed.append(p)
    return removed


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def publish(target: Target, frames: Any, fps: int, report: dict[str, Any], overwrite: bool = False) -> dict[str, Any]:
    """Write the target's MP4 and then its report, so that "done" is true only once both are whole
    (module docstring). Returns the report as written; ``OutputError`` when nothing was published."""
    arr = video.to_uint8(frames)
    t, h, w, _ = arr.shape
    tmp_mp4 = video.temp_beside(target.mp4, ".mp4")
    tmp_report = None
    try:
        video.encode_mp4(tmp_mp4, arr, fps, target.mp4.name)
        faults.point("mp4-temp")
        video.check_mp4(tmp_mp4, t, w, h, target.mp4.name)
        size, digest = video.file_digest(tmp_mp4)
        report = report | {"mp4": target.mp4.name, "mp4_bytes": size, "mp4_sha256": digest, "mp4_frames": t}
        text = video.dumps(report)
        tmp_report = video.temp_beside(target.report, ".json")
        with open(tmp_report, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        faults.point("report-temp")
        why = None if overwrite else conflict(target)
        if why:
            raise OutputError(why)
        os.replace(tmp_mp4, target.mp4)
        faults.point("mp4")
        os.replace(tmp_report, target.report)
        video.sync_dir(target.out)
        faults.point("report")
    except OSError as err:
        raise OutputError(f"{target.name} not written: {err.strerror or err}") from None
    finally:
        tmp_mp4.unlink(missing_ok=True)
        if tmp_report is not None:
            tmp_report.unlink(missing_ok=True)
    return report


def run_label(shard: str | None) -> str:
    """``all``, or ``shard1of4`` for ``--shard 1/4``: the tail of a run summary's file name."""
    if not shard:
        return "all"
    i, n = shard.split("/")
    return f"shard{int(i)}of{int(n)}"


def write_summary(out: Path, summary: dict[str, Any], started: datetime, label: str) -> str:
    """Keep ``summary`` as ``runs/<UTC start>-<label>.json`` (a new file per run, never replaced)
    and as ``run.json`` (the run that ended last); returns the runs/ path, relative to ``out``."""
    runs = out / RUNS
    runs.mkdir(exist_ok=True)
    stamp = started.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S") + f".{started.microsecond // 1000:03d}Z"
    for n in range(1, 1000):
        name = f"{stamp}-{label}.json" if n == 1 else f"{stamp}-{label}-{n}.json"
        data = summary | {"summary_file": f"{RUNS}/{name}"}
        tmp = video.temp_beside(runs / name, ".json")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(video.dumps(data))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, runs / name)  # never replaces another run's summary
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links
                if (runs / name).exists():
                    continue
                os.replace(tmp, runs / name)
        finally:
            tmp.unlink(missing_ok=True)
        video.sync_dir(runs)
        video.write_json(out / RUN_FILE, data)
        return data["summary_file"]
    raise OutputError(f"{runs}: no free name for this run's summary")

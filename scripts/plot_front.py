"""The speed-quality front of docs/benchmarks.md: block compute against PSNR, from bench.json files.

    python scripts/plot_front.py docs/bench_tiny_front.json -o docs/front_tiny.png

Each input is a list of rows with the columns of ``vidcache bench`` (``method``, ``preset``,
``compute_ratio``, ``psnr``, ``psnr_min``, ``psnr_median``); scripts/bench_cachedit.py writes the same.
Rows whose method is one of ``--ours`` are drawn as stars and labelled; the others (the peers) as dots
joined per method, with the peers' front: the points no other peer point beats at equal or lower
compute, joined by straight lines. The script also prints, for every row of ours, the front's PSNR at
its compute (the line between the neighbouring front points) and the margin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OURS = ("teacache", "adacache", "mixcache")


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for p in paths:
        rows += [r for r in json.loads(p.read_text()) if r.get("method") != "none" and r.get("psnr") is not None]
    return rows


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto front of (compute, psnr) points: lower compute and higher PSNR are better."""
    out = []
    for c, p in sorted(points, key=lambda x: (x[0], -x[1])):
        if not out or p > out[-1][1]:
            out.append((c, p))
    return out


def front_psnr(line: list[tuple[float, float]], c: float) -> float | None:
    """The front's PSNR at compute ``c``: linear between its neighbouring points, its best point at or
    below ``c`` beyond its last; None below its first point."""
    if not line or c < line[0][0]:
        return None
    for (c0, p0), (c1, p1) in zip(line, line[1:]):
        if c0 <= c <= c1:
            return p0 + (p1 - p0) * (c - c0) / (c1 - c0)
    return line[-1][1]


def label(r: dict) -> str:
    return r["method"] if r["preset"] == "default" else f"{r['method']}.{r['preset']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--ours", default=",".join(OURS), help="methods drawn as ours (comma-separated)")
    args = ap.parse_args(argv)
    ours = set(args.ours.split(","))
    rows = load(args.inputs)
    peers = [r for r in rows if r["method"] not in ours]
    line = front([(r["compute_ratio"], r["psnr"]) for r in peers])
    for r in sorted((r for r in rows if r["method"] in ours), key=lambda r: r["compute_ratio"]):
        at = front_psnr(line, r["compute_ratio"])
        margin = "below every peer's compute" if at is None else f"front {at:.2f} dB, margin {r['psnr'] - at:+.2f} dB"
        print(f"{label(r)}: compute {r['compute_ratio']:.3f}, PSNR {r['psnr']:.2f} ({margin})")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    by_method: dict[str, list[dict]] = {}
    for r in peers:
        by_method.setdefault(r["method"], []).append(r)
    for method, rs in sorted(by_method.items()):
        rs.sort(key=lambda r: r["compute_ratio"])
        ax.plot([r["compute_ratio"] for r in rs], [r["psnr"] for r in rs], "o-", ms=4, lw=0.8, alpha=0.7,
                label=method)
    ax.plot([c for c, _ in line], [p for _, p in line], "k--", lw=1, label="peers' front")
    for r in rows:
        if r["method"] in ours:
            dot = ax.scatter(r["compute_ratio"], r["psnr"], marker="*", s=140, zorder=5)
            ax.vlines(r["compute_ratio"], r["psnr_min"], r["psnr_median"], colors=dot.get_facecolor(), lw=1)
            ax.annotate(label(r), (r["compute_ratio"], r["psnr"]), textcoords="offset points", xytext=(5, -10),
                        fontsize=7)
    ax.set_xlabel("block compute ratio (lower is faster)")
    ax.set_ylabel("PSNR vs uncached, mean over prompts (dB)")
    ax.set_title("tiny model, held-out prompts: ours (stars; bar: worst to median prompt)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

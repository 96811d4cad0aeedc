"""``vidcache models`` and ``vidcache presets``: what is shipped, without loading anything."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .app import app, guarded, out_console


@app.command()
def models(json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Known model names, their families, defaults and input constraints."""
    from rich.table import Table

    from .. import presets
    from ..models import ADAPTERS, NAMES

    rows = []
    for n in NAMES.values():
        fam = ADAPTERS[n.family]
        d = presets.load(n.preset).defaults
        rows.append({
            "name": n.name, "family": fam.name, "source": n.source, "description": n.description,
            "aliases": list(n.aliases), "defaults": d, "cfg": fam.cfg_layout,
            "constraints": {"frames": fam.frame_rule,
                            "size_multiple": n.size_multiple or fam.size_multiple},
        })
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="vidcache models")
    for col in ("name", "family", "source", "defaults", "constraints"):
        table.add_column(col)
    for r in rows:
        d = r["defaults"]
        table.add_row(
            r["name"], f"{r['family']} ({r['cfg']} CFG)", r["source"],
            f"{d['frames']}f {d['height']}x{d['width']}, {d['steps']} steps, cfg {d['guidance']}, {d['fps']} fps",
            f"{r['constraints']['frames']}; sizes multiple of {r['constraints']['size_multiple']}",
        )
    out_console.print(table)


@app.command("presets")
def presets_cmd(
    model: Annotated[str | None, typer.Argument(help="A model name; all models when left out.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The shipped presets: each model's defaults and cache method tables."""
    from .. import presets
    from ..caches import check_preset, method_note

    with guarded(False):
        names = [model] if model else presets.available()
        loaded = {n: check_preset(presets.load(n)) for n in names}
    notes = {n: {m: method_note(m) for m in p.methods if method_note(m)} for n, p in loaded.items()}
    data = {n: {"defaults": p.defaults, **p.methods, **({"method_notes": notes[n]} if notes[n] else {})}
            for n, p in loaded.items()}
    if json_out:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    for n in loaded:
        out_console.rule(f"[bold]{n}")
        out_console.print((presets.PRESET_DIR / f"{n}.toml").read_text(), highlight=False, markup=False)
        for method, note in notes[n].items():
            out_console.print(f"note ({method}): {note}", highlight=False, markup=False)

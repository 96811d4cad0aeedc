"""``vidcache models`` and ``vidcache presets``: what is shipped, without loading anything."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .app import app, guarded, note, out_console


@app.command()
def models(
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the table of docs/models.md.")] = False,
) -> None:
    """Known model names: weights, text or image input, defaults, CFG, context-parallel splits."""
    from rich.table import Table

    from ..models.table import MODES, model_rows
    from ..models.table import markdown as table_markdown
    from ..video import dumps

    rows = model_rows()
    if json_out:
        sys.stdout.write(dumps(rows))
        return
    if markdown:
        sys.stdout.write(table_markdown())
        return
    table = Table(title="vidcache models")
    for col in ("name", "input", "family", "source", "defaults", "constraints"):
        table.add_column(col)
    for r in rows:
        d = r["defaults"]
        size = "size from the image" if r["size_from_image"] else f"{d['height']}x{d['width']}"
        table.add_row(
            r["name"], MODES[r["mode"]], f"{r['family']} ({r['cfg']} CFG)", r["source"],
            f"{d['frames']}f {size}, {d['steps']} steps, cfg {d['guidance']}, {d['fps']} fps",
            f"{r['constraints']['frames']}; sizes multiple of {r['constraints']['size_multiple']}; "
            f"splits: {r['splits']}",
        )
    out_console.print(table)


@app.command("presets")
def presets_cmd(
    model: Annotated[str | None, typer.Argument(help="A model name; all models when left out.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """The shipped presets: each model's defaults and cache method tables.

    With a model name, the preset file exactly as shipped: ``vidcache presets wan > my.toml`` gives a
    file that ``--preset my.toml`` reads back to the same preset, ready to edit."""
    from .. import presets
    from ..caches import check_preset, method_note
    from ..video import dumps

    with guarded(False):
        names = [model] if model else presets.available()
        loaded = {n: check_preset(presets.load(n)) for n in names}
        texts = {n: presets.source_text(n) for n in names}
    notes = {n: {m: text for m in p.methods if (text := method_note(m))} for n, p in loaded.items()}
    if json_out:
        data = {n: {"defaults": p.defaults, **p.methods, **({"method_notes": notes[n]} if notes[n] else {})}
                for n, p in loaded.items()}
        sys.stdout.write(dumps(data))
        return
    for method, text in {m: t for n in names for m, t in notes[n].items()}.items():  # stderr: stdout stays the file
        note(f"note ({method}): {text}")
    if model:
        sys.stdout.write(texts[model])
        return
    for n, text in texts.items():  # each file after a TOML comment naming it
        sys.stdout.write(f"# ---- vidcache presets {n} ({presets.path_of(n)}) ----\n{text}\n")

"""The model line-up as users read it (``vidcache models``, docs/models.md): one row per known name,
from the adapters and the shipped presets, so the table cannot drift from the code."""

from __future__ import annotations

from typing import Any

from .registry import ADAPTERS, NAMES

MODES = {"t2v": "text", "i2v": "image", "ti2v": "text or image"}


def splits(adapter: Any) -> str:
    """The context-parallel splits a family takes under torchrun."""
    out = ["Ulysses", "ring (GPU)"]
    if adapter.cfg_layout != "distilled":
        out.append("CFG-parallel")
    return ", ".join(out)


def model_rows() -> list[dict[str, Any]]:
    from .. import presets

    rows = []
    for n in NAMES.values():
        fam = ADAPTERS[n.family]
        d = presets.load(n.preset).defaults
        rows.append({
            "name": n.name, "family": fam.name, "source": n.source, "description": n.description,
            "aliases": list(n.aliases), "mode": n.mode, "defaults": d, "cfg": fam.cfg_layout,
            "two_experts": n.two_experts, "splits": splits(fam), "size_from_image": n.mode in fam.image_size_modes,
            "constraints": {"frames": fam.frame_rule, "size_multiple": n.size_multiple or fam.size_multiple},
        })
    return rows


def markdown() -> str:
    """The table of docs/models.md."""
    lines = ["| name | weights | input | defaults | CFG | context parallel |", "|---|---|---|---|---|---|"]
    for r in model_rows():
        d = r["defaults"]
        weights = "embedded in vidcache" if r["source"] == "embedded" else f"`{r['source']}`"
        names = f"`{r['name']}`" + "".join(f", `{a}`" for a in r["aliases"])
        cfg = r["cfg"] + (", two experts" if r["two_experts"] else "")
        size = "size from the image" if r["size_from_image"] else f"{d['height']}x{d['width']}"
        lines.append(f"| {names} | {weights} | {MODES[r['mode']]} | {d['frames']} frames, {size}, "
                     f"{d['steps']} steps, {d['fps']} fps | {cfg} | {r['splits']} |")
    return "\n".join(lines) + "\n"

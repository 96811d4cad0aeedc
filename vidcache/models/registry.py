"""Resolve ``--model`` (a known name, a hub id or a local folder) to a family, without loading it.

Everything that can be refused is refused here, before a single weight is read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from . import cogvideox, hunyuan, wan
from .base import FamilySpec, ModelName

FAMILIES: dict[str, FamilySpec] = {m.FAMILY.name: m.FAMILY for m in (wan, cogvideox, hunyuan)}
NAMES: dict[str, ModelName] = {n.name: n for m in (wan, cogvideox, hunyuan) for n in m.NAMES}
_ALIASES = {a: n.name for n in NAMES.values() for a in n.aliases}

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"


@dataclass(frozen=True)
class ResolvedModel:
    """``source`` is what ``from_pretrained`` gets: a hub id or a local folder."""

    name: str
    family: FamilySpec
    source: str
    preset: str
    known: ModelName | None
    two_experts: bool = False

    @property
    def size_multiple(self) -> int:
        if self.known and self.known.size_multiple:
            return self.known.size_multiple
        return self.family.size_multiple

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()


def family_of_index(index: dict, where: str) -> FamilySpec:
    """Detect the family from model_index.json: the pipeline class, else the transformer class."""
    cls = index.get("_class_name", "")
    tr = index.get("transformer") or [None, None]
    tr_cls = tr[1] if isinstance(tr, (list, tuple)) and len(tr) == 2 else None
    for fam in FAMILIES.values():
        if cls == fam.pipeline_class or tr_cls in fam.transformer_classes:
            return fam
    supported = ", ".join(f.pipeline_class for f in FAMILIES.values())
    raise UsageError(
        f"{where}: pipeline {cls or '?'} (transformer {tr_cls or '?'}) is not supported; "
        f"vidcache runs {supported}"
    )


def read_model_index(folder: Path) -> dict:
    idx = folder / "model_index.json"
    if not idx.is_file():
        raise UsageError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    try:
        return json.loads(idx.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"{idx}: unreadable model_index.json ({err})") from None


def _cached_hub_index(repo_id: str) -> dict | None:
    """model_index.json from the local HF cache, or fetched when the hub is reachable."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a dependency of diffusers
        return None
    for local_only in (True, False):
        if not local_only and os.environ.get("HF_HUB_OFFLINE") == "1":
            break
        try:
            path = hf_hub_download(repo_id, "model_index.json", local_files_only=local_only)
            return json.loads(Path(path).read_text())
        except Exception:  # noqa: BLE001 - any miss means "not available": decided by the caller
            continue
    return None


def resolve(model: str) -> ResolvedModel:
    key = _ALIASES.get(model.lower(), model.lower())
    if key in NAMES:
        known = NAMES[key]
        fam = FAMILIES[known.family]
        source = str(EMBEDDED_DIR) if known.source == "embedded" else known.source
        if known.source == "embedded" and not (EMBEDDED_DIR / "model_index.json").is_file():
            raise UsageError(f"the embedded model is missing from {EMBEDDED_DIR}: reinstall vidcache")
        return ResolvedModel(known.name, fam, source, known.preset, known,
                             two_experts=known.name == "wan2.2-t2v-a14b")
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not path.is_dir():
            raise UsageError(f"--model {model}: no such folder")
        index = read_model_index(path)
        fam = family_of_index(index, str(path))
        two = bool(index.get("transformer_2") and index["transformer_2"][0])
        return ResolvedModel(path.name or str(path), fam, str(path.resolve()), fam.name, None, two)
    if model.count("/") == 1 and all(model.split("/")):
        index = _cached_hub_index(model)
        if index is None:
            raise UsageError(
                f"--model {model}: not a known name, not a local folder, and its weights are not in "
                f"the Hugging Face cache (offline?); known names: {', '.join(NAMES)}"
            )
        fam = family_of_index(index, model)
        two = bool(index.get("transformer_2") and index["transformer_2"][0])
        return ResolvedModel(model, fam, model, fam.name, None, two)
    raise UsageError(f"unknown model '{model}'; known names: {', '.join(NAMES)} (or a hub id or a folder)")

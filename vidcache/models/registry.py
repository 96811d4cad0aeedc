"""Resolve ``--model`` (a known name, a hub id or a local folder) to a family adapter and a mode,
without loading it. Everything that can be refused is refused here, before a single weight is read.

Adding a family: write its adapter module (``FamilyAdapter`` subclass, ``ADAPTER``, ``NAMES``) and
add it to ``_FAMILY_MODULES``; docs/models.md lists what else a new family needs.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import hub
from ..errors import UsageError
from . import cogvideox, hunyuan, hunyuan15, wan
from .adapter import FamilyAdapter
from .geometry import config_file
from .spec import ModelName

_FAMILY_MODULES = (wan, cogvideox, hunyuan, hunyuan15)

ADAPTERS: dict[str, FamilyAdapter] = {m.ADAPTER.name: m.ADAPTER for m in _FAMILY_MODULES}
NAMES: dict[str, ModelName] = {n.name: n for m in _FAMILY_MODULES for n in m.NAMES}
_ALIASES = {a: n.name for n in NAMES.values() for a in n.aliases}

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny"


@dataclass(frozen=True)
class ResolvedModel:
    """``source`` is what ``from_pretrained`` gets: a hub id or a local folder. ``family`` is the
    family's adapter; ``mode`` "t2v", "i2v" or "ti2v" (either, until ``for_jobs`` picks one);
    ``pipeline_class`` the diffusers class to load."""

    name: str
    family: FamilyAdapter
    source: str
    preset: str
    known: ModelName | None
    two_experts: bool = False
    mode: str = "t2v"
    pipeline_class: str = ""

    @property
    def size_multiple(self) -> int:
        """Sizes must divide by the VAE's compression times the patch size (32 for Wan 2.2 TI2V-5B)."""
        if self.known and self.known.size_multiple:
            return self.known.size_multiple
        from .geometry import model_geometry

        geo = model_geometry(self) if not self.known else None
        return max(self.family.size_multiple, geo.s_comp * geo.patch) if geo else self.family.size_multiple

    @property
    def max_frames(self) -> int | None:
        return (self.known.max_frames if self.known else None) or self.family.max_frames

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()

    def transformer_config(self) -> dict[str, Any] | None:
        """The folder's (or the HF cache's) ``transformer/config.json``; None when not on disk."""
        return _transformer_config(self.source, self.is_local)

    def for_jobs(self, jobs: list[Any]) -> ResolvedModel:
        """The model in the mode its jobs ask for (image-to-video when they carry an image), or one
        ``UsageError`` line when the model cannot take them."""
        with_image = [j for j in jobs if j.image]
        without = [j for j in jobs if not j.image]
        if with_image and without:
            raise UsageError(f"job {without[0].name} has no image but job {with_image[0].name} has one: a run is "
                             "either image-to-video or text-to-video; split the prompt file")
        want = "i2v" if with_image else "t2v"
        if self.mode == want:
            return self
        if self.mode == "ti2v":
            return replace(self, mode=want, pipeline_class=self.family.pipeline_class(want))
        if want == "i2v":
            raise UsageError(f"--image: {self.name} is a text-to-video model; image-to-video needs one of "
                             f"{', '.join(n.name for n in NAMES.values() if n.mode != 't2v')} "
                             "(or a folder of an image-to-video pipeline)")
        raise UsageError(f"{self.name} is an image-to-video model: give --image PATH, or an 'image' per line "
                         f"of a .jsonl prompt file ({without[0].name} has none)")

    def sized_from_images(self, jobs: list[Any], prompts: list[Any], flags: dict[str, Any]) -> list[Any]:
        """The jobs with the size their image gives, for a pipeline that takes no size
        (``FamilyAdapter.size_from_image``: HunyuanVideo 1.5 image-to-video makes the bucket nearest
        the image's aspect ratio), so that the report, the memory estimate and the split check see the
        video's real size; a height or width asked for (a flag, a .jsonl line) is refused, not ignored.
        Other models' jobs come back as they are."""
        from PIL import Image

        out = []
        for job in jobs:
            size = None
            if job.image:
                with Image.open(job.image) as img:
                    size = self.family.size_from_image(self.mode, img.size, self.transformer_config())
            if size is None:
                out.append(job)
                continue
            line = prompts[job.index]
            asked = ("--height / --width" if any(flags.get(k) is not None for k in ("height", "width")) else
                     f"{line.where}: 'height' / 'width'" if {"height", "width"} & set(line.overrides) else None)
            if asked:
                raise UsageError(f"{asked}: {self.name} takes its size from the image ({job.name or job.where}: "
                                 f"{size[0]}x{size[1]}, the bucket nearest its aspect ratio); drop them")
            out.append(replace(job, height=size[0], width=size[1]))
        return out

    def required_size(self) -> tuple[tuple[int, int] | None, str]:
        """The (height, width) the checkpoint's own config fixes, and why (None: free)."""
        from .geometry import model_geometry

        config, geo = self.transformer_config(), model_geometry(self)
        return self.family.size_rule(config, geo.s_comp) if config and geo else (None, "")

    def required_text_len(self) -> tuple[int | None, str]:
        """The text length the checkpoint's own config fixes, and why (None: any length, or the
        config is not on disk yet: the shipped presets carry the right value for known names)."""
        config = self.transformer_config()
        return self.family.text_len_rule(config, self.mode) if config else (None, "")


@functools.lru_cache(maxsize=32)
def _transformer_config(source: str, is_local: bool) -> dict[str, Any] | None:
    return config_file(source, "transformer/config.json", is_local)


def adapter_named(name: str) -> FamilyAdapter:
    return ADAPTERS[name]


def adapter_of(transformer: Any) -> FamilyAdapter:
    """The adapter of a loaded transformer, from its class; ``UsageError`` for one vidcache lacks."""
    from diffusers.utils.torch_utils import unwrap_module

    cls = type(unwrap_module(transformer)).__name__
    for adapter in ADAPTERS.values():
        if cls in adapter.transformer_classes:
            adapter.register_blocks()
            return adapter
    known = ", ".join(c for a in ADAPTERS.values() for c in a.transformer_classes)
    raise UsageError(f"cannot run a {cls}: vidcache supports {known}")


def family_of_index(index: dict, where: str) -> tuple[FamilyAdapter, str, str]:
    """(adapter, mode, pipeline class) from model_index.json: the pipeline class, else the
    transformer class (then the family's text-to-video pipeline)."""
    cls = index.get("_class_name", "")
    tr = index.get("transformer") or [None, None]
    tr_cls = tr[1] if isinstance(tr, (list, tuple)) and len(tr) == 2 else None
    for adapter in ADAPTERS.values():
        if cls in adapter.pipelines:
            return adapter, adapter.mode_of_index(cls, index), cls
    for adapter in ADAPTERS.values():
        if tr_cls in adapter.transformer_classes:
            return adapter, "t2v", adapter.pipeline_class("t2v")
    supported = ", ".join(c for a in ADAPTERS.values() for c in a.pipelines)
    raise UsageError(
        f"{where}: pipeline {cls or '?'} (transformer {tr_cls or '?'}) is not supported; "
        f"vidcache runs {supported}"
    )


def read_model_index(folder: Path) -> dict:
    idx = folder / "model_index.json"
    if not idx.is_file():
        raise UsageError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    try:
        data = json.loads(idx.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{idx}: unreadable model_index.json ({err})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{idx}: model_index.json is not a JSON object")
    return data


def _cached_hub_index(repo_id: str) -> dict | None:
    """model_index.json from the local HF cache, or fetched when the hub is reachable."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a dependency of diffusers
        return None
    for local_only in (True, False):
        if not local_only and not hub.reachable():  # offline: fail now, not after the hub's retries
            break
        try:
            path = hf_hub_download(repo_id, "model_index.json", local_files_only=local_only)
            return json.loads(Path(path).read_text())
        except Exception:  # noqa: BLE001 - any miss means "not available": decided by the caller
            continue
    return None


def _from_index(name: str, source: str, index: dict, where: str) -> ResolvedModel:
    adapter, mode, cls = family_of_index(index, where)
    two = bool(index.get("transformer_2") and index["transformer_2"][0])
    return ResolvedModel(name, adapter, source, adapter.folder_preset(mode), None, two, mode, cls)


def resolve(model: str) -> ResolvedModel:
    key = _ALIASES.get(model.lower(), model.lower())
    if key in NAMES:
        known = NAMES[key]
        adapter = ADAPTERS[known.family]
        source = str(EMBEDDED_DIR) if known.source == "embedded" else known.source
        if known.source == "embedded" and not (EMBEDDED_DIR / "model_index.json").is_file():
            raise UsageError(f"the embedded model is missing from {EMBEDDED_DIR}: reinstall vidcache")
        return ResolvedModel(known.name, adapter, source, known.preset, known, known.two_experts, known.mode,
                             adapter.pipeline_class(known.mode))
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not path.is_dir():
            raise UsageError(f"--model {model}: no such folder")
        return _from_index(path.name or str(path), str(path.resolve()), read_model_index(path), str(path))
    if model.count("/") == 1 and all(model.split("/")):
        index = _cached_hub_index(model)
        if index is None:
            raise UsageError(
                f"--model {model}: not a known name, not a local folder, and its weights are not in "
                f"the Hugging Face cache (offline?); known names: {', '.join(NAMES)}"
            )
        return _from_index(model, model, index, model)
    raise UsageError(f"unknown model '{model}'; known names: {', '.join(NAMES)} (or a hub id or a folder)")

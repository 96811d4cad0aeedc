"""Caching methods and the public API that attaches them to a pipeline.

The runner relies on exactly these five calls: ``method_fields`` (to validate presets and
``--set``), ``apply_cache``, ``reset_cache`` (before every video), ``cache_stats`` (after every
video) and ``remove_cache``. ``vidcache.apply_cache(pipe, "teacache", preset="wan", thresh=0.1)``
works the same from a notebook.

Adding a method: write ``<method>.py`` with a config dataclass and ``apply_<method>(transformer,
config, *, pipeline=None)`` (see ``base.py``), then add one line to ``REGISTRY``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import base
from .adacache import AdaCacheConfig, apply_adacache
from .base import CacheError
from .baselines import (
    FBCacheConfig,
    MagCacheBaselineConfig,
    SeaCacheBaselineConfig,
    TaylorSeerConfig,
    apply_fbcache,
    apply_magcache,
    apply_seacache,
    apply_taylorseer,
)
from .fastercache import FasterCacheConfig, apply_fastercache
from .mixcache import MixCacheConfig, apply_mixcache
from .pab import PABConfig, apply_pab
from .teacache import TeaCacheConfig, apply_teacache


@dataclass(frozen=True)
class CacheMethod:
    config: type
    apply: Callable[..., None]
    note: str | None = None  # what a user must know about where the method comes from


MIXCACHE_NOTE = (
    "MixCache here is our own design on the MixCache paper's abstract (arXiv 2508.12691: step, CFG and "
    "block reuse, a trigger, a per-step choice); no official code exists, so it is not the authors' method "
    "and its numbers are not theirs"
)


REGISTRY: dict[str, CacheMethod] = {
    "pab": CacheMethod(PABConfig, apply_pab),
    "fastercache": CacheMethod(FasterCacheConfig, apply_fastercache),
    "teacache": CacheMethod(TeaCacheConfig, apply_teacache),
    "adacache": CacheMethod(AdaCacheConfig, apply_adacache),
    "mixcache": CacheMethod(MixCacheConfig, apply_mixcache, MIXCACHE_NOTE),
    # diffusers' own caches as baselines (reported as diffusers-<name>)
    "fbcache": CacheMethod(FBCacheConfig, apply_fbcache),
    "taylorseer": CacheMethod(TaylorSeerConfig, apply_taylorseer),
    "magcache": CacheMethod(MagCacheBaselineConfig, apply_magcache),
    "seacache": CacheMethod(SeaCacheBaselineConfig, apply_seacache),
}

# other spellings a user may type; presets use the canonical name's table
ALIASES: dict[str, str] = {
    f"diffusers-{name}": name for name in ("fbcache", "taylorseer", "magcache", "seacache")
}


def canonical(method: str) -> str:
    """The registry name of ``method`` (``diffusers-fbcache`` -> ``fbcache``)."""
    return ALIASES.get(method, method)


def report_name(method: str) -> str:
    """The name reports use: diffusers' own caches say so (``diffusers-fbcache``)."""
    method = canonical(method)
    return f"diffusers-{method}" if f"diffusers-{method}" in ALIASES else method


METHOD_NAMES: tuple[str, ...] = ("none", *REGISTRY)

__all__ = [
    "METHOD_NAMES",
    "REGISTRY",
    "CacheError",
    "apply_cache",
    "cache_stats",
    "check_preset",
    "method_fields",
    "method_note",
    "remove_cache",
    "reset_cache",
]


def check_preset(preset: Any) -> Any:
    """Every method table of a loaded ``vidcache.presets.Preset`` names a known method and only its
    parameters (``UsageError``, one line, naming the file); returns the preset."""
    from ..errors import UsageError
    from ..presets import check_method_table

    where = preset.where or preset.name
    for method, table in preset.methods.items():
        check_method_table(method, table, method_fields(method), where)
    for method, values in preset.tuned.items():
        if isinstance(values, dict) and (method == "none" or method_fields(method) is None):
            raise UsageError(f"{where}: [tuned.{method}] names no cache method (known: {', '.join(REGISTRY)})")
    return preset


def method_note(method: str) -> str | None:
    """The note reports, ``vidcache presets`` and the docs show beside a method (None: none needed)."""
    spec = REGISTRY.get(canonical(method))
    return spec.note if spec else None


def method_fields(method: str) -> set[str] | None:
    """Parameter names a preset table or ``--set`` may use for ``method``; None if unknown."""
    if method == "none":
        return set()
    spec = REGISTRY.get(canonical(method))
    return base.config_fields(spec.config) if spec else None


def stated_for(method: str, params: dict[str, Any], steps: int | None) -> dict[str, Any]:
    """``params`` with ``schedule_steps = steps`` when ``method`` has step-counted parameters and the
    table does not say what they are stated for: a preset's tables are stated for its ``[defaults]
    steps``, so a run with other steps rescales them (``caches/steps.py``)."""
    fields = method_fields(method) or set()
    if steps is None or "schedule_steps" not in fields or "schedule_steps" in params:
        return params
    return {**params, "schedule_steps": steps}


def transformers_of(pipe: Any) -> list[torch.nn.Module]:
    """The denoisers of a pipeline (two for Wan 2.2 A14B), or ``pipe`` itself if it is one."""
    if isinstance(pipe, torch.nn.Module) and not hasattr(pipe, "components"):
        return [pipe]
    found = [getattr(pipe, name, None) for name in ("transformer", "transformer_2")]
    return [t for t in found if t is not None]


def preset_params(preset: str, method: str) -> dict[str, Any]:
    """The ``[method]`` table of a shipped preset, by preset or model name (aliases included)."""
    from .. import presets
    from ..errors import UsageError
    from ..models import NAMES

    name = preset.lower()
    if name not in presets.available():
        for model in NAMES.values():
            if name == model.name or name in model.aliases:
                name = model.preset
                break
    try:
        loaded = check_preset(presets.load(name))
        return stated_for(method, presets.method_params(loaded, method, None), loaded.defaults.get("steps"))
    except UsageError as err:
        raise CacheError(str(err)) from None


def apply_cache(
    pipe: Any,
    method: str,
    preset: str | None = None,
    *,
    params: dict | None = None,
    **overrides: Any,
) -> dict:
    """Attach ``method`` to every transformer of ``pipe``, each with its own state.

    Parameters, lowest priority first: the config's defaults < ``preset``'s ``[method]`` table
    (a shipped model preset: "wan", "cogvideox", "hunyuan", "tiny", ...) < ``params`` (an already
    merged table; replaces the preset's) < ``overrides``. Unknown keys raise ``ValueError``.
    Any cache attached earlier is removed first. Returns the effective parameters (JSON-ready).
    """
    method = canonical(method)
    if method != "none" and method not in REGISTRY:
        raise CacheError(f"unknown cache method '{method}' (known: {', '.join(METHOD_NAMES)})")
    if params is not None:
        table = dict(params)
    elif preset is not None:
        table = preset_params(preset, method) if method != "none" else {}
    else:
        table = {}
    table.update(overrides)
    if method == "none":
        if table:
            raise CacheError(f"unknown none parameter '{next(iter(table))}' (none takes none)")
        remove_cache(pipe)
        return {}
    spec = REGISTRY[method]
    config = base.build_config(spec.config, table, method)
    transformers = transformers_of(pipe)
    if not transformers:
        raise CacheError(f"{type(pipe).__name__} has no transformer to cache")
    for transformer in transformers:
        base.layout_of(transformer)  # refuse an unsupported model before touching anything
    remove_cache(pipe)
    link = None if transformers == [pipe] else base.PipelineLink.of(pipe, base.layout_of(transformers[0]))
    effective: dict[str, Any] = {}
    for i, transformer in enumerate(transformers):
        try:
            spec.apply(transformer, config, pipeline=link)
        except BaseException:
            remove_cache(pipe)  # never leave a method half attached
            raise
        params = base.forward_hook(transformer).params
        if i == 0:  # live: a method may add what it resolves at run time (AdaCache's codebook)
            effective = params
        elif params != effective:
            effective[f"transformer_{i + 1}"] = params
    return effective


def reset_cache(pipe: Any) -> None:
    """Forget every cached tensor, counter and statistic: the next video starts clean."""
    for transformer in transformers_of(pipe):
        base.reset_hooks(transformer)


def cache_stats(pipe: Any) -> dict:
    """What the cache did during the last video (see ``base.py`` for how units are counted)."""
    return base.collect_stats(transformers_of(pipe))


def remove_cache(pipe: Any) -> None:
    """Detach every vidcache hook; the pipeline then reproduces uncached output exactly."""
    for transformer in transformers_of(pipe):
        base.remove_hooks(transformer)

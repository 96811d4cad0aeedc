"""Caching methods and the public API that attaches them to a pipeline.

The runner relies on exactly these five calls: ``method_fields`` (to validate presets and
``--set``), ``apply_cache``, ``reset_cache`` (before every video), ``cache_stats`` (after every
video) and ``remove_cache``.
"""

from __future__ import annotations

from typing import Any

METHOD_NAMES = ("none",)


def method_fields(method: str) -> set[str] | None:
    """Parameter names a preset table or ``--set`` may use for ``method``; None if unknown."""
    return set() if method == "none" else None


def apply_cache(pipe: Any, method: str, preset: str | None = None, **overrides: Any) -> dict:
    """Attach ``method`` to every transformer of ``pipe``; returns the effective parameters."""
    if method != "none":
        raise ValueError(f"unknown cache method '{method}'")
    return {}


def reset_cache(pipe: Any) -> None:
    """Forget every cached tensor and counter: the next video starts clean."""


def cache_stats(pipe: Any) -> dict:
    """What the cache did during the last video."""
    return {"compute_ratio": 1.0, "steps_reused": 0, "per_step": [], "memory_bytes": 0}


def remove_cache(pipe: Any) -> None:
    """Detach every hook; the pipeline then reproduces uncached output exactly."""

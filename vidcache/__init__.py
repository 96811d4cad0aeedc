"""vidcache: fast video generation with training-free feature caching for diffusers video DiTs.

``import vidcache`` loads no torch: the caching API is imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "apply_cache", "remove_cache"]


def __getattr__(name: str) -> Any:
    if name in ("apply_cache", "remove_cache"):
        from . import caches

        return getattr(caches, name)
    raise AttributeError(f"module 'vidcache' has no attribute {name!r}")

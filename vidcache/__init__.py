"""vidcache: fast video generation with training-free feature caching for diffusers video DiTs."""

from __future__ import annotations

__version__ = "0.1.0"

from .caches import apply_cache, remove_cache  # noqa: E402

__all__ = ["__version__", "apply_cache", "remove_cache"]

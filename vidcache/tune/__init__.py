"""``vidcache tune``: a preset for any model, step count and quality target.

A method's knobs mean little across models (a TeaCache threshold right for Wan 1.3B at 50 steps is
wrong for 14B, for 30 steps, for a LoRA). ``tune`` measures instead: it renders the uncached video of
each tuning prompt once (``store.py``: kept on disk, reused by every method and every rerun), moves
each method's knob (``knobs.py``) from gentle to aggressive, and keeps the fastest setting whose mean
PSNR against those references meets the target, or the best PSNR at a target speedup (``search.py``),
bracketing on a few prompts and confirming on all. The result is a ``--preset`` fragment with a
``[tuned]`` table of the measurements (``fragment.py``), from which ``--cache auto`` picks
(``auto.py``; imported by ``runner.plan_run``, torch-free).

    from vidcache.tune import plan_tune, run_tune, check_target   # (these import torch on first use)
"""

from __future__ import annotations

from typing import Any

from .auto import choose

_LAZY = {"plan_tune": "tuner", "check_target": "tuner", "TunePlan": "tuner", "TuneResult": "tuner",
         "DEFAULT_METHODS": "tuner", "Target": "search", "run_tune": "tuner"}


def __getattr__(name: str) -> Any:
    """The search and its types load torch: imported on first use, so that ``plan_run`` (which needs
    only ``auto``) stays light."""
    if name not in _LAZY:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)


__all__ = ["choose", *_LAZY]

"""``--compile``: torch.compile the transformer blocks *below* the cache hooks, never the cache logic.

Why this granularity. diffusers' ``HookRegistry`` (which every vidcache cache uses) replaces an
instance's ``module.forward`` with a Python wrapper around the previous ``forward``. So:

* ``module.compile()`` / ``torch.compile(module)`` compiles ``_call_impl``, which looks up
  ``self.forward`` at run time, i.e. the hook wrappers. Dynamo would then trace the cache's
  decision code (counters, per-branch dicts, timestep windows): every new counter value is a new
  guard, so reuse steps would recompile until the recompile limit and then silently run eager,
  and a decision that reads the device would be a graph break. This is what "compiling the
  cached forward" means, and what the METHODS.md rule forbids.
* Compiling the transformer's whole forward has the same problem (the hooks of the blocks and
  attention modules are called from inside it) and puts the skip logic of TeaCache / AdaCache in
  the graph.

So vidcache compiles the *original* forward of the largest hook-free modules at or below each
block, and installs the compiled function underneath whatever hooks the module carries (as the
innermost forward of its hook chain). The hooks keep running eagerly on top of it; a reuse step
simply does not call the compiled function, so it cannot trigger a recompile, and no cache code
is ever traced, so caching adds no graph break. Concretely, per block:

* no hook strictly inside the block (no cache, TeaCache, AdaCache, FasterCache's CFG-Cache, and
  any block-level method): the block's own forward is compiled, one graph per block class
  shared by every block of that class (dynamo treats the module as an input, so 30 Wan blocks and
  both Wan 2.2 experts share one compiled graph);
* hooks on modules inside the block (PAB and FasterCache hook attention modules): the block's
  glue (modulation, residual adds, norms) stays eager and each hook-free child that holds a
  ``Linear`` (the attention modules, below their hooks, and the feed-forward) is compiled on its
  own. This loses the fusion of the block's elementwise glue; the alternative, compiling the block
  with the hooked attention calls left out of the graph, *is* a graph break per attention. Making
  a whole block one graph under attention-level caches would need the hooked attention call to be
  an opaque custom op (see the note at the end).

Compilation is lazy (the first forward compiles), uses ``fullgraph=True`` (a graph break inside a
block is an error, not a silent slowdown) and inductor by default. The plan is recomputed whenever
the cache changes (``compile_pipeline`` is idempotent): ``vidcache bench`` swaps methods on one
loaded pipeline, and a block compiled whole for TeaCache must not stay compiled whole under PAB.
Compiled functions are kept per module and reinstalled, so swapping back does not recompile.
Shapes: ``dynamic=None`` (torch's default): the first shape is compiled static, a shape change
(a new video size, or FasterCache's cond-only half batch on CogVideoX) recompiles once with the
changing dimensions dynamic, so a batch of videos of one size compiles during the first video
only.

Note: whole-block graphs under PAB / FasterCache would need each hooked attention call to be
one opaque ``torch.library.custom_op`` (its eager body: the hook chain; its fake kernel: the
attention's own forward on fake parameters; its output cloned, since inductor may reuse an
opaque op's output buffer in place and would corrupt a cached tensor). Not done: the custom op
must identify the module through a tensor input (an ``int`` attribute would be a guard and
specialise the graph per block), which fights ``.to(device)`` and offloading.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from .errors import UsageError

_ORIGINAL = "_vidcache_uncompiled"  # attribute of a compiled function: the function it replaced
_CACHE = "_vidcache_compiled"  # attribute of a module: {options: compiled function}

# VIDCACHE_COMPILE_BACKEND picks another torch.compile backend ("aot_eager" traces exactly what
# inductor would, without generating kernels: for debugging, and for the tests on small CPUs).
DEFAULT_OPTIONS: dict[str, Any] = {"backend": "inductor", "mode": None, "dynamic": None, "fullgraph": True}


def default_options() -> dict[str, Any]:
    return {**DEFAULT_OPTIONS, "backend": os.environ.get("VIDCACHE_COMPILE_BACKEND") or DEFAULT_OPTIONS["backend"]}


def _hooked(module: torch.nn.Module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return bool(registry is not None and registry._fn_refs) or hasattr(module, "_hf_hook")


def _has_hooked_descendant(module: torch.nn.Module) -> bool:
    return any(_hooked(m) for name, m in module.named_modules() if name)


def _has_linear(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Linear) for m in module.modules())


def plan_regions(block: torch.nn.Module, prefix: str = "") -> list[tuple[str, torch.nn.Module]]:
    """The largest modules at or below ``block`` with no hook strictly inside them (their own
    hooks are fine: the compiled function goes underneath), skipping pieces without a ``Linear``
    (a lone norm gains nothing from a graph of its own)."""
    if not _has_hooked_descendant(block):
        return [(prefix, block)] if _has_linear(block) else []
    out: list[tuple[str, torch.nn.Module]] = []
    for name, child in block.named_children():
        out += plan_regions(child, f"{prefix}.{name}" if prefix else name)
    return out


# -- the innermost forward of a module's hook chain ------------------------------------------


def _get_inner(module: torch.nn.Module) -> Callable:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and registry._fn_refs:
        ref = registry._fn_refs[0]
        return ref.original_forward if ref.original_forward is not None else ref.forward
    return module.forward


def _set_inner(module: torch.nn.Module, fn: Callable | None) -> None:
    """Install ``fn`` as the innermost forward; None restores the class's own ``forward``."""
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and registry._fn_refs:
        ref = registry._fn_refs[0]
        bound = fn if fn is not None else type(module).forward.__get__(module)
        if ref.original_forward is not None:
            ref.original_forward = bound
        else:
            ref.forward = bound
        return
    if fn is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = fn


def _is_compiled(fn: Any) -> bool:
    return callable(fn) and hasattr(fn, _ORIGINAL)


def _compiled_forward(module: torch.nn.Module, options: dict[str, Any]) -> Callable:
    key = tuple(sorted((k, repr(v)) for k, v in options.items()))
    cache = module.__dict__.setdefault(_CACHE, {})
    if key not in cache:
        original = type(module).forward.__get__(module)
        fn = torch.compile(original, **options)
        setattr(fn, _ORIGINAL, original)
        cache[key] = fn
    return cache[key]


# -- public ----------------------------------------------------------------------------------


def blocks_of(transformer: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """The blocks of a supported transformer, as its family's adapter lists them."""
    from .models import adapter_of

    try:
        adapter = adapter_of(transformer)
    except UsageError as err:
        raise UsageError(f"--compile: {err}") from None
    yield from adapter.blocks(transformer)


def uncompile_transformer(transformer: torch.nn.Module) -> None:
    """Put every module's own ``forward`` back underneath its hooks (compiled code is kept for reuse)."""
    for _, module in transformer.named_modules():
        if _is_compiled(_get_inner(module)):
            _set_inner(module, None)


def compile_transformer(transformer: torch.nn.Module, **options: Any) -> list[str]:
    """Compile the hook-free regions of every block (module docstring); returns their names.

    Call again after attaching or removing a cache: the regions follow the hooks. ``options`` go
    to ``torch.compile`` (default: inductor, or ``$VIDCACHE_COMPILE_BACKEND``; ``fullgraph=True``,
    ``dynamic=None``).
    """
    opts = {**default_options(), **options}
    if any(hasattr(m, "_hf_hook") for m in transformer.modules() if m is not transformer):
        raise UsageError("--compile does not work with --sequential-offload (it hooks every layer)")
    uncompile_transformer(transformer)
    names = []
    for block_name, block in blocks_of(transformer):
        for name, module in plan_regions(block, block_name):
            _set_inner(module, _compiled_forward(module, opts))
            names.append(name)
    return names


def compile_pipeline(pipe: Any, **options: Any) -> list[str]:
    """``compile_transformer`` on each denoiser of ``pipe`` (two for Wan 2.2 A14B)."""
    from .loading import transformers_of

    names = []
    for i, transformer in enumerate(transformers_of(pipe)):
        prefix = "" if i == 0 else f"transformer_{i + 1}."
        names += [prefix + n for n in compile_transformer(transformer, **options)]
    return names


def uncompile_pipeline(pipe: Any) -> None:
    from .loading import transformers_of

    for transformer in transformers_of(pipe):
        uncompile_transformer(transformer)

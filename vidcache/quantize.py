"""``--quantize none|fp8|int8``: torchao quantization of the transformer blocks' linear layers.

The modes:

* ``int8``: int8 weight-only (torchao ``Int8WeightOnlyConfig``, one scale per output channel). The
  weights take half the memory of bf16 (a quarter of fp32); the matmul still runs in the model's
  dtype on weights dequantized on the fly, so it saves memory, not time (on a CPU it is usually
  slower than the unquantized model). Runs everywhere, CPU included.
* ``fp8``: float8 (e4m3) dynamic activation and weight quantization, one scale per row (torchao
  ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())``): the matmuls run on the fp8
  tensor cores of GPUs of compute capability 8.9 or newer (Ada, Hopper, Blackwell), and are
  refused elsewhere before any weight loads.

What is quantized: the ``Linear`` layers inside the transformer blocks (as the family's adapter
lists them: Wan's ``blocks``, CogVideoX's ``transformer_blocks``, HunyuanVideo's dual- and
single-stream blocks), of both experts for Wan 2.2 A14B. They hold 97-99.7 % of the weights of the real models
(Wan2.1-1.3B 98.1 %, Wan2.1-14B 98.3 %, CogVideoX-5B 99.6 %, HunyuanVideo 97.2 %). The patch
embedding, the time and text embedders, the output norm and projection keep the model's dtype:
they cost a few percent, the time embedding is TeaCache's indicator on Wan and CogVideoX (its
coefficients were fitted on an unquantized embedding, in fp32), so TeaCache decides on those
families exactly as without quantization, and the output projection writes the prediction itself.
fp8 also leaves a ``Linear`` whose dimensions are not multiples of 16 (``torch._scaled_mm``'s rule;
none in the real models), counted in the report as ``skipped``.

Why this order (after loading, before caches, compile and context parallelism):

* Caches hook blocks and attention modules. Quantization only replaces ``weight`` parameters with
  torchao tensor subclasses; every module stays the same object, so hooks attach as usual and a
  cache never touches a weight. Their statistics and skip schedules are unchanged
  (``tests/test_quantize.py`` compares the per-step actions with the unquantized run's).
* ``--compile`` traces the quantized weights' dispatch (dequantize + matmul, or the fp8 scaled
  matmul) inside the compiled block regions, so it must see them already quantized.
* Offloading: diffusers' model and group offloading move torchao tensors (they implement copies,
  pinning, and diffusers' group offloading swaps their inner tensors). With offloading on, the
  weights are quantized on the CPU before it is enabled; otherwise each layer is moved to the device
  and quantized there (fast on a GPU, and the unquantized blocks never sit on the GPU all at once).
* Context parallelism: every rank holds all the weights and quantizes them the same way
  (deterministic), so the ranks still compute one model.

``vidcache bench`` compares quantized and unquantized runs on one load: ``quantize_pipeline(...,
keep_original=True)`` keeps both weight sets and ``WeightSets.use`` swaps them in place.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import UsageError

MODES = ("none", "fp8", "int8")
SCHEMES = {
    "int8": "int8 weight-only, per-channel scales (torchao Int8WeightOnlyConfig)",
    "fp8": "float8 e4m3 dynamic activation + weight, per-row scales "
           "(torchao Float8DynamicActivationFloat8WeightConfig, PerRow)",
}
MIN_TORCHAO = "0.15.0"  # the configs' version-2 tensors; diffusers 0.42.1 asks for the same
FP8_CAPABILITY = (8, 9)
_INSTALL = "pip install 'vidcache[quant]'"
# loggers that torchao's import fills: one warning per CUDA extension it cannot load (every CPU
# machine) and one per enum it registers with torch's pytree
_NOISY = ("torchao", "torch.utils._pytree")


def import_torchao_quietly() -> bool:
    """Import torchao (if installed) with its import-time warnings silenced; True if it is there.

    diffusers imports torchao on every pipeline load once it is installed, so vidcache imports it
    first, quietly (``loading.quiet_libraries``); nothing torchao says afterwards is hidden.
    """
    if importlib.util.find_spec("torchao") is None:
        return False
    loggers = [logging.getLogger(name) for name in _NOISY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import torchao.quantization  # noqa: F401

        # and what diffusers imports of torchao (its safetensors support registers more enums)
        importlib.import_module("diffusers.quantizers.torchao")
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return True


def torchao_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchao")
    except PackageNotFoundError:
        return None


def check_quantize(mode: str, device: str) -> None:
    """Refuse, before any weight loads, a mode this machine cannot run (one line each)."""
    if mode not in MODES:
        raise UsageError(f"--quantize {mode}: expected {', '.join(MODES)}")
    if mode == "none":
        return
    found = torchao_version()
    if found is None:
        raise UsageError(f"--quantize {mode} needs the 'torchao' package: {_INSTALL}")
    from packaging.version import Version

    if Version(found) < Version(MIN_TORCHAO):
        raise UsageError(f"--quantize {mode}: torchao {found} is too old (vidcache needs {MIN_TORCHAO} or newer): "
                         f"pip install -U 'vidcache[quant]'")
    if mode != "fp8":
        return
    if device != "cuda":
        raise UsageError(f"--quantize fp8 needs a CUDA GPU with fp8 matmuls (compute capability 8.9 or newer: "
                         f"Ada, Hopper, Blackwell); on {device} use --quantize int8")
    cap = torch.cuda.get_device_capability()
    if cap < FP8_CAPABILITY:
        raise UsageError(f"--quantize fp8: {torch.cuda.get_device_name()} (compute capability {cap[0]}.{cap[1]}) "
                         "has no fp8 matmuls (8.9 or newer needed); use --quantize int8")


def _config(mode: str, device: str):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig, PerRow

    # torchao's recommended inductor settings are for GPUs (Triton autotuning); on a CPU they only
    # slow compilation down
    tune = device == "cuda"
    if mode == "int8":
        return Int8WeightOnlyConfig(set_inductor_config=tune)
    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=tune)


def _fits(mode: str, layer: torch.nn.Linear) -> bool:
    return mode != "fp8" or (layer.in_features % 16 == 0 and layer.out_features % 16 == 0)


@dataclass
class WeightSets:
    """The quantized layers of one pipeline; with ``keep_original``, their unquantized weights too."""

    mode: str
    layers: list[tuple[torch.nn.Linear, torch.nn.Parameter, torch.nn.Parameter | None]] = field(default_factory=list)
    skipped: int = 0

    def use(self, quantized: bool) -> None:
        """Put the quantized (or, if kept, the original) weights in place."""
        for layer, q, original in self.layers:
            if not quantized and original is None:
                raise RuntimeError("the unquantized weights were not kept (quantize_pipeline(keep_original=True))")
            layer.weight = q if quantized else original


def _target_layers(transformer: torch.nn.Module) -> list[torch.nn.Linear]:
    """The ``Linear`` layers inside the blocks, as the family's adapter lists the blocks."""
    from .models import adapter_of

    try:
        adapter = adapter_of(transformer)
    except UsageError as err:
        raise UsageError(f"--quantize: {err}") from None
    return [m for _, block in adapter.blocks(transformer) for m in block.modules() if isinstance(m, torch.nn.Linear)]


def quantize_pipeline(pipe: Any, mode: str, *, device: str | torch.device | None = None,
                      keep_original: bool = False) -> WeightSets | None:
    """Quantize the blocks' linear layers of every transformer of ``pipe`` (module docstring).

    ``device``: move each layer there before quantizing it (None: where it is). Returns None for
    ``none``; call ``check_quantize`` first for a clear refusal.
    """
    if mode == "none":
        return None
    from .loading import transformers_of

    import_torchao_quietly()
    from torchao.quantization import quantize_

    where = str(device) if device is not None else "cpu"
    config = _config(mode, "cuda" if where.startswith("cuda") else "cpu")
    sets = WeightSets(mode)
    for transformer in transformers_of(pipe) or [pipe]:
        for layer in _target_layers(transformer):
            if not _fits(mode, layer):
                sets.skipped += 1
                continue
            original = layer.weight
            quantize_(layer, config, filter_fn=lambda m, _fqn: isinstance(m, torch.nn.Linear), device=device)
            if keep_original and layer.weight.device != original.device:
                original = torch.nn.Parameter(original.detach().to(layer.weight.device), requires_grad=False)
            sets.layers.append((layer, layer.weight, original if keep_original else None))
    return sets


def _mode_of(weight: torch.Tensor) -> str | None:
    name = type(weight).__name__
    if name.startswith("Int8"):
        return "int8"
    if name.startswith("Float8"):
        return "fp8"
    return None


def describe(pipe: Any) -> dict[str, Any]:
    """What the transformers' block weights are now (for the report): the mode, the scheme, the
    quantized layer count, the torchao version. Read from the weights themselves, so a bench that
    swaps weight sets reports what really ran."""
    from .loading import transformers_of

    modes: dict[str, int] = {}
    for transformer in transformers_of(pipe) or [pipe]:
        for layer in _target_layers(transformer):
            mode = _mode_of(layer.weight)
            if mode:
                modes[mode] = modes.get(mode, 0) + 1
    if not modes:
        return {"mode": "none"}
    mode = max(modes, key=modes.get)
    return {"mode": mode, "scheme": SCHEMES[mode], "layers": modes[mode], "torchao": torchao_version()}

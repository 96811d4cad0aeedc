"""Load a pipeline once, the way every model family needs it: safetensors only, local files first."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from .errors import UsageError
from .models import ResolvedModel

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# --attention value -> (diffusers backend name, package that provides it)
ATTENTION = {
    "sdpa": ("native", None),
    "xformers": ("xformers", "xformers"),
    "flash": ("flash", "flash_attn"),
    "sage": ("sage", "sageattention"),
}
_EXTRA = {"xformers": "pip install 'vidcache[xformers]'", "flash_attn": "pip install flash-attn",
          "sageattention": "pip install sageattention"}


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"
    offload: bool = False
    sequential_offload: bool = False


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: expected auto, cpu or cuda")
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: expected auto, bf16, fp16 or fp32")
    return DTYPES[dtype]


def check_attention(attention: str, device: str) -> str | None:
    """The diffusers backend to set, or None for diffusers' default (SDPA); refuses what can't run."""
    if attention == "auto":
        return None
    if attention not in ATTENTION:
        raise UsageError(f"--attention {attention}: expected auto, {', '.join(ATTENTION)}")
    backend, package = ATTENTION[attention]
    if package and importlib.util.find_spec(package) is None:
        raise UsageError(f"--attention {attention} needs the '{package}' package: {_EXTRA[package]}")
    if package and device != "cuda":
        raise UsageError(f"--attention {attention} needs a CUDA device (use sdpa on {device})")
    return backend


def check_offload(opts: LoadOptions, device: str) -> None:
    if (opts.offload or opts.sequential_offload) and device != "cuda":
        raise UsageError("--offload moves weights between CPU and GPU: it needs --device cuda")


def transformers_of(pipe) -> list[torch.nn.Module]:
    """The denoisers: one, or Wan 2.2 A14B's two experts."""
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


def quiet_libraries() -> None:
    """diffusers' and transformers' own progress bars and notices would shred vidcache's display."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.disable_progress_bar()
        lib.utils.logging.set_verbosity_error()


def load_pipeline(model: ResolvedModel, opts: LoadOptions):
    """``from_pretrained`` with safetensors only; offline misses become one clear line."""
    import diffusers

    quiet_libraries()
    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)
    backend = check_attention(opts.attention, device)
    check_offload(opts, device)
    cls = getattr(diffusers, model.family.pipeline_class)
    # Wan's VAE is numerically fragile in half precision; the reference code keeps it in fp32.
    dtypes = {"default": dtype, "vae": torch.float32} if model.family.name == "wan" else dtype
    kwargs = {"dtype": dtypes, "use_safetensors": True}
    local_first = not model.is_local and os.environ.get("HF_HUB_OFFLINE") != "1"
    try:
        try:
            pipe = cls.from_pretrained(model.source, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            if not local_first:
                raise
            pipe = cls.from_pretrained(model.source, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if model.is_local:
            raise UsageError(f"--model {model.source}: cannot load the pipeline ({first})") from None
        raise UsageError(
            f"--model {model.name}: weights for {model.source} are not available locally and could not "
            f"be downloaded (offline?); fetch them once with `hf download {model.source}`"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.eval()
    if backend:
        for tr in transformers_of(pipe):
            tr.set_attention_backend(backend)
    if opts.sequential_offload:
        pipe.enable_sequential_cpu_offload()
    elif opts.offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    return pipe, device, dtype

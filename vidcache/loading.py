"""Load a pipeline once, the way every model family needs it: safetensors only, local files first."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from . import hub
from .errors import UsageError
from .models import FamilyAdapter, ResolvedModel
from .quantize import check_quantize, import_torchao_quietly, quantize_pipeline

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# --attention value -> (diffusers backend name, package that provides it)
ATTENTION = {
    "sdpa": ("native", None),
    "xformers": ("xformers", "xformers"),
    "flash": ("flash", "flash_attn"),
    "sage": ("sage", "sageattention"),
}
_EXTRA = {"xformers": "pip install 'vidcache[xformers]'", "flash_attn": "pip install flash-attn",
          "sageattention": "build SageAttention 2 from its source repository (thu-ml/SageAttention); PyPI's "
                           "sageattention is 1.x, which diffusers does not use"}
SAGE_VERSION = "2.1.1"  # what diffusers 0.42.1's "sage" backend asks for


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"
    offload: bool = False
    sequential_offload: bool = False
    group_offload: bool = False  # diffusers' block-level group offloading (CUDA streams)
    compile: bool = False  # torch.compile the transformer blocks (vidcache.compile)
    quantize: str = "none"  # none, fp8, int8: the blocks' linear layers (vidcache.quantize)


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


def pick_attention(device: str, family: FamilyAdapter | None = None, dtype: torch.dtype | None = None) -> str | None:
    """What ``--attention auto`` runs: the fastest exact backend for the device, or None for
    diffusers' default, PyTorch SDPA (which picks its own kernel per device and shape).

    The rule, from measurements (one H100, bf16, Wan2.1-1.3B at 32,760 tokens): the default SDPA
    (0.657 s a forward) beat SDPA forced to cuDNN (0.681 s), to flash (0.891 s) and to
    mem-efficient (1.453 s), so on CPU and on CUDA the default is SDPA. The one exception is
    FlashAttention-3 (``flash_attn_interface``), an exact kernel written for Hopper: chosen on an
    sm90 GPU in bf16/fp16 for families whose adapter allows it (``flash3_auto``: Wan) when
    installed, one process only (diffusers' FA3 backend takes no attention mask, which HunyuanVideo
    needs, nor context parallelism; CogVideoX's attention calls SDPA itself). ``scripts/bench_gpu.py``
    times the backends, so the rule can be re-checked on
    each card. Never chosen automatically: SageAttention (quantises Q.K to int8: not exact),
    flash-attn 2 and xformers (the same class of kernel as SDPA's flash, measured slower).
    """
    if device != "cuda" or family is None or not family.flash3_auto or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    if dtype not in (torch.bfloat16, torch.float16) or not flash_attention_3_available():
        return None
    return "_flash_3" if torch.cuda.get_device_capability()[0] == 9 else None


def flash_attention_3_available() -> bool:
    """FlashAttention-3 as diffusers' ``_flash_3`` backend can use it (the package and its module)."""
    from diffusers.utils import is_flash_attn_3_available

    return is_flash_attn_3_available() and importlib.util.find_spec("flash_attn_interface") is not None


def check_attention(attention: str, device: str, family: FamilyAdapter | None = None,
                    dtype: torch.dtype | None = None) -> str | None:
    """The diffusers backend to set, or None for diffusers' default (SDPA); refuses what can't run."""
    if attention == "auto":
        return pick_attention(device, family, dtype)
    if attention not in ATTENTION:
        raise UsageError(f"--attention {attention}: expected auto, {', '.join(ATTENTION)}")
    backend, package = ATTENTION[attention]
    if package and device != "cuda":
        raise UsageError(f"--attention {attention} needs a CUDA device (use sdpa on {device})")
    if package and importlib.util.find_spec(package) is None:
        raise UsageError(f"--attention {attention} needs the '{package}' package: {_EXTRA[package]}")
    if package and family is not None and family.needs_attention_mask:
        raise UsageError(f"--attention {attention} takes no attention mask, which {family.name} needs (use sdpa)")
    one_process = int(os.environ.get("WORLD_SIZE", "1")) <= 1
    if package and family is not None and not family.dispatches_attention and one_process:
        raise UsageError(f"--attention {attention}: {family.name}'s attention processor calls PyTorch SDPA itself, "
                         "so no other backend reaches it in one process (use sdpa)")
    if attention == "sage":
        check_sage(device, dtype)
    return backend


def check_sage(device: str, dtype: torch.dtype | None) -> None:
    """What diffusers' "sage" backend needs besides the package: SageAttention 2.1.1+ (it calls its
    CUDA kernels), an sm80+ GPU, and bf16/fp16 tensors."""
    from diffusers.utils import is_sageattention_version

    if not is_sageattention_version(">=", SAGE_VERSION):
        from importlib.metadata import version

        raise UsageError(f"--attention sage needs SageAttention {SAGE_VERSION} or newer (found "
                         f"{version('sageattention')}): {_EXTRA['sageattention']}")
    if dtype not in (torch.bfloat16, torch.float16):
        raise UsageError("--attention sage computes in bf16 or fp16: use --dtype bf16 (or auto)")
    cap = torch.cuda.get_device_capability()
    if cap < (8, 0):
        raise UsageError(f"--attention sage: SageAttention 2 needs compute capability 8.0 or newer; "
                         f"{torch.cuda.get_device_name()} is {cap[0]}.{cap[1]} (use sdpa)")


def check_offload(opts: LoadOptions, device: str) -> None:
    chosen = [flag for flag, on in (("--offload", opts.offload), ("--sequential-offload", opts.sequential_offload),
                                    ("--group-offload", opts.group_offload)) if on]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)}: choose one offloading mode")
    if chosen and device != "cuda":
        raise UsageError(f"{chosen[0]} moves weights between CPU and GPU: it needs --device cuda")
    if opts.compile and opts.sequential_offload:
        raise UsageError("--compile with --sequential-offload: sequential offload hooks every layer; "
                         "use --group-offload or --offload")


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
    import_torchao_quietly()  # diffusers imports it, when installed, and it is loud on import


def load_pipeline(model: ResolvedModel, opts: LoadOptions):
    """``from_pretrained`` with safetensors only; offline misses become one clear line."""
    import diffusers

    quiet_libraries()
    device = pick_device(opts.device)
    dtype = pick_dtype(opts.dtype, device)
    backend = check_attention(opts.attention, device, model.family, dtype)
    check_offload(opts, device)
    check_quantize(opts.quantize, device)
    cls = getattr(diffusers, model.pipeline_class)
    # some VAEs (Wan's) are numerically fragile in half precision; the reference code keeps them in fp32
    dtypes = {"default": dtype, "vae": torch.float32} if model.family.vae_fp32 else dtype
    kwargs = {"dtype": dtypes, "use_safetensors": True}
    local_first = not model.is_local and os.environ.get("HF_HUB_OFFLINE") != "1"
    try:
        try:
            pipe = cls.from_pretrained(model.source, local_files_only=True, **kwargs)
        except (OSError, ValueError):
            if not local_first or not hub.reachable():  # offline: fail now, not after the hub's retries
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
    offloaded = opts.sequential_offload or opts.group_offload or opts.offload
    quantize_pipeline(pipe, opts.quantize, device=None if offloaded else device)  # before offloading hooks
    if opts.sequential_offload:
        pipe.enable_sequential_cpu_offload()
    elif opts.group_offload:
        # one block at a time on the GPU, the next one copied in on a side stream meanwhile: close to
        # sequential offload's memory at a fraction of its cost (the transfers overlap compute)
        pipe.enable_group_offload(onload_device=torch.device(device), offload_type="block_level",
                                  num_blocks_per_group=1, use_stream=True)
    elif opts.offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    return pipe, device, dtype

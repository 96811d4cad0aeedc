"""Option types shared by the commands, so that a flag means the same under every command."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class Quantize(str, Enum):
    none = "none"
    fp8 = "fp8"
    int8 = "int8"


class Attention(str, Enum):
    auto = "auto"
    sdpa = "sdpa"
    xformers = "xformers"
    flash = "flash"
    sage = "sage"


class Fit(str, Enum):
    crop = "crop"
    pad = "pad"
    stretch = "stretch"


PromptsOpt = Annotated[str | None, typer.Option(help="Prompt file (.txt / .jsonl), '-' for stdin.")]
PromptOpt = Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeatable).")]
ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="Known name (see `vidcache models`), hub id or local diffusers folder.")]
CacheOpt = Annotated[str, typer.Option(
    help="Caching method (none, pab, teacache, ...); METHOD.VARIANT picks a preset variant; auto: the fastest "
         "method whose [tuned] measurement (from `vidcache tune`) meets --quality.")]
QualityOpt = Annotated[float | None, typer.Option(
    help="--cache auto: the PSNR (dB) the chosen method must have measured (default: the tuned file's target).")]
PresetOpt = Annotated[Path | None, typer.Option(help="TOML file merged over the model's preset.")]
SetOpt = Annotated[list[str], typer.Option(
    "--set", help="Override a parameter: key=value (cache params; defaults.KEY for defaults).")]
FramesOpt = Annotated[int | None, typer.Option(help="Frames per video (model default from its preset).")]
HeightOpt = Annotated[int | None, typer.Option(help="Height in pixels.")]
WidthOpt = Annotated[int | None, typer.Option(help="Width in pixels.")]
StepsOpt = Annotated[int | None, typer.Option(help="Denoising steps.")]
GuidanceOpt = Annotated[float | None, typer.Option(help="Guidance scale.")]
NegativeOpt = Annotated[str | None, typer.Option(help="Negative prompt (models with CFG).")]
FlowShiftOpt = Annotated[float | None, typer.Option(help="Scheduler flow shift (Wan, HunyuanVideo).")]
FpsOpt = Annotated[int | None, typer.Option(help="Frames per second of the MP4.")]
SeedOpt = Annotated[int | None, typer.Option(
    help="Seed of every job, over a line's own seed like every flag; without it a line's seed, else 0.")]
DeviceOpt = Annotated[Device, typer.Option(help="Where to run.")]
DTypeOpt = Annotated[DType, typer.Option(help="Weights and compute precision (auto: bf16 on CUDA, fp32 on CPU).")]
AttentionOpt = Annotated[Attention, typer.Option(
    help="Attention backend (auto: PyTorch SDPA; FlashAttention-3 for Wan on Hopper when installed; "
         "sage: SageAttention 2, 8-bit Q.K, not exact).")]
QuantizeOpt = Annotated[Quantize, typer.Option(
    help="Quantize the transformer blocks' linear layers with torchao: int8 weight-only (less memory, "
         "any device) or fp8 weights and activations (GPUs with compute capability 8.9+).")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the transformer blocks (the first video compiles).")]
ImageOpt = Annotated[Path | None, typer.Option(
    help="Image-to-video: the conditioning image of every prompt (PNG, JPEG, WebP); a .jsonl line's "
         "own 'image' is relative to the prompt file.")]
FitOpt = Annotated[Fit, typer.Option(help="How an image is fitted to the video's size (centred).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option(help="Show tracebacks.")]

"""How much memory a cache method will hold, known before the first video starts.

Why: feature caches are big. One full hidden-state tensor of Wan-14B at 720p is 0.72 GiB in bf16,
and PAB keeps one attention output per attention module and CFG branch (80 modules x 2 branches on
Wan-14B): a 115 GiB cache that can only fail, minutes into the run. So the runner asks
``estimate_cache_bytes`` first and, on CUDA, refuses a method whose cache cannot fit next to the
weights (one line, with the estimate and the free memory); on CPU the estimate goes in the report
(``cache.estimate_bytes``) beside the measured ``cache.stats.memory_bytes``.

The estimate counts what each method keeps, in units of one full hidden-state tensor of a branch
(tokens x hidden x bytes; METHODS.md's table: Wan-1.3B 480p 0.094 GiB, Wan-14B 480p 0.31 GiB, ...):

    bytes = sum over cached tensors of (its tokens x its width x its bytes) x CFG rows

CFG rows: 2 when CFG runs (Wan's two forwards keep two states; CogVideoX's batched forward keeps
a batch of 2), 1 for HunyuanVideo (guidance-distilled). Per row:

| method        | what it keeps                                                                    |
|---------------|----------------------------------------------------------------------------------|
| pab           | one output per attention module (every module stores, whatever its range)        |
| fastercache   | two outputs per self-attention module; CFG-Cache: the fp32 uncond-cond delta of  |
|               | the latent output and cond's output (latent-sized, small); on Wan the uncond     |
|               | branch keeps none when the attention window lies inside the CFG window           |
| teacache      | the block-stack residual or output (CogVideoX: video and text streams; two with  |
|               | a first-order ``forecast``); HunyuanVideo also its indicator, block 0's modulated|
|               | input, in fp32                                                                   |
| adacache      | TeaCache's residual(s) plus the metric block's attention output (model dtype)    |
| mixcache      | the stack residual(s) plus one residual per candidate block (``block_window``);  |
|               | CFG: the fp32 delta and cond's output (latent-sized)                              |
| fbcache       | diffusers' First Block Cache: block 0's output and residual, the tail residual   |
| taylorseer    | ``max_order + 1`` Taylor factors of every block output ("lite": of the output)   |
| magcache      | the stack residual and the stack input (video stream)                            |
| seacache      | ``residual_order + 1`` stack residuals (with the tail block's text output where  |
|               | the blocks return one) and the filtered latent indicator (model dtype)           |

Self-attention outputs of CogVideoX and HunyuanVideo cover video + text tokens (joint attention);
Wan's cover the video tokens only. Peaks inside a forward (activations) are not counted: the
refusal is a lower bound on what the run needs, which is the point (a cache that cannot fit even
alone is refused; one that fits may still meet an out-of-memory error, reported as such).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

GIB = 1024**3

# Methods whose cache lives in diffusers' hooks as vidcache names them (``--cache`` accepts both).
ALIASES = {f"diffusers-{m}": m for m in ("fbcache", "taylorseer", "magcache", "seacache")}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a transformer and its pipeline's VAE."""

    family: str  # the adapter's name (vidcache.models): what the estimate asks about the family
    hidden: int  # inner width of the blocks (heads x head dim)
    blocks: int  # blocks in the stack (all block lists)
    two_stream_blocks: int  # blocks whose output carries the text stream too (CogVideoX, HunyuanVideo)
    attention: dict[str, int]  # attention modules per kind ("spatial", "cross")
    patch: tuple[int, int, int]  # (t, h, w)
    vae_temporal: int
    vae_spatial: int
    out_channels: int
    bytes_per_element: int  # the transformer's dtype

    @property
    def adapter(self):
        from .models import adapter_named

        return adapter_named(self.family)


@dataclass(frozen=True)
class JobShape:
    frames: int
    height: int
    width: int
    text_len: int
    cfg: bool  # classifier-free guidance runs (two rows per step)


def video_tokens(model: ModelShape, job: JobShape) -> int:
    frames = (job.frames - 1) // model.vae_temporal + 1
    pt, ph, pw = model.patch
    return math.ceil(frames / pt) * (job.height // model.vae_spatial // ph) * (job.width // model.vae_spatial // pw)


def latent_elements(model: ModelShape, job: JobShape) -> int:
    frames = (job.frames - 1) // model.vae_temporal + 1
    return model.out_channels * frames * (job.height // model.vae_spatial) * (job.width // model.vae_spatial)


def cfg_rows(model: ModelShape, job: JobShape) -> int:
    return 2 if job.cfg and model.adapter.cfg_layout != "distilled" else 1


def estimate_cache_bytes(method: str, params: dict[str, Any], model: ModelShape, job: JobShape) -> int | None:
    """Bytes ``method`` will hold for ``job`` on ``model`` (module docstring); None for a method this
    module does not know (no estimate, no refusal). ``params`` are the method's effective parameters."""
    method = ALIASES.get(method, method)
    fam = model.adapter
    b = model.bytes_per_element
    tokens, text = video_tokens(model, job), job.text_len
    v = tokens * model.hidden * b  # one full hidden-state tensor, video tokens
    t = text * model.hidden * b if fam.text_stream_blocks else 0  # the text stream next to it
    self_out = v + (t if fam.joint_attention else 0)
    stack = v + (t if fam.text_residual else 0)  # TeaCache-style stack residual
    rows = cfg_rows(model, job)
    cfg_pair = rows == 2  # two CFG rows (separate forwards or one batched forward)
    latent = latent_elements(model, job)
    # the fp32 uncond - cond delta of the latent output; with separate CFG forwards (Wan) cond's output
    # is kept too, for the uncond forward
    cfg_cache = latent * 4 + (latent * b if fam.cfg_layout == "separate" else 0)

    def block_out(i: int) -> int:
        return v + (t if i < model.two_stream_blocks else 0)

    n_self, n_cross = model.attention.get("spatial", 0), model.attention.get("cross", 0)
    if method == "none":
        return 0
    if method == "pab":
        return rows * (n_self * self_out + n_cross * v)
    if method == "fastercache":
        from .caches.fastercache import uncond_keeps_attention

        extra = cfg_cache if cfg_pair and params.get("cfg_cache", True) else 0
        # Wan's uncond extrapolates no attention inside the CFG window (fastercache.py): none kept there
        attention_rows = rows
        if extra and fam.cfg_layout == "separate" and not uncond_keeps_attention(params):
            attention_rows = 1
        return attention_rows * 2 * n_self * self_out + extra
    # a first-order forecast keeps what the computed step before the last kept too
    stacks = (1 + (params.get("forecast", "residual") != "residual")) * stack
    if method == "teacache":  # a content indicator (block 0's modulated input) is kept in fp32
        return rows * (stacks + (tokens * model.hidden * 4 if not fam.teacache.timestep_only else 0))
    if method == "adacache":  # the metric attention output is kept in the model's dtype
        return rows * (stacks + v)
    if method == "mixcache":
        grans = params.get("granularities", ("step", "cfg", "block"))
        lo, hi = params.get("block_window", (0.25, 0.75))
        n = model.blocks
        candidates = [i for i in range(n) if lo <= i / n <= hi] if "block" in grans else []
        per_row = stacks + sum(block_out(i) for i in candidates)
        return rows * per_row + (cfg_cache if cfg_pair and "cfg" in grans else 0)
    if method == "fbcache":
        return rows * (block_out(0) + v + block_out(model.blocks - 1))
    if method == "taylorseer":
        factors = int(params.get("max_order", 1)) + 1
        if params.get("mode", "blocks") == "lite":
            return rows * factors * tokens * math.prod(model.patch) * model.out_channels * b
        return rows * factors * sum(block_out(i) for i in range(model.blocks))
    if method == "magcache":
        return rows * (stack + v)
    if method == "seacache":  # residual_order + 1 residuals (with the tail's text output) and the indicator
        entries = int(params.get("residual_order", 1)) + 1
        return rows * (entries * (v + (t if fam.text_stream_blocks else 0)) + latent * b)
    return None


# -- from a loaded pipeline --------------------------------------------------------------------


def model_shape(pipe: Any, transformer: torch.nn.Module | None = None) -> ModelShape:
    """The ModelShape of a loaded Wan, CogVideoX or HunyuanVideo pipeline (its first transformer)."""
    from .models import adapter_of
    from .models.geometry import patch_sizes

    tr = transformer if transformer is not None else pipe.transformer
    layout = adapter_of(tr)
    cfg = tr.config
    pt, ph, pw = patch_sizes(cfg)
    kinds: dict[str, int] = {}
    for _, _, kind in layout.attention_modules(tr):
        kinds[kind] = kinds.get(kind, 0) + 1
    blocks = layout.blocks(tr)
    two_stream = len(blocks) if layout.text_stream_blocks else 0  # blocks returning both streams
    # the dtype of the blocks' largest weight (Wan keeps a few small modules in fp32)
    dtype = max(blocks[0][1].parameters(), key=lambda p: p.numel()).dtype
    return ModelShape(
        family=layout.name,
        hidden=int(cfg.num_attention_heads * cfg.attention_head_dim),
        blocks=len(blocks),
        two_stream_blocks=two_stream,
        attention=kinds,
        patch=(pt, ph, pw),
        vae_temporal=int(getattr(pipe, "vae_scale_factor_temporal", 4)),
        vae_spatial=int(getattr(pipe, "vae_scale_factor_spatial", 8)),
        out_channels=int(cfg.out_channels or cfg.in_channels),
        bytes_per_element=dtype.itemsize,
    )


def job_shape(job: Any, family: str) -> JobShape:
    """A JobShape from a ``vidcache.jobs.Job`` (or anything with the same fields)."""
    from .models import adapter_named

    adapter = adapter_named(family)
    distilled = adapter.cfg_layout == "distilled"
    return JobShape(int(job.frames), int(job.height), int(job.width), adapter.text_tokens(int(job.text_len)),
                    cfg=not distilled and float(job.guidance) > 1.0)


def weights_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + sum(
        b.numel() * b.element_size() for b in module.buffers())


def free_cuda_bytes() -> int:
    """Free device memory plus what PyTorch's caching allocator holds but does not use."""
    free, _total = torch.cuda.mem_get_info()
    return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())


def gib(n: int) -> str:
    """Bytes for people: GiB down to 0.1 GiB, then MiB, then KiB."""
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size / 10:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# -- what the runner calls -------------------------------------------------------------------


def pipeline_estimate(pipe: Any, method: str, params: dict[str, Any], job: Any, ranks: int = 1) -> int | None:
    """The cache estimate for one job over every denoiser of ``pipe`` (Wan 2.2 A14B: both experts
    keep a cache for the whole video), per rank when ``ranks`` processes share the work (context
    parallelism splits the tokens, CFG parallelism the branches); None for a method without one."""
    from .loading import transformers_of

    if method == "none":
        return 0
    total = 0
    for tr in transformers_of(pipe):
        try:
            shape = model_shape(pipe, tr)
        except (AttributeError, TypeError, ValueError, StopIteration):  # a config we cannot read: no estimate
            return None
        est = estimate_cache_bytes(method, params, shape, job_shape(job, shape.family))
        if est is None:
            return None
        total += est
    return -(-total // max(1, ranks))


def check_cache_fits(pipe: Any, method: str, params: dict[str, Any], jobs: list[Any], device: str,
                     weights_offloaded: bool = False, ranks: int = 1) -> None:
    """On CUDA, refuse (``UsageError``, one line) a cache that cannot fit in the free memory for
    the largest job; ``weights_offloaded``: the transformer's weights are still to come (model CPU
    offload), so they count too. Under torchrun the least free memory of all ranks decides, so every
    rank refuses or none does. Nothing to check on CPU (the report shows the estimate)."""
    from .errors import UsageError
    from .loading import transformers_of

    if device != "cuda" or method == "none" or not jobs:
        return
    sized = [(pipeline_estimate(pipe, method, params, job, ranks), job) for job in jobs]
    sized = [(est, job) for est, job in sized if est is not None]
    if not sized:
        return
    est, job = max(sized, key=lambda x: x[0])
    weights = max((weights_bytes(t) for t in transformers_of(pipe)), default=0) if weights_offloaded else 0
    free = free_cuda_bytes()
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # every rank must take the same answer (a lone refusal would leave the others in a collective)
        least = torch.tensor([free], dtype=torch.int64, device="cuda")
        dist.all_reduce(least, op=dist.ReduceOp.MIN)
        free = int(least.item())
    if est + weights > free:
        with_weights = f" plus {gib(weights)} of transformer weights" if weights else ""
        raise UsageError(
            f"--cache {method}: its cache needs about {gib(est)}{with_weights} for {job.frames} frames at "
            f"{job.height}x{job.width} ({job.name}), but only {gib(free)} of GPU memory is free; "
            "try fewer frames (--frames), a smaller size, or a method that keeps less (teacache)"
        )

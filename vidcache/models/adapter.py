"""What vidcache must know about a model family, in one place: the adapter.

Why one adapter per family (the way cache-dit's ``block_adapters`` keep each model's structure in one
place): the caches, context parallelism, memory estimates and the runner all need to know where a
family keeps its blocks, how it runs classifier-free guidance, which inputs it takes. Spread over
the code as ``if family == "wan"`` checks, adding a model was a ten-file change. Now each family is
one subclass of ``FamilyAdapter`` in ``vidcache/models/<family>.py`` and one line in
``registry.ADAPTERS``; everything else asks the adapter and never compares a family name.

Class attributes hold the facts; methods hold what needs code (choosing TeaCache coefficients,
embedding timesteps the way the model does, enabling context parallelism). Nothing here imports
torch or diffusers at module level, so resolving a model before loading stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

CP_HOOK_PREFIX = "vidcache_parallel."  # hooks context parallelism registers (vidcache.parallel, the adapters)

CFG_LAYOUTS = ("separate", "batched", "distilled")


@dataclass(frozen=True)
class TeaCacheIndicator:
    """Where TeaCache's indicator is read. ``module``: the time embedder whose output (or output
    ``index``) is the indicator; None: the modulated input of the first block (content-dependent,
    HunyuanVideo). ``retention_index``: the index of the retention-mode indicator (Wan only)."""

    module: str | None
    index: int | None = None
    retention_index: int | None = None

    @property
    def timestep_only(self) -> bool:
        """The indicator depends on the timestep alone: the skip schedule can be planned."""
        return self.module is not None

    @property
    def has_retention(self) -> bool:
        return self.retention_index is not None


class FamilyAdapter:
    """One model family. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    # pipeline class -> mode ("t2v": text to video, "i2v": image to video)
    pipelines: ClassVar[dict[str, str]]
    transformer_classes: ClassVar[tuple[str, ...]]
    # the shipped preset a folder or hub id of this family starts from, per mode ("t2v" is required)
    folder_presets: ClassVar[dict[str, str]]

    # CFG: "separate" (two forwards per step in cache contexts "cond" / "uncond"), "batched" (one
    # forward on [uncond, cond]) or "distilled" (guidance-distilled: one forward per step)
    cfg_layout: ClassVar[str]
    batched_inputs: ClassVar[tuple[str, ...]] = ()  # transformer inputs batched [uncond, cond]
    # "separate": the cache-context names the pipeline gives its cond and uncond forwards; the caches
    # and CFG-parallel see them as "cond" / "uncond" (``branch_of``)
    cfg_contexts: ClassVar[tuple[str, str]] = ("cond", "uncond")

    # blocks: the lists holding the stack, in execution order, and which attribute of a block holds
    # which kind of attention ("spatial": self-attention over the video tokens, "cross": text)
    block_lists: ClassVar[tuple[str, ...]]
    attention_attrs: ClassVar[dict[str, str]]
    text_residual: ClassVar[bool] = False  # the stack carries a text stream whose residual caches keep
    text_stream_blocks: ClassVar[bool] = False  # every block returns the text stream next to the video
    joint_attention: ClassVar[bool] = False  # self-attention output covers the text tokens too
    frame_dim: ClassVar[int] = 2  # axis of the latent frames in the transformer's 5-D hidden_states

    teacache: ClassVar[TeaCacheIndicator]
    fbcache_threshold: ClassVar[float] = 0.05  # diffusers' First Block Cache: a threshold that fires

    # inputs
    frame_rule: ClassVar[str]  # human-readable, for error messages
    frame_step: ClassVar[int] = 4  # frames must be frame_step * k + 1
    max_frames: ClassVar[int | None] = None
    size_multiple: ClassVar[int] = 16
    image_size_modes: ClassVar[tuple[str, ...]] = ()  # modes whose pipeline takes its size from the image
    uses_flow_shift: ClassVar[bool] = True
    accepts_negative_prompt: ClassVar[bool] = True

    # loading and kernels
    vae_fp32: ClassVar[bool] = False  # keep the VAE in fp32 whatever the dtype
    needs_attention_mask: ClassVar[bool] = False  # attention kernels without masks cannot run it
    flash3_auto: ClassVar[bool] = False  # --attention auto may pick FlashAttention-3 on Hopper
    # its attention goes through diffusers' dispatcher, so --attention's backends reach it in one process
    dispatches_attention: ClassVar[bool] = True

    # context parallelism: the joint [text, video] sequence is split (else only video tokens are)
    cp_joint_sequence: ClassVar[bool] = False

    # -- structure ----------------------------------------------------------------------------
    def blocks(self, transformer: Any) -> list[tuple[str, Any]]:
        """``(name, block)`` for every block of the stack, in order."""
        out = []
        for list_name in self.block_lists:
            for i, block in enumerate(getattr(transformer, list_name)):
                out.append((f"{list_name}.{i}", block))
        return out

    def attention_modules(self, transformer: Any) -> list[tuple[str, Any, str]]:
        """``(name, module, kind)`` for every attention module of the stack."""
        out = []
        for block_name, block in self.blocks(transformer):
            for attr, kind in self.attention_attrs.items():
                module = getattr(block, attr, None)
                if module is not None:
                    out.append((f"{block_name}.{attr}", module, kind))
        return out

    def register_blocks(self) -> None:
        """Make diffusers' ``TransformerBlockRegistry`` know this family's blocks (what each takes and
        returns), which vidcache's caches and diffusers' own read. diffusers registers the blocks
        of the families it ships metadata for; a family it does not cover registers its own here
        (called by ``registry.adapter_of``, so once per cache attachment: keep it idempotent)."""

    def branch_of(self, context: str) -> str:
        """vidcache's name of a cache context: "cond" / "uncond" for the pipeline's own names of its two
        CFG forwards (HunyuanVideo 1.5's guider calls them "pred_cond" / "pred_uncond"), any other as is."""
        cond, uncond = self.cfg_contexts
        return "cond" if context == cond else "uncond" if context == uncond else context

    def cfg_active(self, pipe: Any) -> bool | None:
        """Whether the pipeline runs its unconditional branch now (None: it cannot tell)."""
        value = getattr(pipe, "do_classifier_free_guidance", None)
        return value if isinstance(value, bool) else None

    def mode_of_index(self, pipeline_class: str, index: dict[str, Any]) -> str:
        """The mode of a folder from its model_index.json: "t2v", "i2v", or "ti2v" (a checkpoint
        that takes an image or not, e.g. Wan 2.2 TI2V-5B)."""
        return self.pipelines.get(pipeline_class, "t2v")

    def pipeline_class(self, mode: str) -> str:
        """The pipeline class that runs ``mode`` ("ti2v" checkpoints load as text-to-video)."""
        mode = "t2v" if mode == "ti2v" else mode
        for cls, m in self.pipelines.items():
            if m == mode:
                return cls
        raise KeyError(mode)

    def folder_preset(self, mode: str) -> str:
        return self.folder_presets.get(mode, self.folder_presets["t2v"])

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.pipelines.values()))

    # -- inputs ---------------------------------------------------------------------------------
    def frames_ok(self, frames: int, max_frames: int | None = None) -> bool:
        if frames < 1 or (frames - 1) % self.frame_step:
            return False
        limit = max_frames or self.max_frames
        return limit is None or frames <= limit

    def size_from_image(self, mode: str, image_size: tuple[int, int],
                        transformer_config: dict[str, Any] | None) -> tuple[int, int] | None:
        """(height, width) this family makes from an image of ``image_size`` (width, height) in
        ``mode``, one of ``image_size_modes``, whose pipeline takes no size of its own (HunyuanVideo
        1.5 image-to-video); None: the video has the job's height x width, the image fitted to it."""
        return None

    def pipeline_kwargs(self, kwargs: dict[str, Any], mode: str, pipe: Any = None) -> dict[str, Any]:
        """The pipeline call's arguments, adjusted for this family. The runner builds prompt,
        negative_prompt (when ``accepts_negative_prompt``), height, width, num_frames,
        num_inference_steps, guidance_scale(_2), generator, output_type, max_sequence_length,
        the step callback and, for image-to-video, ``image`` (fitted to height x width). ``pipe``:
        the pipeline to be called, for what a family sets on it rather than passes (a guider)."""
        return kwargs

    def text_tokens(self, text_len: int) -> int:
        """The text-stream tokens the transformer carries for a prompt budget of ``text_len`` (memory
        estimates): the budget itself, unless the family adds tokens of its own."""
        return text_len

    def text_len_rule(self, transformer_config: dict[str, Any], mode: str) -> tuple[int | None, str]:
        """The text length this folder's transformer requires, and why (None: any length)."""
        return None, ""

    def size_rule(self, transformer_config: dict[str, Any], s_comp: int) -> tuple[tuple[int, int] | None, str]:
        """The (height, width) in pixels this transformer requires, and why (None: any size that
        divides as the geometry says); ``s_comp`` is the VAE's spatial compression."""
        return None, ""

    # -- TeaCache -------------------------------------------------------------------------------
    def teacache_coefficients(self, config: Any, retention: bool) -> tuple[str | None, str | None]:
        """(official set name, or None; fallback set name when there is no official one), for a
        transformer config (image-to-video transformers are told apart by their config)."""
        raise NotImplementedError

    def timestep_indicators(self, transformer: Any, timesteps: Any, retention: bool) -> Any:
        """TeaCache's indicator for each timestep, computed as the model's forward computes it
        (fp32 where the official code is fp32): one row per timestep."""
        raise NotImplementedError(f"{self.name}: the TeaCache indicator depends on the content")

    def embedder_indicator(self, transformer: Any, args: tuple, kwargs: dict, output: Any, retention: bool) -> Any:
        """TeaCache's indicator of one forward, from its time embedder's call (``teacache.module``):
        what the plan (``timestep_indicators``) computes for that forward's timestep. Here the
        embedder's output itself; a family whose output is rounded to the model's dtype recomputes."""
        index = self.teacache.retention_index if retention else self.teacache.index
        return output if index is None else output[index]

    def block_indicator(self, block: Any, meta: Any, hidden: Any, args: tuple, kwargs: dict) -> Any:
        """TeaCache's content-dependent indicator, from the first block's call (``teacache.module`` None)."""
        raise NotImplementedError

    # -- context parallelism --------------------------------------------------------------------
    def cp_plan(self) -> dict[str, Any] | None:
        """The ``_cp_plan`` to enable context parallelism with (None: the model's own)."""
        return None

    def prepare_cp(self, transformer: Any) -> None:
        """What must change on the transformer before ``enable_parallelism`` (attention processors)."""

    def finish_cp(self, transformer: Any, plan: Any, config: Any) -> None:
        """Hooks the split needs after ``enable_parallelism`` (sequence splits, attention masks)."""

    def __repr__(self) -> str:
        return f"<{self.name} adapter>"


def fp32_call(module: Any, *inputs: Any) -> Any:
    """``module(*inputs)`` computed in fp32 whatever the module's dtype (its weights upcast for the
    call only): for the small embedders whose fp32 output an official method compares."""
    import torch
    from torch.func import functional_call

    if all(p.dtype == torch.float32 for p in module.parameters()):
        return module(*(x.float() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs))
    state = {k: v.float() if v.is_floating_point() else v for k, v in module.state_dict(keep_vars=True).items()}
    return functional_call(module, state, tuple(x.float() if torch.is_tensor(x) and x.is_floating_point() else x
                                                for x in inputs))

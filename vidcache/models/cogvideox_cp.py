"""CogVideoX under context parallelism: its own attention processor through diffusers' dispatcher,
and a contiguous split of the joint [text, video] sequence (``CogVideoXSplitHooks`` says why not a
``_cp_plan``). Used by ``CogVideoXAdapter``; ``vidcache.parallel`` runs it through the adapter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook

from .adapter import CP_HOOK_PREFIX as HOOK_PREFIX
from .geometry import patch_sizes


@dataclass(frozen=True)
class JointShare:
    """One rank's contiguous share of a joint [text, video] sequence split ``parts`` ways."""

    n_text: int
    n_video: int
    parts: int
    index: int

    @property
    def size(self) -> int:
        return (self.n_text + self.n_video) // self.parts

    def text(self, index: int | None = None) -> tuple[int, int]:
        lo = (self.index if index is None else index) * self.size
        return min(lo, self.n_text), min(lo + self.size, self.n_text)

    def video(self, index: int | None = None) -> tuple[int, int]:
        lo = (self.index if index is None else index) * self.size
        return max(lo - self.n_text, 0), max(lo + self.size - self.n_text, 0)


class CogVideoXSplitHooks:
    """CogVideoX's sequence split, as three hooks sharing one ``JointShare`` per forward.

    Why not a ``_cp_plan``: diffusers' plans split each tensor into equal chunks, but CogVideoX's
    blocks take the text and the video as two tensors and attend over their concatenation. Equal
    chunks of each put the keys in the order [text_0, video_0, text_1, video_1] after Ulysses'
    all-to-all (a permutation: same attention, other rounding) and need the degree to divide the
    226 text tokens, that is 2. Splitting the *joint* sequence into contiguous equal chunks instead
    (rank 0: all text and the first video tokens; later ranks: video only) keeps the keys in the
    model's own order, so the result matches one process exactly, and only the joint length
    (226 + video tokens) must divide by the degree. A rank may hold no text: the blocks handle
    an empty text stream.

    * on the transformer: read the lengths, slice the RoPE table to this rank's video tokens;
    * on ``transformer_blocks.0``: slice both streams to this rank's share;
    * on ``proj_out``: all-gather the video tokens (padded to one size) back into order.
    """

    def __init__(self, transformer: torch.nn.Module, parts: int, index: int, group: Any) -> None:
        self.parts, self.index, self.group = parts, index, group
        self.patch_t, self.patch, _ = patch_sizes(transformer.config)
        self.share: JointShare | None = None
        self.top, self.first, self.last = _TopSplit(self), _FirstBlockSplit(self), _OutputGather(self)

    def register(self, transformer: torch.nn.Module) -> None:
        for module, hook, name in ((transformer, self.top, "joint_split"),
                                   (transformer.transformer_blocks[0], self.first, "joint_split"),
                                   (transformer.proj_out, self.last, "joint_gather")):
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_PREFIX + name)
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def _get(name: str, index: int, args: list, kwargs: dict) -> Any:
    return kwargs[name] if name in kwargs else (args[index] if index < len(args) else None)


def _put(name: str, index: int, value: Any, args: list, kwargs: dict) -> None:
    if name in kwargs or index >= len(args):
        kwargs[name] = value
    else:
        args[index] = value


class _TopSplit(ModelHook):
    # CogVideoXTransformer3DModel.forward(hidden_states, encoder_hidden_states, timestep, timestep_cond,
    #                                     ofs, image_rotary_emb, ...)
    def __init__(self, owner: CogVideoXSplitHooks) -> None:
        super().__init__()
        self.owner = owner

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        o, args = self.owner, list(args)
        hidden = _get("hidden_states", 0, args, kwargs)
        text = _get("encoder_hidden_states", 1, args, kwargs)
        _, frames, _, height, width = hidden.shape
        n_video = math.ceil(frames / o.patch_t) * (height // o.patch) * (width // o.patch)
        o.share = JointShare(text.shape[1], n_video, o.parts, o.index)
        rope = _get("image_rotary_emb", 5, args, kwargs)
        if rope is not None:
            lo, hi = o.share.video()
            _put("image_rotary_emb", 5, tuple(f[lo:hi] for f in rope), args, kwargs)
        return tuple(args), kwargs


class _FirstBlockSplit(ModelHook):
    # CogVideoXBlock.forward(hidden_states, encoder_hidden_states, temb, image_rotary_emb, ...)
    def __init__(self, owner: CogVideoXSplitHooks) -> None:
        super().__init__()
        self.owner = owner

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        share, args = self.owner.share, list(args)
        hidden = _get("hidden_states", 0, args, kwargs)
        text = _get("encoder_hidden_states", 1, args, kwargs)
        if hidden.shape[1] != share.n_video or text.shape[1] != share.n_text:
            raise RuntimeError("CogVideoX context parallelism: the first block got an unexpected sequence")
        (vlo, vhi), (tlo, thi) = share.video(), share.text()
        _put("hidden_states", 0, hidden[:, vlo:vhi], args, kwargs)
        _put("encoder_hidden_states", 1, text[:, tlo:thi], args, kwargs)
        return tuple(args), kwargs


class _OutputGather(ModelHook):
    def __init__(self, owner: CogVideoXSplitHooks) -> None:
        super().__init__()
        self.owner = owner

    def post_forward(self, module: torch.nn.Module, output: torch.Tensor) -> torch.Tensor:
        o, share = self.owner, self.owner.share
        sizes = [hi - lo for lo, hi in (share.video(i) for i in range(o.parts))]
        longest = max(sizes)
        padded = output.new_zeros(output.shape[0], longest, *output.shape[2:])
        padded[:, : output.shape[1]] = output
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=o.group)
        return torch.cat([p[:, :n] for p, n in zip(parts, sizes)], dim=1)


class CogVideoXAttnProcessorCP:
    """``CogVideoXAttnProcessor2_0``'s computation through diffusers' ``dispatch_attention_fn``.

    Same projections, QK norms, RoPE on the video part and output projection, in diffusers'
    (batch, sequence, heads, head_dim) layout, so that the attention backend and context
    parallelism configured on the model take effect.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        text_seq_length = encoder_hidden_states.size(1)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size, sequence_length, _ = hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None and sequence_length > text_seq_length:  # a rank may hold no video
            query = torch.cat([query[:, :text_seq_length],
                               apply_rotary_emb(query[:, text_seq_length:], image_rotary_emb, sequence_dim=1)], dim=1)
            if not attn.is_cross_attention:
                key = torch.cat([key[:, :text_seq_length],
                                 apply_rotary_emb(key[:, text_seq_length:], image_rotary_emb, sequence_dim=1)], dim=1)

        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=self._attention_backend, parallel_config=self._parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1
        )
        return hidden_states, encoder_hidden_states

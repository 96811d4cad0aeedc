"""HunyuanVideo under context parallelism: a plan that splits the video tokens (the text stays
whole on every rank) and the attention-mask rewrite that makes each text key count once.

The text tokens are *not* split: every rank keeps all of them and appends them to its video shard,
as the model does. After Ulysses' all-to-all (or along the ring) each text key would then be seen
once per rank, which changes the softmax; a hook on every block rewrites the model's attention mask
so that each text key counts exactly once (a boolean mask under Ulysses: only Ulysses rank 0's copy
is visible, exact; an additive ``-log(ring)`` bias under ring attention, exact up to rounding).
Padded text tokens stay masked.

HunyuanVideo-I2V's token-replace blocks modulate the first ``num_tokens`` video tokens (the first
latent frame) apart: counted on the whole sequence, a count each rank must cut to its own shard
(``FirstFrameTokensHook``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers.hooks import ModelHook


def hunyuan_video_cp_plan() -> dict[str, Any]:
    """Split the video tokens where they are made, gather them at ``proj_out``; text stays whole."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "x_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "rope": {
            0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
            1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def joint_text_mask(mask: torch.Tensor, text_len: int, ulysses: int, ring: int, dtype: torch.dtype) -> torch.Tensor:
    """The key mask for a local sequence [video shard, all text tokens] seen by every rank.

    ``mask`` is the model's own boolean mask over the local keys (shape ``[B, 1, 1, L]``, text last).
    The result covers the keys one attention call sees after Ulysses' all-to-all: ``ulysses``
    copies of the local layout, one per Ulysses rank (diffusers uses a mask of that length as is).
    Only the first copy's text keys stay visible. Under ring attention the same mask is applied to
    every rank's key chunk, so the text is visible in ``ring`` chunks: an additive ``-log(ring)``
    on its logits makes the ``ring`` copies weigh exactly one. Video keys are never masked.
    """
    video, text = mask[..., :-text_len], mask[..., -text_len:]
    hidden = torch.zeros_like(text)
    full = torch.cat([video, text] + [video, hidden] * (ulysses - 1), dim=-1)
    if ring == 1:
        return full
    bias = torch.zeros(full.shape, dtype=dtype, device=mask.device)
    bias = bias.masked_fill(~full, torch.finfo(dtype).min)
    bias[..., video.shape[-1]:mask.shape[-1]] += torch.where(text, -math.log(ring), 0.0).to(dtype)
    return bias


class JointTextMaskHook(ModelHook):
    """On each HunyuanVideo block: replace the model's attention mask with ``joint_text_mask``.

    All blocks of one forward get the same mask tensor; the rewritten mask is kept (in ``memo``,
    shared by the blocks' hooks) for that tensor, so it is built once per forward.
    """

    def __init__(self, ulysses: int, ring: int, memo: dict[str, Any]) -> None:
        super().__init__()
        self.ulysses, self.ring, self.memo = ulysses, ring, memo

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        # HunyuanVideo blocks: (hidden_states, encoder_hidden_states, temb, attention_mask, ...)
        args = list(args)
        in_kwargs = "attention_mask" in kwargs
        mask = kwargs["attention_mask"] if in_kwargs else (args[3] if len(args) > 3 else None)
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if mask is None or text is None or mask.dtype != torch.bool:
            return tuple(args), kwargs
        if self.memo.get("source") is not mask:
            flat = mask.reshape(mask.shape[0], 1, 1, mask.shape[-1])
            self.memo["source"] = mask
            self.memo["mask"] = joint_text_mask(flat, text.shape[1], self.ulysses, self.ring, hidden.dtype)
        if in_kwargs:
            kwargs["attention_mask"] = self.memo["mask"]
        else:
            args[3] = self.memo["mask"]
        return tuple(args), kwargs


class FirstFrameTokensHook(ModelHook):
    """On each HunyuanVideo-I2V token-replace block: the first frame's token count, as this rank sees it.

    The model counts the first latent frame's tokens on the whole sequence and every token-replace
    block treats that many leading video tokens apart. Under the plan above, shard ``index`` holds
    video tokens ``[index * n, (index + 1) * n)``: the first-frame tokens are a prefix of it, of
    ``clamp(count - index * n, 0, n)`` tokens."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        # (hidden_states, encoder_hidden_states, temb, attention_mask, rotary, token_replace_emb, num_tokens)
        args = list(args)
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        in_kwargs = "num_tokens" in kwargs
        count = kwargs["num_tokens"] if in_kwargs else (args[6] if len(args) > 6 else None)
        if count is None or hidden is None:
            return tuple(args), kwargs
        n = hidden.shape[1]
        local = max(0, min(n, int(count) - self.index * n))
        if in_kwargs:
            kwargs["num_tokens"] = local
        else:
            args[6] = local
        return tuple(args), kwargs

"""How a block's and a transformer's inputs and outputs are laid out, read through diffusers' block
metadata (``TransformerBlockMetadata``: which argument is the video / text stream, which output
index holds which), so that no cache hard-codes a family's tuple layout."""

from __future__ import annotations

from typing import Any


def block_inputs(meta: Any, args: tuple, kwargs: dict) -> tuple[Any, Any | None]:
    """A block's video-stream input and, for dual-stream blocks, its text-stream input."""
    hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
    if meta.return_encoder_hidden_states_index is None:
        return hidden, None
    return hidden, meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)


def block_outputs(meta: Any, out: Any) -> tuple[Any, Any | None]:
    """A block's video-stream output and, for dual-stream blocks, its text-stream output."""
    import torch

    if torch.is_tensor(out):
        return out, None
    enc_i = meta.return_encoder_hidden_states_index
    return out[meta.return_hidden_states_index], (None if enc_i is None else out[enc_i])


def pack_block_output(meta: Any, hidden: Any, enc: Any | None) -> Any:
    """What the block itself would return for these streams (a tensor, or a tuple in its order)."""
    if meta.return_encoder_hidden_states_index is None:
        return hidden
    out = [None, None]
    out[meta.return_hidden_states_index] = hidden
    out[meta.return_encoder_hidden_states_index] = enc
    return tuple(out)


def with_sample(output: Any, sample: Any, return_dict: bool = True) -> Any:
    """A transformer output like ``output`` (or as ``return_dict`` asks), holding ``sample``."""
    import torch
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    if output is None:
        return Transformer2DModelOutput(sample=sample) if return_dict else (sample,)
    if torch.is_tensor(output):
        return sample
    if isinstance(output, tuple):
        return (sample, *output[1:])
    output.sample = sample
    return output


def sample_of(output: Any) -> Any:
    """The noise prediction of a transformer output (a tensor, a tuple or a ``Transformer2DModelOutput``)."""
    import torch

    return output if torch.is_tensor(output) else output[0]

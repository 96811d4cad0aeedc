"""HunyuanVideo 1.5 under context parallelism: HunyuanVideo's plan (``hunyuan_cp.hunyuan_video_cp_plan``:
the same module names split the video tokens; the joint text stream, 1000 + 256 + 729 tokens, stays
whole on every rank) and an attention processor that attends through diffusers' dispatcher with a
key mask that counts each text key once.

Why a processor and not a mask hook as for HunyuanVideo (``hunyuan_cp``): HunyuanVideo 1.5's own
processor receives the text mask alone and builds a square [local sequence x local sequence] mask
itself, which cannot describe the keys one attention call sees after Ulysses' all-to-all (every
rank's [video shard, all text], side by side). ``HunyuanVideo15AttnProcessorCP`` computes the same
projections, QK norms, RoPE and output projections, and passes ``joint_text_mask`` instead: video
keys visible, the first copy of the valid text keys visible, padding hidden. The square mask also
hides the padded text tokens as *queries*; a key-only mask lets them attend, but they are keys to
no one, so the video tokens, the only ones the output is read from, come out the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .hunyuan_cp import joint_text_mask


class HunyuanVideo15AttnProcessorCP:
    """``HunyuanVideo15AttnProcessor2_0``'s computation with a context-parallel key mask."""

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

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(2, (attn.heads, -1))

        query, key, value = (heads(proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        enc_q, enc_k, enc_v = (heads(proj(encoder_hidden_states))
                               for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
        if attn.norm_added_q is not None:
            enc_q = attn.norm_added_q(enc_q)
        if attn.norm_added_k is not None:
            enc_k = attn.norm_added_k(enc_k)
        query, key, value = (torch.cat(pair, dim=1) for pair in ((query, enc_q), (key, enc_k), (value, enc_v)))

        n_text, n_video = encoder_hidden_states.shape[1], hidden_states.shape[1]
        mask = None
        if attention_mask is not None:
            local = F.pad(attention_mask.bool(), (n_video, 0), value=True)[:, None, None, :]
            config = self._parallel_config.context_parallel_config if self._parallel_config is not None else None
            ulysses = getattr(config, "ulysses_degree", None) or 1
            ring = getattr(config, "ring_degree", None) or 1
            mask = joint_text_mask(local, n_text, ulysses, ring, query.dtype)

        out = dispatch_attention_fn(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(query.dtype)
        video, text = out[:, :n_video], out[:, n_video:]
        video = attn.to_out[1](attn.to_out[0](video))
        text = attn.to_add_out(text)
        return video, text

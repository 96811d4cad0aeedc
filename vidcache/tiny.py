"""Tiny Wan, CogVideoX and HunyuanVideo pipelines built from configs, fully offline.

They exist so that every code path a user takes with a real checkpoint (``from_pretrained`` on a
folder, family detection, presets, caches, parallelism) can be exercised on a CPU in seconds. The
tokenizers are built from in-memory vocabularies, so nothing is ever downloaded.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

WORDS = (
    "a an the red green blue yellow white black orange purple ball circle square triangle box "
    "moving left right up down bouncing rolling small big of and on in over"
).split()
_CHARS = string.ascii_lowercase + string.digits + ",.'-!?"


def t5_tokenizer():
    """A Unigram (T5/UMT5) tokenizer over whole words; unknown words map to <unk>."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _llama_tokenizer():
    """Character-level: a BPE with no merges only ever emits single characters."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, "▁": 4}
    for c in _CHARS:
        vocab[c] = len(vocab)
    return LlamaTokenizer(vocab=vocab, merges=[], pad_token="<pad>")


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def _tiny_clip_vision() -> dict:
    """A CLIP vision encoder and its image processor, 32x32 pixels in 8x8 patches."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, image_size=32, patch_size=8))
    encoder.eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return {"image_encoder": encoder, "image_processor": processor}


def _eval(*modules):
    for m in modules:
        m.eval()


def build_tiny_wan(
    path: str | Path | None = None,
    *,
    seed: int = 0,
    num_layers: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    latent_channels: int = 4,
    two_experts: bool = False,
    mode: str = "t2v",
):
    """A Wan pipeline a few hundred kB in size. ``mode``: "t2v" (Wan 2.1, or Wan 2.2 A14B-style with
    ``two_experts``), "i2v" (``WanImageToVideoPipeline``: Wan 2.1 I2V with a CLIP image encoder, or
    Wan 2.2 I2V A14B-style without one when ``two_experts``), "ti2v" (Wan 2.2 TI2V-5B-style: a
    ``WanPipeline`` with ``expand_timesteps``, whose first latent frame is the image's)."""
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    i2v = mode == "i2v"
    clip = i2v and not two_experts  # Wan 2.1 I2V encodes the image with CLIP; 2.2 I2V A14B does not

    torch.manual_seed(seed)
    tok = t5_tokenizer()
    te = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )

    def transformer():
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            # image-to-video: the latent, the encoded image video and a 4-channel first-frame mask
            in_channels=2 * latent_channels + 4 if i2v else latent_channels,
            out_channels=latent_channels,
            text_dim=32,
            freq_dim=32,
            ffn_dim=2 * heads * head_dim,
            num_layers=num_layers,
            rope_max_seq_len=64,
            image_dim=32 if clip else None,
            added_kv_proj_dim=heads * head_dim if clip else None,
        )

    tr = transformer()
    tr2 = transformer() if two_experts else None
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=latent_channels,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * latent_channels,
        latents_std=[1.0] * latent_channels,
    )
    _eval(te, tr, vae, *([tr2] if tr2 is not None else []))
    kwargs = {"transformer_2": tr2, "boundary_ratio": 0.875 if mode == "t2v" else 0.9} if two_experts else {}
    if mode == "ti2v":
        kwargs["expand_timesteps"] = True
    if clip:
        kwargs.update(_tiny_clip_vision())
    pipe = (WanImageToVideoPipeline if i2v else WanPipeline)(
        tokenizer=tok,
        text_encoder=te,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=tr,
        **kwargs,
    )
    if path is not None:
        pipe.save_pretrained(str(path))
    return pipe


def build_tiny_cogvideox(path: str | Path | None = None, *, seed: int = 0, num_layers: int = 2,
                         learned_positions: bool = False, mode: str = "t2v"):
    """A CogVideoX (1.0, RoPE like the 5B) pipeline; CFG runs as one batched forward.
    ``learned_positions``: learned positional embeddings as in CogVideoX-5B-I2V (laid out for
    exactly 16 text tokens and 64x64 pixels). ``mode`` "i2v": ``CogVideoXImageToVideoPipeline``
    like CogVideoX-5B-I2V (image latents as extra input channels, learned positions)."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    i2v = mode == "i2v"
    learned_positions = learned_positions or i2v
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = t5_tokenizer()
    te = T5EncoderModel(
        T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        )
    )
    tr = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=8 if i2v else 4,
        out_channels=4,
        time_embed_dim=32,
        text_embed_dim=32,
        num_layers=num_layers,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=learned_positions,
    )
    vae = AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
        sample_height=64,
        sample_width=64,
    )
    _eval(te, tr, vae)
    pipe = (CogVideoXImageToVideoPipeline if i2v else CogVideoXPipeline)(
        tokenizer=tok,
        text_encoder=te,
        vae=vae,
        scheduler=CogVideoXDDIMScheduler(),
        transformer=tr,
    )
    if path is not None:
        pipe.save_pretrained(str(path))
    return pipe


def build_tiny_hunyuan(
    path: str | Path | None = None, *, seed: int = 0, num_layers: int = 1, num_single_layers: int = 1
):
    """A HunyuanVideo pipeline (guidance-distilled: one forward per step)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    tok, tok2 = _llama_tokenizer(), _clip_tokenizer()
    te = LlamaModel(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            pad_token_id=3,
        )
    )
    te2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok2),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=32,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    tr = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=32,
        pooled_projection_dim=32,
        rope_axes_dim=(4, 6, 6),
    )
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=2,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    _eval(te, te2, tr, vae)
    pipe = HunyuanVideoPipeline(
        tokenizer=tok,
        text_encoder=te,
        tokenizer_2=tok2,
        text_encoder_2=te2,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=tr,
    )
    if path is not None:
        pipe.save_pretrained(str(path))
    return pipe


def build_reference_ti2v(path: str | Path):
    """The embedded (trained) tiny model re-saved as a Wan 2.2 TI2V-style pipeline
    (``expand_timesteps``): its first latent frame is the encoded image, and its trained VAE
    decodes that back close to the image, which random-weight tiny pipelines cannot show."""
    import diffusers

    from .models.registry import EMBEDDED_DIR

    base = diffusers.WanPipeline.from_pretrained(str(EMBEDDED_DIR), dtype=torch.float32)
    pipe = diffusers.WanPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                                 scheduler=base.scheduler, transformer=base.transformer, expand_timesteps=True)
    pipe.save_pretrained(str(path))
    return pipe


BUILDERS = {"wan": build_tiny_wan, "cogvideox": build_tiny_cogvideox, "hunyuan": build_tiny_hunyuan}

"""Tiny Wan, CogVideoX, HunyuanVideo (-I2V) and HunyuanVideo 1.5 pipelines built from configs, fully offline.

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


def _hunyuan_clip_encoder(tok):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, projection_dim=32, max_position_embeddings=77,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1))


def _hunyuan_transformer(num_layers: int, num_single_layers: int, **kwargs):
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers,
        num_single_layers=num_single_layers, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=32,
        pooled_projection_dim=32, rope_axes_dim=(4, 6, 6), **kwargs)


def _hunyuan_vae():
    from diffusers import AutoencoderKLHunyuanVideo

    return AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                     norm_num_groups=2, spatial_compression_ratio=8, temporal_compression_ratio=4,
                                     mid_block_add_attention=True)


def build_tiny_hunyuan(
    path: str | Path | None = None, *, seed: int = 0, num_layers: int = 1, num_single_layers: int = 1
):
    """A HunyuanVideo pipeline (guidance-distilled: one forward per step)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
    from transformers import LlamaConfig, LlamaModel

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
    te2 = _hunyuan_clip_encoder(tok2)
    tr = _hunyuan_transformer(num_layers, num_single_layers)
    vae = _hunyuan_vae()
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


# ------------------------------------------------------------------------------------------------
# HunyuanVideo-I2V and HunyuanVideo 1.5 (text- and image-to-video)
# ------------------------------------------------------------------------------------------------

_LLAVA_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<image>",
                   "<pad>", "<unk>", "\n\n", "\n")


def _word_tokenizer(words, specials, bos: str | None = None, split_words: dict[str, tuple[str, str]] | None = None):
    """A tokenizers-backed tokenizer over whole words and punctuation (saved as tokenizer.json, so its
    ids survive a reload, unlike transformers 5's ``LlamaTokenizer``). ``split_words`` maps a word
    to the two pieces it tokenizes into (WordPiece), to make a template come out at a fixed length."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in (*specials, *words, *string.punctuation, *string.digits):
        vocab.setdefault(tok, len(vocab))
    for head, tail in (split_words or {}).values():
        vocab.setdefault(head, len(vocab))
        vocab.setdefault("##" + tail, len(vocab))
    tk = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix="##"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.add_special_tokens([AddedToken(s, normalized=False, special=not s.startswith("\n")) for s in specials])
    if bos is not None:
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, pad_token="<pad>", unk_token="<unk>")


def _template_words(text: str) -> list[str]:
    return text.translate(str.maketrans(string.punctuation, " " * len(string.punctuation))).split()


def _splits_for(text: str, extra: int) -> dict[str, tuple[str, str]]:
    """Words of ``text`` to tokenize as two pieces so that it makes ``extra`` more tokens (a real
    BPE splits long words the same way): whole distinct words from the end (the tokens before them,
    an image placeholder, keep their positions), whose occurrences add up."""
    words = _template_words(text)
    out: dict[str, tuple[str, str]] = {}
    for w in dict.fromkeys(w for w in reversed(words) if len(w) >= 6):
        if any(u != w and u.startswith(w[:-2]) for u in words):  # WordPiece would cut the other word too
            continue
        n = words.count(w)
        if n <= extra:
            out[w], extra = (w[:-2], w[-2:]), extra - n
        if extra == 0:
            return out
    raise ValueError("cannot reach the template length")


def _fixed_prefix_tokenizer(fixed: str, specials: tuple[str, ...], tokens_before: int, bos: str | None = None):
    """A word tokenizer under which ``fixed`` (a prompt template's part before the prompt) makes
    ``tokens_before`` tokens, the position at which the pipeline hard-codes that the prompt starts."""
    plain = fixed
    for s in specials:
        plain = plain.replace(s, " ")
    words = [*dict.fromkeys(_template_words(plain)), *WORDS, "assistant", "user", "system"]
    have = len(_word_tokenizer(words, specials, bos=bos)(fixed, add_special_tokens=bos is not None)["input_ids"])
    splits = _splits_for(plain, tokens_before - have)
    tok = _word_tokenizer([w for w in words if w not in splits], specials, bos=bos, split_words=splits)
    ids = tok(fixed, add_special_tokens=bos is not None)["input_ids"]
    if len(ids) != tokens_before or tok.unk_token_id in ids:
        raise RuntimeError(f"tiny tokenizer: the template makes {len(ids)} tokens, not {tokens_before}")
    return tok


def _llava_tokenizer():
    """HunyuanVideo-I2V's prompt template puts the image token at 5 and the prompt at 103 with the
    llava-llama-3 tokenizer, and the pipeline hard-codes both positions; this word tokenizer
    reproduces them."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE

    fixed = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    return _fixed_prefix_tokenizer(fixed, _LLAVA_SPECIALS, DEFAULT_PROMPT_TEMPLATE["crop_start"], "<|begin_of_text|>")


def build_tiny_hunyuan_i2v(path: str | Path | None = None, *, seed: int = 0, num_layers: int = 1,
                           num_single_layers: int = 1):
    """A HunyuanVideo-I2V pipeline (the 16-channel "token_replace" transformer of
    hunyuanvideo-community/HunyuanVideo-I2V: the first latent frame is the image's, guidance embedded).

    Its text encoder is a Llava: the image is encoded into the prompt's hidden states through 576
    image features (a 48x48 CLIP vision tower with 2x2 patches), which the pipeline's hard-coded
    template positions expect. transformers 5's ``LlavaConfig`` has no ``pad_token_id``, which the
    pipeline reads: it is set on the config (and saved with it)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoImageToVideoPipeline
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    torch.manual_seed(seed)
    tok, tok2 = _llava_tokenizer(), _clip_tokenizer()
    config = LlavaConfig(
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4, pad_token_id=tok.pad_token_id),
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=48, patch_size=2, projection_dim=16),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
    )
    config.pad_token_id = tok.pad_token_id
    te = LlavaForConditionalGeneration(config)
    te2 = _hunyuan_clip_encoder(tok2)
    tr = _hunyuan_transformer(num_layers, num_single_layers, guidance_embeds=True, image_condition_type="token_replace")
    vae = _hunyuan_vae()
    processor = CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    _eval(te, te2, tr, vae)
    pipe = HunyuanVideoImageToVideoPipeline(
        text_encoder=te, tokenizer=tok, transformer=tr, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=te2, tokenizer_2=tok2,
        image_processor=processor,
    )
    if path is not None:
        pipe.save_pretrained(str(path))
    return pipe


_QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<pad>", "<unk>", "\n")
_QWEN_CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _qwen_chat_tokenizer(system_message: str, tokens_before: int):
    """A chat tokenizer in Qwen2.5-VL's format under which the system message and the user header make
    the ``tokens_before`` tokens HunyuanVideo 1.5's pipeline crops away (``crop_start`` 108)."""
    fixed = f"<|im_start|>system\n{system_message}<|im_end|>\n<|im_start|>user\n"
    tok = _fixed_prefix_tokenizer(fixed, _QWEN_SPECIALS, tokens_before)
    tok.chat_template = _QWEN_CHAT
    return tok


def build_tiny_hunyuan15(path: str | Path | None = None, *, seed: int = 0, num_layers: int = 2,
                         image_to_video: bool = False):
    """A HunyuanVideo 1.5 pipeline: text-to-video, or image-to-video with a SigLIP image encoder.

    What the pipeline fixes, kept as in the real checkpoints: CFG through a ``ClassifierFreeGuidance``
    guider (guidance 6, two forwards per step), 1000 Qwen2.5-VL + 256 ByT5 + 729 image tokens of
    text stream for text-to-video (the pipeline's zeros; image-to-video: the SigLIP tower's 16 image
    features, the real one's 729), a VAE with 16x spatial and 4x temporal compression.
    ``target_size`` 64 makes a square image a 64 x 64 video. The transformer's 2048-wide ByT5
    projection is fixed by diffusers: the folder is about 18 MB."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15ImageToVideoPipeline,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import (
        ByT5Tokenizer,
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLTextModel,
        SiglipImageProcessor,
        SiglipVisionConfig,
        SiglipVisionModel,
        T5Config,
        T5EncoderModel,
    )

    cls = HunyuanVideo15ImageToVideoPipeline if image_to_video else HunyuanVideo15Pipeline
    torch.manual_seed(seed)
    tok2 = ByT5Tokenizer()
    te2 = T5EncoderModel(T5Config(vocab_size=len(tok2), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                  relative_attention_num_buckets=8))
    tr = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=num_layers,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=32,
        text_embed_2_dim=32, image_embed_dim=16, rope_axes_dim=(4, 6, 6), target_size=64,
        task_type="i2v" if image_to_video else "t2v",
    )
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1,
                                      spatial_compression_ratio=16, temporal_compression_ratio=4,
                                      downsample_match_channel=False, upsample_match_channel=False)
    extra = {}
    if image_to_video:
        extra["image_encoder"] = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
            patch_size=4))
        extra["feature_extractor"] = SiglipImageProcessor(size={"height": 16, "width": 16})
        _eval(extra["image_encoder"])
    pipe = cls(text_encoder=None, tokenizer=None, transformer=tr, vae=vae,
               scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), text_encoder_2=te2, tokenizer_2=tok2,
               guider=ClassifierFreeGuidance(guidance_scale=6.0), **extra)
    # the system message and the crop are set in the pipeline's __init__: the tokenizer is fitted to them
    tok = _qwen_chat_tokenizer(pipe.system_message, pipe.prompt_template_encode_start_idx)
    te = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, rope_scaling={"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
        pad_token_id=tok.pad_token_id,
    ))
    _eval(te, te2, tr, vae)
    pipe.register_modules(text_encoder=te, tokenizer=tok)
    if path is not None:
        pipe.save_pretrained(str(path))
    return pipe


BUILDERS = {"wan": build_tiny_wan, "cogvideox": build_tiny_cogvideox, "hunyuan": build_tiny_hunyuan,
            "hunyuan15": build_tiny_hunyuan15}

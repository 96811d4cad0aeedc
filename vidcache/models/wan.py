"""Wan 2.1 / 2.2: two separate CFG forwards per step; blocks in ``transformer.blocks``."""

from __future__ import annotations

from typing import Any

from .adapter import FamilyAdapter, TeaCacheIndicator
from .geometry import Geometry
from .spec import ModelName


class WanAdapter(FamilyAdapter):
    name = "wan"
    pipelines = {"WanPipeline": "t2v", "WanImageToVideoPipeline": "i2v"}
    transformer_classes = ("WanTransformer3DModel",)
    folder_presets = {"t2v": "wan", "i2v": "wan-i2v", "ti2v": "wan2.2-ti2v-5b"}
    cfg_layout = "separate"
    block_lists = ("blocks",)
    # no separate temporal attention: ``attn1`` attends over all video tokens, ``attn2`` to the text
    attention_attrs = {"attn1": "spatial", "attn2": "cross"}
    teacache = TeaCacheIndicator("condition_embedder", index=0, retention_index=1)  # temb / timestep_proj
    fbcache_threshold = 0.03  # METHODS.md: diffusers' 0.05 often never fires on Wan
    frame_rule = "Wan takes 4k+1 frames (5, 9, ..., 81, ...)"
    vae_fp32 = True  # numerically fragile in half precision; the reference code keeps it in fp32
    flash3_auto = True  # diffusers' FA3 backend takes no mask: fine for Wan, which needs none

    def mode_of_index(self, pipeline_class: str, index: dict[str, Any]) -> str:
        if pipeline_class == "WanPipeline" and index.get("expand_timesteps"):
            return "ti2v"  # Wan 2.2 TI2V: the first latent frame is the image's when one is given
        return super().mode_of_index(pipeline_class, index)

    def text_len_rule(self, transformer_config: dict[str, Any], mode: str) -> tuple[int | None, str]:
        if mode == "i2v" and transformer_config.get("image_dim") is not None:
            return 512, ("Wan 2.1 image-to-video separates the image tokens from the text by assuming 512 "
                         "text tokens")
        return None, ""

    def teacache_coefficients(self, config: Any, retention: bool) -> tuple[str | None, str | None]:
        dim = config.num_attention_heads * config.attention_head_dim
        # image-to-video: a CLIP image projection (2.1), or condition channels beside the latent (2.2)
        i2v = getattr(config, "image_dim", None) is not None or config.in_channels != (config.out_channels
                                                                                      or config.in_channels)
        name, fallback = None, None
        if dim == 5120:
            name = "wan2.1-i2v-480p" if i2v else "wan2.1-t2v-14b"
        elif dim == 1536 and not i2v:
            name = "wan2.1-t2v-1.3b"
        else:
            fallback = "wan2.1-i2v-480p" if i2v else "wan2.1-t2v-1.3b"
        if retention:
            name, fallback = (name and name + "-ret"), (fallback and fallback + "-ret")
        return name, fallback

    def timestep_indicators(self, transformer: Any, timesteps: Any, retention: bool) -> Any:
        """The official code embeds the timestep in fp32 (``temb``; retention mode: its projection
        ``timestep_proj``) and its coefficients were fitted on that: diffusers' embedder returns
        ``temb`` cast to the model's dtype, so this recomputes it in fp32, weights upcast."""
        import torch

        from .adapter import fp32_call

        ce = transformer.condition_embedder
        ts = timesteps.to(next(iter(ce.parameters())).device, torch.float32)  # offloaded: where it is
        temb = fp32_call(ce.time_embedder, ce.timesteps_proj(ts))
        return fp32_call(ce.time_proj, ce.act_fn(temb)) if retention else temb

    def embedder_indicator(self, transformer: Any, args: tuple, kwargs: dict, output: Any, retention: bool) -> Any:
        timestep = args[0] if args else kwargs["timestep"]  # flattened per token on Wan 2.2 TI2V
        like = output[self.teacache.retention_index if retention else self.teacache.index]
        return self.timestep_indicators(transformer, timestep.flatten(), retention).reshape(like.shape)


ADAPTER = WanAdapter()

NAMES = (
    ModelName("tiny", "wan", "embedded", "tiny Wan-architecture reference model shipped inside vidcache", "tiny"),
    ModelName("wan", "wan", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "Wan 2.1 text-to-video 1.3B, 480p", "wan",
              geometry=Geometry(12, 1, 2), aliases=("wan-1.3b", "wan2.1-t2v-1.3b")),
    ModelName("wan-14b", "wan", "Wan-AI/Wan2.1-T2V-14B-Diffusers", "Wan 2.1 text-to-video 14B, 720p", "wan-14b",
              geometry=Geometry(40, 1, 2), aliases=("wan2.1-t2v-14b",)),
    ModelName("wan2.2-ti2v-5b", "wan", "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
              "Wan 2.2 text/image-to-video 5B, 720p, 24 fps", "wan2.2-ti2v-5b", mode="ti2v",
              geometry=Geometry(24, 1, 2, s_comp=16), size_multiple=32),
    ModelName("wan2.2-t2v-a14b", "wan", "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
              "Wan 2.2 text-to-video A14B, two expert transformers (high / low noise)", "wan2.2-t2v-a14b",
              geometry=Geometry(40, 1, 2), two_experts=True),
    ModelName("wan-i2v", "wan", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
              "Wan 2.1 image-to-video 14B, 480p, CLIP image encoder", "wan-i2v", mode="i2v",
              geometry=Geometry(40, 1, 2), aliases=("wan2.1-i2v-14b-480p", "wan-i2v-480p")),
    ModelName("wan-i2v-720p", "wan", "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
              "Wan 2.1 image-to-video 14B, 720p, CLIP image encoder", "wan-i2v-720p", mode="i2v",
              geometry=Geometry(40, 1, 2), aliases=("wan2.1-i2v-14b-720p",)),
    ModelName("wan2.2-i2v-a14b", "wan", "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
              "Wan 2.2 image-to-video A14B, two expert transformers (high / low noise)", "wan2.2-i2v-a14b",
              mode="i2v", geometry=Geometry(40, 1, 2), two_experts=True),
)

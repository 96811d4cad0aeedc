"""HunyuanVideo and HunyuanVideo-I2V: guidance-distilled (one forward per step); dual-stream then
single-stream blocks.

HunyuanVideo-I2V (hunyuanvideo-community/HunyuanVideo-I2V, ``image_condition_type`` "token_replace")
replaces the first latent frame by the image's and modulates its tokens with a timestep-0
embedding: its blocks (``HunyuanVideoTokenReplace*Block``, in diffusers' block registry) take that
embedding and the first frame's token count, which TeaCache's indicator passes on, and which
context parallelism makes per-rank (``FirstFrameTokensHook``). vidcache never passes
``true_cfg_scale``: with it the I2V pipeline would run a second forward outside any cache context,
sharing the cond branch's cache state."""

from __future__ import annotations

from typing import Any

from .adapter import FamilyAdapter, TeaCacheIndicator
from .geometry import Geometry
from .spec import ModelName


class HunyuanVideoAdapter(FamilyAdapter):
    name = "hunyuan"
    pipelines = {"HunyuanVideoPipeline": "t2v", "HunyuanVideoImageToVideoPipeline": "i2v"}
    transformer_classes = ("HunyuanVideoTransformer3DModel",)
    folder_presets = {"t2v": "hunyuan", "i2v": "hunyuan-i2v"}
    cfg_layout = "distilled"
    block_lists = ("transformer_blocks", "single_transformer_blocks")
    attention_attrs = {"attn": "spatial"}  # joint attention over video + text in both block kinds
    text_stream_blocks = True  # single-stream blocks split the streams again before returning
    joint_attention = True
    teacache = TeaCacheIndicator(None)  # block 0's modulated input: depends on the content
    fbcache_threshold = 0.06
    frame_rule = "HunyuanVideo takes 4k+1 frames (5, 9, ..., 129)"
    accepts_negative_prompt = False
    needs_attention_mask = True  # padded text tokens are masked

    def teacache_coefficients(self, config: Any, retention: bool) -> tuple[str | None, str | None]:
        if getattr(config, "image_condition_type", None) is not None:  # I2V: no official set, T2V's borrowed
            return None, "hunyuanvideo"
        return "hunyuanvideo", None

    def block_indicator(self, block: Any, meta: Any, hidden: Any, args: tuple, kwargs: dict) -> Any:
        temb = meta._get_parameter_from_args_kwargs("temb", args, kwargs)
        if _token_replace(block):  # the first frame's tokens are modulated by the timestep-0 embedding
            emb = meta._get_parameter_from_args_kwargs("token_replace_emb", args, kwargs)
            first = meta._get_parameter_from_args_kwargs("num_tokens", args, kwargs)
            return block.norm1(hidden, temb, emb, first)[0]
        return block.norm1(hidden, emb=temb)[0]

    def cp_plan(self) -> dict[str, Any]:
        from .hunyuan_cp import hunyuan_video_cp_plan

        return hunyuan_video_cp_plan()

    def finish_cp(self, transformer: Any, plan: Any, config: Any) -> None:
        from diffusers.hooks import HookRegistry

        from .adapter import CP_HOOK_PREFIX
        from .hunyuan_cp import FirstFrameTokensHook, JointTextMaskHook

        memo: dict[str, Any] = {}
        shard = None
        if getattr(transformer.config, "image_condition_type", None) == "token_replace":
            import torch.distributed as dist

            shard = dist.get_rank(config._flattened_mesh.get_group())  # set up by enable_parallelism
        for _, block in self.blocks(transformer):
            registry = HookRegistry.check_if_exists_or_initialize(block)
            registry.register_hook(JointTextMaskHook(plan.ulysses, plan.ring, memo), CP_HOOK_PREFIX + "joint_text_mask")
            if shard is not None:
                registry.register_hook(FirstFrameTokensHook(shard), CP_HOOK_PREFIX + "first_frame_tokens")
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def _token_replace(block: Any) -> bool:
    return type(block).__name__.startswith("HunyuanVideoTokenReplace")


ADAPTER = HunyuanVideoAdapter()

NAMES = (
    ModelName("hunyuan", "hunyuan", "hunyuanvideo-community/HunyuanVideo", "HunyuanVideo 13B, 720p, 24 fps",
              "hunyuan", geometry=Geometry(24, 1, 2), aliases=("hunyuanvideo",)),
    ModelName("hunyuan-i2v", "hunyuan", "hunyuanvideo-community/HunyuanVideo-I2V",
              "HunyuanVideo-I2V 13B image-to-video (first frame replaced by the image), 720p, 24 fps",
              "hunyuan-i2v", mode="i2v", geometry=Geometry(24, 1, 2), aliases=("hunyuanvideo-i2v",)),
)

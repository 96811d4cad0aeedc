"""HunyuanVideo: guidance-distilled (one forward per step); dual-stream then single-stream blocks."""

from __future__ import annotations

from typing import Any

from .adapter import FamilyAdapter, TeaCacheIndicator
from .geometry import Geometry
from .spec import ModelName


class HunyuanVideoAdapter(FamilyAdapter):
    name = "hunyuan"
    pipelines = {"HunyuanVideoPipeline": "t2v", "HunyuanVideoImageToVideoPipeline": "i2v"}
    transformer_classes = ("HunyuanVideoTransformer3DModel",)
    folder_presets = {"t2v": "hunyuan"}
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
        return "hunyuanvideo", None

    def block_indicator(self, block: Any, meta: Any, hidden: Any, args: tuple, kwargs: dict) -> Any:
        temb = meta._get_parameter_from_args_kwargs("temb", args, kwargs)
        return block.norm1(hidden, emb=temb)[0]

    def cp_plan(self) -> dict[str, Any]:
        from .hunyuan_cp import hunyuan_video_cp_plan

        return hunyuan_video_cp_plan()

    def finish_cp(self, transformer: Any, plan: Any, config: Any) -> None:
        from diffusers.hooks import HookRegistry

        from .adapter import CP_HOOK_PREFIX
        from .hunyuan_cp import JointTextMaskHook

        memo: dict[str, Any] = {}
        for _, block in self.blocks(transformer):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                JointTextMaskHook(plan.ulysses, plan.ring, memo), CP_HOOK_PREFIX + "joint_text_mask")
        HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


ADAPTER = HunyuanVideoAdapter()

NAMES = (
    ModelName("hunyuan", "hunyuan", "hunyuanvideo-community/HunyuanVideo", "HunyuanVideo 13B, 720p, 24 fps",
              "hunyuan", geometry=Geometry(24, 1, 2), aliases=("hunyuanvideo",)),
)

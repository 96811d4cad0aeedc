"""HunyuanVideo: guidance-distilled (one forward per step); dual-stream then single-stream blocks."""

from .base import FamilySpec, ModelName

FAMILY = FamilySpec(
    name="hunyuan",
    pipeline_class="HunyuanVideoPipeline",
    transformer_classes=("HunyuanVideoTransformer3DModel",),
    cfg_layout="distilled",
    block_lists=("transformer_blocks", "single_transformer_blocks"),
    frame_rule="HunyuanVideo takes 4k+1 frames (5, 9, ..., 129)",
    accepts_negative_prompt=False,
)

NAMES = (
    ModelName("hunyuan", "hunyuan", "hunyuanvideo-community/HunyuanVideo", "HunyuanVideo 13B, 720p, 24 fps",
              "hunyuan", aliases=("hunyuanvideo",)),
)

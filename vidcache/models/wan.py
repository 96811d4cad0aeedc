"""Wan 2.1 / 2.2: two separate CFG forwards per step; blocks in ``transformer.blocks``."""

from .base import FamilySpec, ModelName

FAMILY = FamilySpec(
    name="wan",
    pipeline_class="WanPipeline",
    transformer_classes=("WanTransformer3DModel",),
    cfg_layout="separate",
    block_lists=("blocks",),
    frame_rule="Wan takes 4k+1 frames (5, 9, ..., 81, ...)",
)

NAMES = (
    ModelName("tiny", "wan", "embedded", "tiny Wan-architecture reference model shipped inside vidcache", "tiny"),
    ModelName(
        "wan",
        "wan",
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        "Wan 2.1 text-to-video 1.3B, 480p",
        "wan",
        aliases=("wan-1.3b", "wan2.1-t2v-1.3b"),
    ),
    ModelName(
        "wan-14b",
        "wan",
        "Wan-AI/Wan2.1-T2V-14B-Diffusers",
        "Wan 2.1 text-to-video 14B, 720p",
        "wan-14b",
        aliases=("wan2.1-t2v-14b",),
    ),
    ModelName(
        "wan2.2-ti2v-5b",
        "wan",
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        "Wan 2.2 text/image-to-video 5B, 720p, 24 fps",
        "wan2.2-ti2v-5b",
        size_multiple=32,
    ),
    ModelName(
        "wan2.2-t2v-a14b",
        "wan",
        "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
        "Wan 2.2 text-to-video A14B, two expert transformers (high / low noise)",
        "wan2.2-t2v-a14b",
    ),
)

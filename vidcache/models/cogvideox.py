"""CogVideoX: CFG as one forward on a batch [uncond, cond]; a video and a text stream per block."""

from .base import FamilySpec, ModelName

FAMILY = FamilySpec(
    name="cogvideox",
    pipeline_class="CogVideoXPipeline",
    transformer_classes=("CogVideoXTransformer3DModel",),
    cfg_layout="batched",
    block_lists=("transformer_blocks",),
    frame_rule="CogVideoX takes 8k+1 frames up to 49 (9, 17, 25, 33, 41, 49)",
    frame_step=8,  # an even latent frame count decodes to the wrong length
    max_frames=49,
    uses_flow_shift=False,
)

NAMES = (
    ModelName("cogvideox", "cogvideox", "THUDM/CogVideoX-2b", "CogVideoX 2B, 480x720, 8 fps", "cogvideox",
              aliases=("cogvideox-2b",)),
    ModelName("cogvideox-5b", "cogvideox", "THUDM/CogVideoX-5b", "CogVideoX 5B, 480x720, 8 fps", "cogvideox-5b"),
)

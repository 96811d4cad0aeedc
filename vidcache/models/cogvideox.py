"""CogVideoX: CFG as one forward on a batch [uncond, cond]; a video and a text stream per block."""

from __future__ import annotations

from typing import Any

from .adapter import FamilyAdapter, TeaCacheIndicator
from .geometry import Geometry
from .spec import ModelName


class CogVideoXAdapter(FamilyAdapter):
    name = "cogvideox"
    pipelines = {"CogVideoXPipeline": "t2v", "CogVideoXImageToVideoPipeline": "i2v"}
    transformer_classes = ("CogVideoXTransformer3DModel",)
    folder_presets = {"t2v": "cogvideox", "i2v": "cogvideox-5b-i2v"}
    cfg_layout = "batched"
    batched_inputs = ("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs")
    block_lists = ("transformer_blocks",)
    attention_attrs = {"attn1": "spatial"}  # joint attention over [text, video]
    text_residual = True  # TeaCache's official CogVideoX code caches both streams' residuals
    text_stream_blocks = True
    joint_attention = True
    frame_dim = 1  # hidden_states is [B, F, C, H, W]
    teacache = TeaCacheIndicator("time_embedding")
    fbcache_threshold = 0.04
    frame_rule = "CogVideoX takes 8k+1 frames up to 49 (9, 17, 25, 33, 41, 49)"
    frame_step = 8  # an even latent frame count decodes to the wrong length
    max_frames = 49
    uses_flow_shift = False
    cp_joint_sequence = True  # see cogvideox_cp.CogVideoXSplitHooks
    dispatches_attention = False  # its processor calls SDPA itself (under CP: cogvideox_cp's processor)

    def text_len_rule(self, transformer_config: dict[str, Any], mode: str) -> tuple[int | None, str]:
        """Positional embeddings (sincos, as in CogVideoX-2B, or learned, as in 5B-I2V) are laid out
        for exactly ``max_text_seq_length`` text tokens; only RoPE models take any length."""
        rope = transformer_config.get("use_rotary_positional_embeddings", False)
        learned = transformer_config.get("use_learned_positional_embeddings", False)
        if rope and not learned:
            return None, ""
        n = int(transformer_config.get("max_text_seq_length", 226))
        return n, f"its positional embeddings are laid out for max_text_seq_length = {n} text tokens"

    def size_rule(self, transformer_config: dict[str, Any], s_comp: int) -> tuple[tuple[int, int] | None, str]:
        """Learned positional embeddings (CogVideoX-5B-I2V) exist for the sample size only."""
        if not transformer_config.get("use_learned_positional_embeddings", False):
            return None, ""
        size = (int(transformer_config.get("sample_height", 60)) * s_comp,
                int(transformer_config.get("sample_width", 90)) * s_comp)
        return size, "its learned positional embeddings exist for that size only"

    def teacache_coefficients(self, config: Any, retention: bool) -> tuple[str | None, str | None]:
        dim = config.num_attention_heads * config.attention_head_dim
        if getattr(config, "patch_size_t", None) is not None:
            return ("cogvideox1.5-5b-i2v" if config.in_channels == 32 else "cogvideox1.5-5b"), None
        if dim == 1920:
            return "cogvideox-2b", None
        if dim == 3072:
            return "cogvideox-5b", None  # the official set of 5b and 5b-I2V
        return None, "cogvideox-2b"

    def timestep_indicators(self, transformer: Any, timesteps: Any, retention: bool) -> Any:
        import torch

        emb = transformer.time_embedding
        ts = timesteps.to(next(iter(emb.parameters())).device, torch.float32)
        return emb(transformer.time_proj(ts).to(transformer.dtype)).float()

    # -- context parallelism: the model's processor calls SDPA itself, and the joint sequence splits
    def cp_plan(self) -> dict[str, Any]:
        return {}  # the split is CogVideoXSplitHooks', registered in finish_cp

    def prepare_cp(self, transformer: Any) -> None:
        from .cogvideox_cp import CogVideoXAttnProcessorCP

        for module in transformer.modules():
            if type(getattr(module, "processor", None)).__name__ == "CogVideoXAttnProcessor2_0":
                module.set_processor(CogVideoXAttnProcessorCP())

    def finish_cp(self, transformer: Any, plan: Any, config: Any) -> None:
        import torch.distributed as dist

        from .cogvideox_cp import CogVideoXSplitHooks

        group = config._flattened_mesh.get_group()  # set up by enable_parallelism
        CogVideoXSplitHooks(transformer, plan.cp, dist.get_rank(group), group).register(transformer)


ADAPTER = CogVideoXAdapter()

NAMES = (
    ModelName("cogvideox", "cogvideox", "THUDM/CogVideoX-2b", "CogVideoX 2B, 480x720, 8 fps", "cogvideox",
              geometry=Geometry(30, 1, 2), aliases=("cogvideox-2b",)),
    ModelName("cogvideox-5b", "cogvideox", "THUDM/CogVideoX-5b", "CogVideoX 5B, 480x720, 8 fps", "cogvideox-5b",
              geometry=Geometry(48, 1, 2)),
    ModelName("cogvideox-5b-i2v", "cogvideox", "THUDM/CogVideoX-5b-I2V", "CogVideoX 5B image-to-video, 480x720, 8 fps",
              "cogvideox-5b-i2v", mode="i2v", geometry=Geometry(48, 1, 2)),
)

"""HunyuanVideo 1.5: CFG as two forwards per step through a diffusers guider; dual-stream blocks only.

What its pipelines do differently from the other families (diffusers 0.42.1), and how vidcache
meets it here rather than in the caches or the runner:

* CFG runs through a ``ClassifierFreeGuidance`` *guider* component: two separate forwards per
  step, in cache contexts "pred_cond" and "pred_uncond" (``cfg_contexts``: the caches see them as
  "cond" / "uncond"). The pipelines take no ``guidance_scale``: the guider holds it, and
  ``pipeline_kwargs`` sets it there (a new guider when the job's guidance differs). Whether the
  uncond forward runs is the guider's ``num_conditions`` (``cfg_active``).
* No ``max_sequence_length``: the Qwen2.5-VL prompt is padded to the pipeline's
  ``tokenizer_max_length`` (1000): ``text_len`` sets it. The joint text stream is then 1000 prompt
  + 256 ByT5 glyph + 729 image tokens, padding masked, so a shorter budget changes nothing but
  the time when the prompt fits.
* No ``callback_on_step_end``: the runner's per-step callback is called after each scheduler step
  instead (``_StepCallback``, on this pipeline's scheduler only, removed after the last step).
* The image-to-video pipeline takes no height or width: it makes the video at the bucket of about
  ``target_size``\\ :sup:`2` pixels (the transformer's config, 640 for 480p) nearest the image's aspect
  ratio, 16-pixel multiples (``size_from_image``; the runner drops the job's height and width).
* Its blocks (``HunyuanVideo15TransformerBlock``) are not in diffusers' ``TransformerBlockRegistry``:
  ``register_blocks`` adds them, so vidcache's caches and diffusers' own (First Block Cache...) work.
* Context parallelism: diffusers gives it no ``_cp_plan`` and its attention processor builds a
  square mask over the local sequence; ``hunyuan15_cp`` splits the video tokens, keeps the text
  whole and attends through its own processor with HunyuanVideo's joint-text key mask.

TeaCache: no official coefficients exist; the indicator is HunyuanVideo's (block 0's modulated
input, content-dependent: its blocks modulate the same way) and the coefficients are borrowed from
HunyuanVideo with a run-time warning (``vidcache calibrate`` fits proper ones).
"""

from __future__ import annotations

from typing import Any

from .adapter import FamilyAdapter, TeaCacheIndicator
from .geometry import Geometry
from .spec import ModelName

# the joint text stream besides the prompt: the pipelines' ByT5 glyph budget (tokenizer_2_max_length)
# and the image tokens (text-to-video: 729 zeros; image-to-video: SigLIP-so400m's 27 x 27 features)
GLYPH_TOKENS, IMAGE_TOKENS = 256, 729


class HunyuanVideo15Adapter(FamilyAdapter):
    name = "hunyuan15"
    pipelines = {"HunyuanVideo15Pipeline": "t2v", "HunyuanVideo15ImageToVideoPipeline": "i2v"}
    transformer_classes = ("HunyuanVideo15Transformer3DModel",)
    folder_presets = {"t2v": "hunyuan15", "i2v": "hunyuan15-i2v"}
    cfg_layout = "separate"
    cfg_contexts = ("pred_cond", "pred_uncond")
    block_lists = ("transformer_blocks",)
    attention_attrs = {"attn": "spatial"}  # joint attention over [video, text]
    text_stream_blocks = True
    joint_attention = True
    teacache = TeaCacheIndicator(None)  # block 0's modulated input, as HunyuanVideo's
    fbcache_threshold = 0.06  # HunyuanVideo's (METHODS.md); not measured on 1.5
    frame_rule = "HunyuanVideo 1.5 takes 4k+1 frames (5, 9, ..., 121)"
    needs_attention_mask = True  # padded text tokens are masked
    image_size_modes = ("i2v",)  # the image-to-video pipeline takes no height / width

    def register_blocks(self) -> None:
        from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
        from diffusers.models.transformers.transformer_hunyuan_video15 import HunyuanVideo15TransformerBlock

        # forward(hidden_states, encoder_hidden_states, temb, ...) -> (hidden_states, encoder_hidden_states)
        TransformerBlockRegistry.register(HunyuanVideo15TransformerBlock, TransformerBlockMetadata(
            return_hidden_states_index=0, return_encoder_hidden_states_index=1))

    def cfg_active(self, pipe: Any) -> bool | None:
        guider = getattr(pipe, "guider", None)
        return None if guider is None else bool(guider._enabled and guider.num_conditions > 1)

    # -- inputs ---------------------------------------------------------------------------------
    def size_from_image(self, mode: str, image_size: tuple[int, int],
                        transformer_config: dict[str, Any] | None) -> tuple[int, int] | None:
        if mode not in self.image_size_modes:
            return None
        from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

        target = int((transformer_config or {}).get("target_size", 640))
        width, height = image_size
        h, w = HunyuanVideo15ImageProcessor(vae_scale_factor=16).calculate_default_height_width(height, width, target)
        return int(h), int(w)

    def pipeline_kwargs(self, kwargs: dict[str, Any], mode: str, pipe: Any = None) -> dict[str, Any]:
        kw = dict(kwargs)
        guidance = kw.pop("guidance_scale", None)
        kw.pop("guidance_scale_2", None)
        text_len = kw.pop("max_sequence_length", None)
        callback = kw.pop("callback_on_step_end", None)
        if mode == "i2v":  # the pipeline derives the size from the image (size_from_image)
            kw.pop("height", None)
            kw.pop("width", None)
        if pipe is None:
            if guidance is not None or text_len is not None or callback is not None:
                raise ValueError("HunyuanVideo 1.5 takes guidance, text length and step callback through "
                                 "its pipeline: pass pipe")
            return kw
        if guidance is not None and float(pipe.guider.guidance_scale) != float(guidance):
            pipe.guider = pipe.guider.new(guidance_scale=float(guidance))
        if text_len is not None:
            pipe.tokenizer_max_length = int(text_len)
        if callback is not None:
            _StepCallback.install(pipe, callback)
        return kw

    def text_tokens(self, text_len: int) -> int:
        return text_len + GLYPH_TOKENS + IMAGE_TOKENS

    # -- TeaCache -------------------------------------------------------------------------------
    def teacache_coefficients(self, config: Any, retention: bool) -> tuple[str | None, str | None]:
        return None, "hunyuanvideo"  # no official set: HunyuanVideo's, with a warning

    def block_indicator(self, block: Any, meta: Any, hidden: Any, args: tuple, kwargs: dict) -> Any:
        temb = meta._get_parameter_from_args_kwargs("temb", args, kwargs)
        return block.norm1(hidden, emb=temb)[0]

    # -- context parallelism --------------------------------------------------------------------
    def cp_plan(self) -> dict[str, Any]:
        from .hunyuan_cp import hunyuan_video_cp_plan  # x_embedder, rope, proj_out: HunyuanVideo's names

        return hunyuan_video_cp_plan()

    def prepare_cp(self, transformer: Any) -> None:
        from .hunyuan15_cp import HunyuanVideo15AttnProcessorCP

        for module in transformer.modules():
            if type(getattr(module, "processor", None)).__name__ == "HunyuanVideo15AttnProcessor2_0":
                module.set_processor(HunyuanVideo15AttnProcessorCP())


class _StepCallback:
    """The runner's ``callback_on_step_end(pipe, step, timestep, {})``, called after each step of the
    pipeline's scheduler, for HunyuanVideo 1.5's pipelines, which take no step callback.

    It wraps ``step`` on this scheduler instance only (the class's method, never a wrapper of a
    wrapper) and removes itself after the schedule's last step, or is replaced at the next call."""

    def __init__(self, pipe: Any, scheduler: Any, callback: Any) -> None:
        self.pipe, self.scheduler, self.callback = pipe, scheduler, callback
        self.step = type(scheduler).step.__get__(scheduler)
        self.done = 0

    @classmethod
    def install(cls, pipe: Any, callback: Any) -> None:
        scheduler = pipe.scheduler
        scheduler.__dict__["step"] = cls(pipe, scheduler, callback)

    def __call__(self, model_output: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        out = self.step(model_output, timestep, *args, **kwargs)
        index = self.done
        self.done += 1
        if self.done >= len(self.scheduler.timesteps):
            self.scheduler.__dict__.pop("step", None)
        self.callback(self.pipe, index, timestep, {})
        return out


ADAPTER = HunyuanVideo15Adapter()

NAMES = (
    ModelName("hunyuan15", "hunyuan15", "hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v",
              "HunyuanVideo 1.5 text-to-video 8.3B, 480p, 24 fps", "hunyuan15",
              geometry=Geometry(16, 1, 1, t_comp=4, s_comp=16), aliases=("hunyuanvideo-1.5", "hunyuan15-t2v")),
    ModelName("hunyuan15-i2v", "hunyuan15", "hunyuanvideo-community/HunyuanVideo-1.5-480p_i2v",
              "HunyuanVideo 1.5 image-to-video 8.3B, 480p (size from the image), 24 fps", "hunyuan15-i2v",
              mode="i2v", geometry=Geometry(16, 1, 1, t_comp=4, s_comp=16), aliases=("hunyuanvideo-1.5-i2v",)),
)

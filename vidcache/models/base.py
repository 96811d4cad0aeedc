"""What vidcache must know about a model family beyond what diffusers' config files say."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FamilySpec:
    """A model family: how to load it, what inputs it takes, how it runs CFG, where its parts live.

    ``cfg_layout`` is one of ``"separate"`` (two forwards per step in cache contexts "cond" and
    "uncond", Wan), ``"batched"`` (one forward on [uncond, cond], CogVideoX) or ``"distilled"``
    (guidance-distilled, one forward per step, HunyuanVideo).
    """

    name: str
    pipeline_class: str
    transformer_classes: tuple[str, ...]
    cfg_layout: str
    block_lists: tuple[str, ...]
    frame_rule: str  # human-readable, used in error messages
    size_multiple: int = 16
    frame_step: int = 4  # frames must be frame_step*k + 1
    max_frames: int | None = None
    uses_flow_shift: bool = True
    accepts_negative_prompt: bool = True

    def frames_ok(self, frames: int) -> bool:
        if frames < 1 or (frames - 1) % self.frame_step:
            return False
        return self.max_frames is None or frames <= self.max_frames


@dataclass(frozen=True)
class ModelName:
    """A short name users type (`--model wan`) and what it stands for."""

    name: str
    family: str
    source: str  # hub id, or "embedded" for the packaged tiny model
    description: str
    preset: str
    size_multiple: int | None = None  # overrides the family's (Wan 2.2 TI2V-5B: 32)
    max_frames: int | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)

"""The names users type (``--model wan``) and what each stands for."""

from __future__ import annotations

from dataclasses import dataclass, field

from .geometry import Geometry


@dataclass(frozen=True)
class ModelName:
    """A known model: its family adapter's name, where its weights live, its preset, and the numbers
    validation needs before anything is downloaded (``geometry``: heads, patches, VAE compression,
    from the checkpoint's own configs)."""

    name: str
    family: str
    source: str  # hub id, or "embedded" for the packaged tiny model
    description: str
    preset: str
    mode: str = "t2v"  # "t2v", "i2v", or "ti2v" (takes an image or not)
    geometry: Geometry | None = None
    size_multiple: int | None = None  # overrides the family's (Wan 2.2 TI2V-5B: 32)
    max_frames: int | None = None
    two_experts: bool = False  # high- and low-noise transformers (Wan 2.2 A14B)
    aliases: tuple[str, ...] = field(default_factory=tuple)

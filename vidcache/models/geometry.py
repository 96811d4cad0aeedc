"""A model's token geometry, read from its configs without loading weights.

Patch sizes, heads and VAE compression decide how many tokens a video makes (memory estimates,
context-parallel splits, AdaCache's frames): one reader for all of them, from a folder's (or the
Hugging Face cache's) ``transformer/config.json`` and ``vae/config.json``, or, for the shipped
model names, from the numbers their adapters' ``ModelName`` carries, so that validation never
needs a download.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Geometry:
    """What decides how many tokens a video makes and how a sequence can be split."""

    heads: int | None
    patch_t: int
    patch: int
    t_comp: int = 4
    s_comp: int = 8

    def video_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        latent_f = (frames - 1) // self.t_comp + 1
        return (math.ceil(latent_f / self.patch_t), height // (self.s_comp * self.patch),
                width // (self.s_comp * self.patch))


def patch_sizes(config: Any) -> tuple[int, int, int]:
    """(temporal, height, width) patch sizes of a transformer config (an object or a dict):
    Wan states a (t, h, w) tuple, CogVideoX and HunyuanVideo a size and ``patch_size_t``."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    p = get("patch_size", 2)
    if isinstance(p, (list, tuple)):
        return int(p[0]), int(p[-2]), int(p[-1])
    return int(get("patch_size_t", None) or 1), int(p), int(p)


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def config_file(source: str, name: str, is_local: bool) -> dict | None:
    """``name`` (e.g. ``transformer/config.json``) of a folder or of a hub id in the local HF cache."""
    if is_local:
        return read_json(Path(source) / name)
    try:
        from huggingface_hub import hf_hub_download

        return read_json(Path(hf_hub_download(source, name, local_files_only=True)))
    except Exception:  # noqa: BLE001 - not cached: the caller falls back to known numbers
        return None


def geometry_of_configs(transformer: dict, vae: dict | None) -> Geometry:
    patch_t, _, patch = patch_sizes(transformer)
    vae = vae or {}
    t_comp = vae.get("scale_factor_temporal") or vae.get("temporal_compression_ratio") or 4
    s_comp = vae.get("scale_factor_spatial") or vae.get("spatial_compression_ratio")
    if s_comp is None and vae.get("block_out_channels"):  # CogVideoX: one downsample per level but the last
        s_comp = 2 ** (len(vae["block_out_channels"]) - 1)
    return Geometry(transformer.get("num_attention_heads"), patch_t, patch, int(t_comp), int(s_comp or 8))


def model_geometry(model: Any) -> Geometry | None:
    """The geometry of a resolved model: from its configs, else its known name's numbers."""
    tr = model.transformer_config()
    if tr is None:
        return model.known.geometry if model.known else None
    return geometry_of_configs(tr, config_file(model.source, "vae/config.json", model.is_local))

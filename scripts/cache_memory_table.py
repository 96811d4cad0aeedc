"""Print docs/benchmarks.md's table of cache memory at the presets' sizes, from the presets themselves.

Why: the table is what a user reads to know whether a method fits next to a model before renting the
GPU, so it must use the parameters the presets really run with (MixCache's ``block_window`` decides
how many block residuals it keeps) and the shapes of the real checkpoints. No weights are needed: the
shapes below are the public configs' numbers, and ``vidcache.memory.estimate_cache_bytes`` is the same
function the runner asks before the first video.

    python scripts/cache_memory_table.py            # markdown, GiB
"""

from __future__ import annotations

import argparse

from vidcache import presets
from vidcache.memory import GIB, JobShape, ModelShape, estimate_cache_bytes


def wan(hidden: int, layers: int) -> ModelShape:
    return ModelShape("wan", hidden, layers, 0, {"spatial": layers, "cross": layers}, (1, 2, 2), 4, 8, 16, 2)


# Shapes of the public diffusers configs (heads x head dim, blocks, attention modules), bf16.
SHAPES = {
    "Wan2.1-1.3B": wan(12 * 128, 30),
    "Wan2.1-14B": wan(40 * 128, 40),
    "CogVideoX-5B": ModelShape("cogvideox", 48 * 64, 42, 42, {"spatial": 42}, (1, 2, 2), 4, 8, 16, 2),
    "HunyuanVideo": ModelShape("hunyuan", 24 * 128, 60, 60, {"spatial": 60}, (1, 2, 2), 4, 8, 16, 2),
}

# (label, model, preset, frames, height, width): the presets' own sizes, plus Wan2.1-14B at 480p.
ROWS = [
    ("Wan2.1-1.3B 480p 81f", "Wan2.1-1.3B", "wan", 81, 480, 832),
    ("Wan2.1-14B 480p 81f", "Wan2.1-14B", "wan-14b", 81, 480, 832),
    ("Wan2.1-14B 720p 81f", "Wan2.1-14B", "wan-14b", 81, 720, 1280),
    ("CogVideoX-5B 480x720 49f", "CogVideoX-5B", "cogvideox-5b", 49, 480, 720),
    ("HunyuanVideo 720p 129f", "HunyuanVideo", "hunyuan", 129, 720, 1280),
]

METHODS = ["pab", "fastercache", "teacache", "adacache", "mixcache", "fbcache", "taylorseer", "magcache", "seacache"]


def cell(nbytes: int) -> str:
    """GiB to 0.1; smaller caches (latent-sized ones) to 0.001 so they do not read as nothing."""
    g = nbytes / GIB
    return f"{g:.1f}" if g >= 0.05 else f"{g:.3f}"


def table() -> str:
    lines = ["| model, size (preset) | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
    for label, model, preset_name, frames, height, width in ROWS:
        preset = presets.load(preset_name)
        shape = SHAPES[model]
        text_len = int(preset.defaults.get("text_len", 226))
        job = JobShape(frames, height, width, text_len, cfg=shape.adapter.cfg_layout != "distilled")
        cells = []
        for method in METHODS:
            params = presets.method_params(preset, method, None)
            est = estimate_cache_bytes(method, params, shape, job)
            cells.append("-" if est is None else cell(est))
        lines.append(f"| {label} ({preset_name}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    print(table())


if __name__ == "__main__":
    main()

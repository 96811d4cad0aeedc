"""The world of the tiny reference model: coloured shapes sliding over a dark background.

Caches are only meaningful on a model whose features change slowly from step to step, which
random weights do not give. So vidcache ships a small Wan model that was really trained, on clips
drawn here. This module is the single source of that world: the vocabulary (shapes, colours,
directions), prompt text <-> attributes, the combinations held out of training, the default
generation settings, and a vectorised renderer that draws a whole batch of clips as one tensor
program (no Python loop per clip), used both by ``scripts/train_reference.py`` and by the
adherence probe in ``vidcache.metrics``.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import torch

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.12),
    "green": (0.12, 0.80, 0.20),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.88, 0.10),
    "white": (0.95, 0.95, 0.95),
    "purple": (0.62, 0.15, 0.88),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
DIRECTIONS: dict[str, tuple[int, int]] = {  # (dx, dy) in image coordinates: y grows downwards
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
DIRECTION_NAMES: tuple[str, ...] = tuple(DIRECTIONS)
SYNONYMS: dict[str, str] = {"ball": "circle", "box": "square"}

# (shape, colour, direction) triples never shown in training: each of their words, and each pair
# of their words, is still seen in other combinations, so they test composition, not vocabulary.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("circle", "red", "up"),
    ("circle", "white", "left"),
    ("square", "green", "down"),
    ("square", "yellow", "right"),
    ("square", "purple", "up"),
    ("triangle", "blue", "left"),
    ("triangle", "red", "right"),
    ("triangle", "white", "down"),
)

# What `vidcache gen --model tiny` uses unless told otherwise (the model was trained at this size).
DEFAULTS: dict[str, object] = {
    "frames": 25,
    "height": 128,
    "width": 128,
    "steps": 25,
    "guidance": 5.0,
    "flow_shift": 2.0,
    "fps": 8,
    "text_len": 16,
    "negative_prompt": "",
}

# Pixel geometry at the training size (128 px); sizes down to 64 px keep the same pixel scale.
# Little nuisance variation on purpose: the model has minutes of CPU to learn this world, and what
# matters to the probe (and to a viewer) is the colour, the shape and the way it moves.
RADIUS_PX = (12.0, 15.0)
# per frame: about 62 px (half the frame) over the 25 default frames, i.e. ~1.3 latent pixels per
# latent frame -- slower motion is a sub-latent-pixel shift that a small model learns too slowly
SPEED_PX = (2.5, 2.7)
BACKGROUND = (0.03, 0.08)  # grey level of the plain background
COLOUR_JITTER = 0.02


def all_combos() -> list[tuple[str, str, str]]:
    """Every (shape, colour, direction) triple, in a fixed order."""
    return list(itertools.product(SHAPES, COLOUR_NAMES, DIRECTION_NAMES))


def train_combos() -> list[tuple[str, str, str]]:
    """The triples the model was trained on (all minus ``HELD_OUT``)."""
    held = set(HELD_OUT)
    return [c for c in all_combos() if c not in held]


def prompt_of(shape: str, colour: str, direction: str) -> str:
    """The canonical prompt, e.g. ``"a red circle moving left"``."""
    return f"a {colour} {shape} moving {direction}"


def parse_prompt(prompt: str) -> tuple[str | None, str | None, str | None]:
    """(shape, colour, direction) named in a prompt; None for what it does not name.

    Accepts the synonyms ``ball`` (circle) and ``box`` (square); the last word of a kind wins.
    """
    shape = colour = direction = None
    for word in re.findall(r"[a-z]+", prompt.lower()):
        word = SYNONYMS.get(word, word)
        if word in SHAPES:
            shape = word
        elif word in COLOURS:
            colour = word
        elif word in DIRECTIONS:
            direction = word
    return shape, colour, direction


def is_held_out(prompt: str) -> bool:
    """Whether the prompt names a combination that was held out of training."""
    return parse_prompt(prompt) in set(HELD_OUT)


@dataclass
class ClipBatch:
    """A batch of rendered clips and what they show.

    ``video`` is (B, 3, T, H, W) in [0, 1]; ``shape``/``colour``/``direction`` are (B,) indices
    into ``SHAPES``/``COLOUR_NAMES``/``DIRECTION_NAMES``; ``centre`` is (B, T, 2) object centres
    (x, y) in pixels; ``prompts`` the canonical prompts.
    """

    video: torch.Tensor
    shape: torch.Tensor
    colour: torch.Tensor
    direction: torch.Tensor
    centre: torch.Tensor
    prompts: list[str]


def _combo_indices(combos: list[tuple[str, str, str]]) -> torch.Tensor:
    return torch.tensor(
        [
            (SHAPES.index(s), COLOUR_NAMES.index(c), DIRECTION_NAMES.index(d))
            for s, c, d in combos
        ],
        dtype=torch.long,
    )


def make_batch(
    n: int,
    *,
    frames: int = 25,
    height: int = 128,
    width: int = 128,
    combos: list[tuple[str, str, str]] | None = None,
    generator: torch.Generator | None = None,
) -> ClipBatch:
    """Render ``n`` clips, each a random combo from ``combos`` (default: the training combos).

    Everything (combos, radius, speed, start point, background, colour jitter) is drawn from
    ``generator`` and rendered with broadcast tensor ops over (clip, frame, y, x) at once; shapes
    get a one-pixel anti-aliased edge. The object stays fully inside the frame for the whole clip.
    """
    g = generator
    table = _combo_indices(combos if combos is not None else train_combos())

    def u(*size: int) -> torch.Tensor:
        return torch.rand(*size, generator=g)

    pick = table[torch.randint(len(table), (n,), generator=g)]
    shape, colour, direction = pick[:, 0], pick[:, 1], pick[:, 2]
    radius = RADIUS_PX[0] + (RADIUS_PX[1] - RADIUS_PX[0]) * u(n)
    radius = radius * min(1.0, min(height, width) / 64)  # only frames under 64 px scale down
    speed = SPEED_PX[0] + (SPEED_PX[1] - SPEED_PX[0]) * u(n)
    # shrink the motion if a small frame cannot hold the whole path
    travel = speed * (frames - 1)
    dirs = torch.tensor(list(DIRECTIONS.values()), dtype=torch.float32)[direction]  # (n, 2)
    extent = torch.tensor([width, height], dtype=torch.float32)
    margin = radius + 1.0
    room = extent - 2 * margin[:, None]  # (n, 2) free span of the centre along x and y
    travel = torch.minimum(travel, room[:, 0].minimum(room[:, 1]).clamp_min(0) * 0.9)
    along = dirs.abs()  # 1 on the axis of motion
    span = room - along * travel[:, None]
    start = margin[:, None] + span * u(n, 2)
    # moving towards negative: start at the far end of the travel
    start = start + (dirs < 0).float() * travel[:, None]
    t = torch.arange(frames, dtype=torch.float32)
    step = travel / max(frames - 1, 1)
    centre = start[:, None, :] + dirs[:, None, :] * step[:, None, None] * t[None, :, None]

    ys = torch.arange(height, dtype=torch.float32) + 0.5
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    dx = xs.view(1, 1, 1, width) - centre[..., 0].view(n, frames, 1, 1)  # (n, T, 1, W)
    dy = ys.view(1, 1, height, 1) - centre[..., 1].view(n, frames, 1, 1)  # (n, T, H, 1)
    r = radius.view(n, 1, 1, 1)
    # signed "inside depth" in pixels for each shape, positive inside
    circle = r - torch.sqrt(dx * dx + dy * dy)
    half = r * 0.85
    square = half - torch.maximum(dx.abs(), dy.abs())
    # upward equilateral triangle, centroid at the centre (apex at -rt, base at +rt/2), a bit
    # larger than the circle so that the three shapes cover similar areas
    rt = r * 1.3
    k = math.sqrt(3.0)
    tri_base = 0.5 * rt - dy
    tri_sides = (rt - k * dx.abs() + dy) * 0.5  # distance to the two slanted edges
    triangle = torch.minimum(tri_base, tri_sides)
    depth = torch.where(
        shape.view(n, 1, 1, 1) == 0,
        circle,
        torch.where(shape.view(n, 1, 1, 1) == 1, square, triangle),
    )
    alpha = (depth + 0.5).clamp(0.0, 1.0)  # (n, T, H, W)

    palette = torch.tensor(list(COLOURS.values()), dtype=torch.float32)
    rgb = (palette[colour] + COLOUR_JITTER * (2 * u(n, 3) - 1)).clamp(0.0, 1.0)  # (n, 3)
    bg = BACKGROUND[0] + (BACKGROUND[1] - BACKGROUND[0]) * u(n)
    bg = bg.view(n, 1, 1, 1, 1)
    video = bg + alpha[:, None] * (rgb.view(n, 3, 1, 1, 1) - bg)
    prompts = [
        prompt_of(SHAPES[s], COLOUR_NAMES[c], DIRECTION_NAMES[d])
        for s, c, d in pick.tolist()
    ]
    return ClipBatch(video, shape, colour, direction, centre, prompts)


def prompt_set(split: str = "all", repeats: int = 1) -> list[str]:
    """Canonical prompts of the ``"train"`` or ``"held_out"`` combos or ``"all"``, each repeated."""
    combos = {
        "train": train_combos(),
        "held_out": list(HELD_OUT),
        "all": all_combos(),
    }[split]
    return [prompt_of(*c) for c in combos for _ in range(repeats)]

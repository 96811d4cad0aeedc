"""TeaCache (arXiv 2411.19108): skip the whole block stack when a cheap indicator says the output
will barely change, adding the residual the stack produced at the last computed step.

Per forward and branch (cache context):

    ind  = indicator(t, x)                               # per family, below; compared in fp32
    d    = mean|ind - ind_prev| / mean|ind_prev|
    acc += poly(coefficients)(d)                         # rescaled to "expected output change"
    forced step -> compute, acc = 0
    acc < thresh -> skip: out_of_stack = in_of_stack + residual
    else         -> compute, acc = 0, residual = out_of_stack - in_of_stack
    ind_prev = ind                                       # every forward

| family      | indicator                                        | residual                       |
|-------------|--------------------------------------------------|--------------------------------|
| Wan         | ``temb`` (retention mode: ``timestep_proj``)     | video tokens                   |
| CogVideoX   | time embedding ``emb``                           | video and text streams         |
| HunyuanVideo| ``transformer_blocks[0].norm1(x, temb)[0]``      | image tokens, taken after the  |
|             | (modulated input of block 0)                     | single-stream blocks' split    |

Forced steps: the first forward of a branch (nothing cached yet; on Wan 2.2 also the first
forward of each expert), the first ``first_steps`` steps and the last ``last_steps`` (default 1
and 1; Wan retention mode 5 and 0, as the official code). Accumulators, indicators and residuals
are per branch: Wan's cond and uncond forwards decide separately.

How the skip works without forking diffusers' model code: a hook on the first block of the stack
decides; when skipping it returns the block stack's input plus the cached residual(s), and every
later block's hook returns its inputs unchanged; when computing, the last block's hook stores
``output - input of the stack``. Output and input positions come from diffusers'
``TransformerBlockRegistry`` metadata (``return_hidden_states_index`` /
``return_encoder_hidden_states_index``), not hard-coded tuple layouts. The indicator of Wan and
CogVideoX is read by a hook on the time embedder, so nothing is recomputed.

Device reads. Wan's and CogVideoX's indicator depends on the timestep only, so on the first
decision of a branch in a video the head hook embeds every remaining timestep of the pipeline's
schedule in one batch and reads all consecutive relative L1 distances at once (one rank-agreed
read per branch and video); every later forward decides from that host list and reads nothing.
The schedule is therefore prompt-independent and identical on every rank; ``precompute_schedule``
gives it before a run. Where no schedule is known (a bare transformer) or the timestep is per token
(Wan 2.2 TI2V), and always on HunyuanVideo, whose indicator depends on the content, the decision
reads one relative L1 per non-forced forward (``base.relative_l1``).

Ours (the official code is silent or differs): ``thresh <= 0`` never skips (some coefficient sets
give a negative ``poly(d)`` for small ``d``, which would otherwise let ``acc < 0`` skip a step);
coefficients for models without an official set (Wan 2.2, the tiny model) fall back to the
nearest set with a warning, and ``vidcache calibrate`` fits proper ones.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import base
from .steps import StepScale, check_schedule_steps

# numpy poly1d order, x^4 ... x^0, from the official TeaCache repository (METHODS.md).
COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "wan2.1-t2v-1.3b": (
        2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01,
    ),
    "wan2.1-t2v-14b": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    "wan2.1-i2v-480p": (
        -3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01,
    ),
    "wan2.1-i2v-720p": (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
    "wan2.1-t2v-1.3b-ret": (
        -5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02,
    ),
    "wan2.1-t2v-14b-ret": (
        -3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01,
    ),
    "wan2.1-i2v-480p-ret": (
        2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01,
    ),
    "wan2.1-i2v-720p-ret": (
        8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02,
    ),
    "hunyuanvideo": (7.33226126e02, -4.01131952e02, 6.75869174e01, -3.14987800e00, 9.61237896e-02),
    "cogvideox-2b": (-3.10658903e01, 2.54732368e01, -5.92380459e00, 1.75769064e00, -3.61568434e-03),
    "cogvideox-5b": (-1.53880483e03, 8.43202495e02, -1.34363087e02, 7.97131516e00, -5.23162339e-02),
    "cogvideox1.5-5b": (
        2.50210439e02, -1.65061612e02, 3.57804877e01, -7.81551492e-01, 3.58559703e-02,
    ),
    "cogvideox1.5-5b-i2v": (
        1.22842302e02, -1.04088754e02, 2.62981677e01, -3.06009921e-01, 3.71213220e-02,
    ),
}


@dataclass
class TeaCacheConfig:
    """``coefficients``: a name from ``COEFFICIENTS`` or five numbers (x^4 .. x^0); absent = the
    official set for the transformer's size. ``first_steps`` / ``last_steps``: forced computes
    (absent = 1 / 1, Wan retention mode 5 / 0), stated for ``schedule_steps`` steps: a run with
    ``N = k * schedule_steps`` steps protects the same share of its steps (``caches/steps.py``), and
    reads the polynomial at the per-step change it was fitted for: ``acc += poly(k d) / k`` (a
    stretch of the trajectory cut into ``k`` times more steps changes ``k`` times less per step;
    the identity polynomial is unchanged), and compares it with ``thresh * k^(0.58 - 1)``, so that a run
    of skipped steps lasts ``k^0.58`` times as many steps (``caches/steps.py``)."""

    thresh: float = 0.1
    coefficients: str | list[float] | None = None
    retention: bool = False
    first_steps: int | None = None
    last_steps: int | None = None
    forecast: str = "residual"
    schedule_steps: int | None = None

    def __post_init__(self) -> None:
        self.thresh = base.check_float("thresh", self.thresh)
        check_forecast(self.forecast)
        self.schedule_steps = check_schedule_steps(self.schedule_steps)
        base.check_bool("retention", self.retention)
        c = self.coefficients
        if isinstance(c, str):
            if c not in COEFFICIENTS:
                raise ValueError(
                    f"unknown coefficient set '{c}' (known: {', '.join(COEFFICIENTS)})"
                )
        elif c is not None:
            if not isinstance(c, (list, tuple)) or len(c) != 5:
                raise ValueError("'coefficients' must be a set name or five numbers (x^4 .. x^0)")
            self.coefficients = [base.check_float("coefficients", v) for v in c]
        for name in ("first_steps", "last_steps"):
            if getattr(self, name) is not None:
                base.check_int(name, getattr(self, name), 0)

    def poly(self) -> tuple[float, ...]:
        c = self.coefficients
        return COEFFICIENTS[c] if isinstance(c, str) else tuple(c)


FORECASTS = ("residual", "residual1", "output1")


def check_forecast(value: Any) -> str:
    if value not in FORECASTS:
        raise ValueError(f"'forecast' must be one of {', '.join(FORECASTS)}, got {value!r}")
    return value


def stored(kind: str, stack_in: tuple, out_h: torch.Tensor, out_e: torch.Tensor | None, text: bool) -> tuple:
    """What a computed step keeps for the reused ones: the stack's residual (``residual``,
    ``residual1``) or its output (``output1``), video and (where the method keeps it) text stream."""
    in_h, in_e = stack_in
    if kind == "output1":
        return base.compact(out_h), base.compact(out_e) if text else None
    return out_h - in_h, (out_e - in_e if text and out_e is not None else None)


def forecast(kind: str, last: tuple, last_step: int, prev: tuple | None, prev_step: int | None, step: int,
             stack_in: tuple) -> tuple:
    """The block stack's (video, text) output on a reused step, from what the last two computed steps
    kept (``stored``) and this step's stack input.

    * ``residual`` (TeaCache and AdaCache as published): input + the last residual;
    * ``residual1`` (ours, as SeaCache's ``residual_order = 1``): input + the residual extrapolated
      linearly in the step index, ``r1 + (r1 - r0) (k - k1) / (k1 - k0)``;
    * ``output1`` (ours, TaylorSeer's first order at the level of the whole stack): the stack's
      output extrapolated the same way. On the tiny model it is 0.8 dB closer to uncached than
      ``residual1`` at equal compute: the stack's output moves more smoothly from step to step than
      its input does, so the fresh input plus an old residual carries the input's step-to-step jitter.
    """
    q = last
    if kind != "residual" and prev is not None and prev_step != last_step and prev[0].shape == last[0].shape:
        w = (step - last_step) / (last_step - prev_step)
        q = tuple(None if a is None or b is None else a + w * (a - b) for a, b in zip(last, prev))
    in_h, in_e = stack_in
    if kind == "output1":
        return q[0], in_e if q[1] is None else q[1]
    return in_h + q[0], (in_e if q[1] is None or in_e is None else in_e + q[1])


def rescale(coefficients: Sequence[float], x: float) -> float:
    out = 0.0
    for c in coefficients:
        out = out * x + c
    return out


def resolve(
    config: TeaCacheConfig, transformer: torch.nn.Module, layout: base.Layout
) -> tuple[TeaCacheConfig, list[str]]:
    """The config with coefficients and forced steps filled in for this transformer; warnings."""
    warnings: list[str] = []
    if config.retention and not layout.teacache.has_retention:
        raise base.CacheError(f"teacache: retention mode exists for Wan only, not {layout.name}")
    coefficients = config.coefficients
    if coefficients is None:
        coefficients, fallback = layout.teacache_coefficients(transformer.config, config.retention)
        if coefficients is None:
            cfg = transformer.config
            coefficients = fallback
            warnings.append(
                f"teacache: no official coefficients for this {layout.name} transformer (inner dim "
                f"{cfg.num_attention_heads * cfg.attention_head_dim}); using '{fallback}': run "
                "`vidcache calibrate` for a fitted set"
            )
    elif isinstance(coefficients, str) and not coefficients.startswith(layout.name):
        warnings.append(
            f"teacache: coefficients '{coefficients}' were fitted for another family than {layout.name}"
        )
    return (
        TeaCacheConfig(
            thresh=config.thresh,
            coefficients=coefficients,
            retention=config.retention,
            first_steps=(5 if config.retention else 1)
            if config.first_steps is None
            else config.first_steps,
            last_steps=(0 if config.retention else 1)
            if config.last_steps is None
            else config.last_steps,
            forecast=config.forecast,
            schedule_steps=config.schedule_steps,
        ),
        warnings,
    )


def decide(
    config: TeaCacheConfig,
    acc: float,
    step: int,
    num_steps: int | None,
    have_residual: bool,
    distance: Callable[[], float],
) -> tuple[bool, float, float | None]:
    """(compute?, new accumulator, relative L1 or None when not read). ``distance`` is only called
    when the decision depends on it: forced steps read nothing from the device."""
    scale = StepScale(config.schedule_steps)
    forced = (
        not have_residual
        or step < scale.forced(config.first_steps, num_steps)
        or (num_steps is not None and step >= num_steps - scale.forced(config.last_steps, num_steps))
    )
    if forced or config.thresh <= 0:
        return True, 0.0, None
    d = distance()
    k = scale.factor(num_steps)
    acc += rescale(config.poly(), d * k) / k
    if acc < scale.threshold(config.thresh, num_steps):
        return False, acc, d
    return True, 0.0, d


class TeaCacheState(base.BranchState):
    def __init__(self) -> None:
        super().__init__()
        self.indicator: torch.Tensor | None = None  # this forward's, until the decision
        self.prev_indicator: torch.Tensor | None = None
        self.acc = 0.0
        self.residual: tuple[torch.Tensor, torch.Tensor | None] | None = None  # what ``stored`` keeps
        self.residual_step: int | None = None
        self.previous: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the one before (forecast 1)
        self.previous_step: int | None = None
        self.stack_in: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.skipping = False
        self.planned: dict[int, float] | None = None  # step -> distance, read once a video
        self.seen = False  # a forward of this branch already ran in this video

    def tensors(self):
        return base.iter_tensors((self.prev_indicator, self.residual, self.previous, self.stack_in))


def embedder_indicator(layout: base.Layout, retention: bool) -> tuple[str, int | None] | None:
    """Where the indicator is read from the time embedder: (its module name, the index in its
    output, or None for the output itself); None when it is the first block's modulated input."""
    ind = layout.teacache
    if not ind.timestep_only:
        return None
    return ind.module, ind.retention_index if retention else ind.index


class IndicatorHook(base.BranchHook):
    """On the time embedder (Wan, CogVideoX): keeps this forward's indicator for the decision,
    computed as the plan computes it (the adapter's ``embedder_indicator``: fp32 on Wan)."""

    def __init__(
        self, states: base.BranchStates, key: str, layout: base.Layout, retention: bool,
        transformer: torch.nn.Module,
    ) -> None:
        super().__init__(states, key)
        self.layout, self.retention = layout, retention
        self.transformer = weakref.ref(transformer)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.states.has_context:  # not when ``precompute_schedule`` calls the embedder
            state = self.states.get_state()
            if not (state.planned and state.info.step in state.planned):  # planned: decided without it
                state.indicator = self.layout.embedder_indicator(
                    self.transformer(), args, kwargs, output, self.retention)
        return output


class TeaCacheBlockHook(base.BranchHook):
    """On every block of the stack; the head decides, the tail stores the residual."""

    def __init__(
        self,
        states: base.BranchStates,
        key: str,
        config: TeaCacheConfig,
        *,
        head: bool,
        tail: bool,
        text_residual: bool,
        indicator_from_norm1: bool,
        layout: base.Layout | None = None,
        forecast: str = "residual",
    ) -> None:
        super().__init__(states, key)
        self.config = config
        self.forecast = forecast
        self.head, self.tail = head, tail
        self.text_residual = text_residual
        self.indicator_from_norm1 = indicator_from_norm1
        self.meta = None
        self.layout = layout
        self.schedule: Callable[[], Any] = lambda: None  # the pipeline's timesteps (set by apply)
        self.transformer: Callable[[], torch.nn.Module | None] = lambda: None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.meta = base.block_metadata(module)
        return module

    def _decide(self, module: torch.nn.Module, state: TeaCacheState, args, kwargs, hidden) -> bool:
        info = state.info
        if self.indicator_from_norm1:  # HunyuanVideo: modulated input of block 0
            indicator = self.layout.block_indicator(module, self.meta, hidden, args, kwargs)
        else:
            indicator = state.indicator
        if state.planned is None and not self.indicator_from_norm1 and indicator is not None:
            state.planned = self._plan(module, info.step, indicator)
        planned = state.planned
        if planned and info.step in planned:
            have_residual = state.residual is not None and state.seen
            distance = lambda: planned[info.step]  # noqa: E731 - read only when decide needs it
        else:
            if indicator is None:
                raise RuntimeError("teacache: the time embedder's indicator was not seen this forward")
            prev = state.prev_indicator
            have_residual = state.residual is not None and prev is not None
            distance = lambda: base.relative_l1(indicator, prev)  # noqa: E731
        compute, state.acc, d = decide(
            self.config, state.acc, info.step, info.num_steps, have_residual, distance
        )
        state.seen = True
        state.prev_indicator = None if planned or indicator is None else indicator.float()
        state.indicator = None
        state.record.detail = {"rel_l1": d, "acc": state.acc}
        return compute

    def _plan(self, module: torch.nn.Module, step: int, indicator: torch.Tensor) -> dict[int, float]:
        """Every distance from ``step`` on, in one read; {} when they cannot be planned."""
        timesteps = self.schedule()
        if not torch.is_tensor(timesteps) or indicator.dim() != 2 or step + 1 >= len(timesteps):
            return {}
        transformer = self.transformer()
        if transformer is None:
            return {}
        dist = _schedule_distances(transformer, self.layout, timesteps[step:], self.config)
        return {step + 1 + i: d for i, d in enumerate(dist)}

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.states.get_state()
        if self.head:
            hidden, enc = base.block_inputs(self.meta, args, kwargs)
            state.skipping = not self._decide(module, state, args, kwargs, hidden)
            if state.skipping:
                state.record.blocks_skipped = True
                state.record.action = "blocks skipped"
                out = forecast(self.forecast, state.residual, state.residual_step, state.previous,
                               state.previous_step, state.info.step, (hidden, enc))
                return base.pack_block_output(self.meta, *out)
            state.stack_in = (hidden, enc)
        elif state.skipping:
            return base.pack_block_output(self.meta, *base.block_inputs(self.meta, args, kwargs))
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.tail:
            hidden_out, enc_out = base.block_outputs(self.meta, out)
            if self.forecast != "residual":
                state.previous, state.previous_step = state.residual, state.residual_step
            state.residual = stored(self.forecast, state.stack_in, hidden_out, enc_out, self.text_residual)
            state.residual_step, state.stack_in = state.info.step, None
        return out


class TeaCacheForwardHook(base.TransformerHook):
    def never_fired_hint(self) -> str:
        thresh = self.params["thresh"]
        if thresh <= 0:
            return f"thresh {thresh} never skips"
        return f"thresh {thresh} is below every accumulated distance; raise it"


def apply_teacache(
    transformer: torch.nn.Module,
    config: TeaCacheConfig,
    *,
    pipeline: base.PipelineLink | None = None,
) -> None:
    """Attach TeaCache: hooks on the time embedder, on every block and on the transformer."""
    layout = base.layout_of(transformer)
    config, warnings = resolve(config, transformer, layout)
    states = base.BranchStates(TeaCacheState)
    source = embedder_indicator(layout, config.retention)
    if source is not None:
        name, _ = source
        hook = IndicatorHook(states, name, layout, config.retention, transformer)
        base.register(transformer.get_submodule(name), hook, "teacache.indicator")
    blocks = layout.blocks(transformer)
    hooks = []
    for i, (key, block) in enumerate(blocks):
        hook = TeaCacheBlockHook(
            states,
            key,
            config,
            head=i == 0,
            tail=i == len(blocks) - 1,
            text_residual=layout.text_residual,
            indicator_from_norm1=source is None,
            layout=layout,
            forecast=config.forecast,
        )
        base.register(block, hook, "teacache")
        hooks.append(hook)
    top = TeaCacheForwardHook(
        "teacache", states, layout, transformer, base.config_params(config), pipeline,
        warnings=warnings,
    )
    head = hooks[0]
    head.schedule = lambda: top._schedule_key
    head.transformer = weakref.ref(transformer)
    base.attach(transformer, top)


@torch.no_grad()
def precompute_schedule(
    transformer: torch.nn.Module, timesteps: Sequence[float], config: TeaCacheConfig
) -> list[bool]:
    """Which steps TeaCache will compute (True) for these timesteps, before any run.

    Possible for Wan and CogVideoX only, whose indicator is a function of the timestep alone: the
    schedule is then the same for every prompt, every branch and every rank.
    """
    layout = base.layout_of(transformer)
    if not layout.teacache.timestep_only:
        raise base.CacheError(f"teacache: {layout.name}'s indicator depends on the content")
    config, _ = resolve(config, transformer, layout)
    ts = torch.as_tensor(timesteps, dtype=torch.float32)
    dist = _schedule_distances(transformer, layout, ts, config)
    schedule, acc = [], 0.0
    for step in range(len(ts)):
        compute, acc, _ = decide(
            config, acc, step, len(ts), step > 0, lambda s=step: dist[s - 1]
        )
        schedule.append(compute)
    return schedule


def _schedule_distances(
    transformer: torch.nn.Module, layout: base.Layout, ts: torch.Tensor, config: TeaCacheConfig
) -> list[float]:
    """The relative L1 between the indicators of consecutive timesteps, read in one go (and
    rank-agreed, as ``base.relative_l1`` reads one). The adapter computes the indicators as the
    model's forward does, one row per timestep."""
    ind = layout.timestep_indicators(transformer, ts, config.retention)
    num = (ind[1:] - ind[:-1]).abs().sum(dim=1)
    den = ind[:-1].abs().sum(dim=1)
    values = base.agreed_values(torch.cat([num, den]))
    n = len(values) // 2
    return [values[i] / values[n + i] if values[n + i] > 0 else float("inf") for i in range(n)]

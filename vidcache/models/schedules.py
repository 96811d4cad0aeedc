"""The real scheduler of each preset's model, so that timestep windows can be read as steps.

Cache windows are timesteps (``lo < t < hi``), like the papers' and diffusers' settings, but those
settings were tuned on DDPM-like schedules: with Wan's flow shift the same window covers very
different steps. The presets therefore choose their windows against these schedules, for the
model's default step count, and ``docs/caches.md`` lists the steps each window covers. The scheduler
configurations are those of the models' diffusers repositories (Wan: UniPC with flow prediction;
HunyuanVideo and HunyuanVideo-I2V: flow-match Euler, shift 7; HunyuanVideo 1.5 480p: the same, shift 5,
its README's value; CogVideoX: DDIM, trailing spacing), with the flow shift of the preset's
``[defaults]`` where it sets one.
"""

from __future__ import annotations

from typing import Any

_WAN_UNIPC = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "num_train_timesteps": 1000,
}
_COGVIDEOX_DDIM = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
    "rescale_betas_zero_snr": True,
    "prediction_type": "v_prediction",
}

# preset -> (scheduler class, config, name of the flow-shift argument or None)
REFERENCE_SCHEDULERS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    # the embedded tiny model is saved with a flow-match Euler scheduler, shift 3 (vidcache.tiny)
    "tiny": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, "shift"),
    "wan": ("UniPCMultistepScheduler", {**_WAN_UNIPC, "flow_shift": 3.0}, "flow_shift"),
    "wan-14b": ("UniPCMultistepScheduler", {**_WAN_UNIPC, "flow_shift": 5.0}, "flow_shift"),
    "wan2.2-ti2v-5b": ("UniPCMultistepScheduler", {**_WAN_UNIPC, "flow_shift": 5.0}, "flow_shift"),
    # Wan 2.2 A14B's own sampler uses shift 12 (its "sample_shift" for T2V)
    "wan2.2-t2v-a14b": (
        "UniPCMultistepScheduler", {**_WAN_UNIPC, "flow_shift": 12.0}, "flow_shift"
    ),
    "hunyuan": ("FlowMatchEulerDiscreteScheduler", {"shift": 7.0}, "shift"),
    "hunyuan-i2v": ("FlowMatchEulerDiscreteScheduler", {"shift": 7.0}, "shift"),
    # HunyuanVideo 1.5, 480p: flow-match Euler, shift 5 (its README's optimal configuration)
    "hunyuan15": ("FlowMatchEulerDiscreteScheduler", {"shift": 5.0}, "shift"),
    "hunyuan15-i2v": ("FlowMatchEulerDiscreteScheduler", {"shift": 5.0}, "shift"),
    "cogvideox": ("CogVideoXDDIMScheduler", {**_COGVIDEOX_DDIM, "snr_shift_scale": 3.0}, None),
    "cogvideox-5b": ("CogVideoXDDIMScheduler", {**_COGVIDEOX_DDIM, "snr_shift_scale": 1.0}, None),
    # image-to-video: Wan 2.1 I2V at Wan's shifts for 480p / 720p, Wan 2.2 I2V A14B at its own I2V
    # shift 5; CogVideoX-5B-I2V as the 5B
    "wan-i2v": ("UniPCMultistepScheduler", {**_WAN_UNIPC, "flow_shift": 3.0}, "flow_shift"),
    "wan-i2v-720p": ("UniPCMultistepScheduler", {**_WAN_UNIPC, "flow_shift": 5.0}, "flow_shift"),
    "wan2.2-i2v-a14b": ("UniPCMultistepScheduler", {**_WAN_UNIPC, "flow_shift": 5.0}, "flow_shift"),
    "cogvideox-5b-i2v": ("CogVideoXDDIMScheduler", {**_COGVIDEOX_DDIM, "snr_shift_scale": 1.0}, None),
}


def reference_timesteps(preset: str, steps: int | None = None) -> list[float]:
    """The timesteps of ``preset``'s model for ``steps`` (default: the preset's step count)."""
    import diffusers

    from .. import presets

    cls_name, config, shift_arg = REFERENCE_SCHEDULERS[preset]
    defaults = presets.load(preset).defaults
    config = dict(config)
    if shift_arg and "flow_shift" in defaults:
        config[shift_arg] = float(defaults["flow_shift"])
    scheduler = getattr(diffusers, cls_name)(**config)
    scheduler.set_timesteps(steps or defaults["steps"])
    return [float(t) for t in scheduler.timesteps]


def window_steps(timesteps: list[float], window: tuple[float, float] | list[float]) -> list[int]:
    """The step indices whose timestep falls inside ``lo < t < hi``."""
    lo, hi = window
    return [i for i, t in enumerate(timesteps) if lo < t < hi]

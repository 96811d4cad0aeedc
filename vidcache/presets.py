"""Per-model presets: generation defaults and one table per cache method, in TOML.

Merge order, lowest first: the model's preset < ``--preset FILE`` < command-line flags / ``--set``.
A ``[tuned]`` table (written by ``vidcache tune``) records what was measured for the method tables
of its file: the settings and target, and one ``[tuned.METHOD]`` table of measurements per method;
``--cache auto`` chooses from it (``vidcache.tune.auto``).
An unknown key anywhere is an error: a misspelt threshold silently ignored is the worst failure
mode a caching tool can have. This module checks the structure and ``[defaults]``; the keys of the
method tables belong to the methods, so ``vidcache.caches.check_preset`` checks those (this module
imports nothing of the caches: no import circle, and reading a preset loads no torch).

The files live in the repository's top-level ``presets/`` folder; a wheel ships them as
``vidcache/presets/*.toml`` (setup.py). ``PRESET_DIR`` is whichever of the two exists.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from .errors import UsageError


def _preset_dir() -> Path:
    here = Path(__file__).resolve().parent
    installed, checkout = here / "presets", here.parent / "presets"
    return installed if installed.is_dir() else checkout


PRESET_DIR = _preset_dir()

# key -> accepted Python types; None values are not representable in TOML, so absent = unset.
DEFAULT_KEYS: dict[str, tuple[type, ...]] = {
    "frames": (int,),
    "height": (int,),
    "width": (int,),
    "steps": (int,),
    "guidance": (int, float),
    "guidance_2": (int, float),
    "flow_shift": (int, float),
    "fps": (int,),
    "text_len": (int,),
    "negative_prompt": (str,),
}


# [tuned]: what ``vidcache tune`` measured (key -> accepted types; lists: the type of their items)
TUNED_KEYS: dict[str, tuple[type, ...]] = {
    "model": (str,), "family": (str,), "target_psnr": (int, float), "target_speedup": (int, float),
    "prompts": (list, str), "seeds": (list, int), "steps": (int,), "frames": (int,), "height": (int,),
    "width": (int,), "guidance": (int, float), "device": (str,), "machine": (str,), "seconds": (int, float),
    "videos": (int,), "vidcache": (str,),
}
# [tuned.METHOD]: the measurements of the method's table (means over the tuning prompts)
TUNED_METHOD_KEYS: dict[str, tuple[type, ...]] = {
    "psnr": (int, float), "psnr_se": (int, float), "psnr_min": (int, float), "ssim": (int, float),
    "compute_ratio": (int, float),
    "attention_compute_ratio": (int, float), "speedup": (int, float), "adherence": (int, float),
    "prompts": (int,), "met": (bool,),
}


@dataclass
class Preset:
    """``methods`` maps a cache method to its table; a variant ``[teacache.fast]`` is a nested table.
    ``tuned``: the ``[tuned]`` table (``[tuned.METHOD]`` nested), empty when the files have none."""

    name: str
    defaults: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    where: str = ""  # the file(s) it was read from, for error messages
    tuned: dict[str, Any] = field(default_factory=dict)


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def path_of(name: str) -> Path:
    """The shipped preset file of ``name``."""
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        raise UsageError(f"no preset named '{name}' (available: {', '.join(available())})")
    return path


def source_text(name: str) -> str:
    """A shipped preset exactly as written: what ``vidcache presets NAME`` prints, and what
    ``--preset`` reads back to the same preset."""
    return path_of(name).read_text(encoding="utf-8")


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"preset file {path} not found") from None
    except IsADirectoryError:
        raise UsageError(f"preset file {path} is a folder, not a TOML file") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"preset file {path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise UsageError(f"preset file {path}: cannot read ({err.strerror or err})") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"preset file {path}: invalid TOML ({err})") from None


def check_defaults(values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if key not in DEFAULT_KEYS:
            raise UsageError(f"{where}: unknown key '{key}' (known: {', '.join(DEFAULT_KEYS)})")
        types = DEFAULT_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise UsageError(f"{where}: '{key}' must be {' or '.join(t.__name__ for t in types)}")


def _check_typed(values: dict[str, Any], known: dict[str, tuple[type, ...]], where: str) -> None:
    for key, value in values.items():
        if key not in known:
            raise UsageError(f"{where}: unknown key '{key}' (known: {', '.join(known)})")
        types = known[key]
        if types[0] is list:
            ok = isinstance(value, list) and all(isinstance(v, types[1]) and not isinstance(v, bool) for v in value)
            what = f"a list of {types[1].__name__}"
        else:
            ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
            what = " or ".join(t.__name__ for t in types)
        if not ok:
            raise UsageError(f"{where}: '{key}' must be {what}")


def check_tuned(table: Any, where: str) -> None:
    """``[tuned]``: known keys of the right types, ``[tuned.METHOD]`` tables of measurements (whether
    METHOD is a method is ``caches.check_preset``'s to say)."""
    if not isinstance(table, dict):
        raise UsageError(f"{where}: [tuned] must be a table")
    _check_typed({k: v for k, v in table.items() if not isinstance(v, dict)}, TUNED_KEYS, f"{where} [tuned]")
    for method, values in table.items():
        if isinstance(values, dict):
            _check_typed(values, TUNED_METHOD_KEYS, f"{where} [tuned.{method}]")
            if "psnr" not in values or "compute_ratio" not in values:
                raise UsageError(f"{where} [tuned.{method}]: needs 'psnr' and 'compute_ratio'")


def check_method_table(method: str, table: dict[str, Any], fields: set[str] | None, where: str) -> None:
    """Every key of a ``[method]`` table (and of its variants) is one of ``fields`` (None: the method
    is unknown). Called by ``vidcache.caches.check_preset``, which knows the fields."""
    if fields is None:
        raise UsageError(f"{where}: unknown cache method table [{method}]")
    for key, value in table.items():
        if isinstance(value, dict):  # a variant, e.g. [teacache.fast]
            check_method_table(method, value, fields, f"{where} [{method}.{key}]")
        elif key not in fields:
            raise UsageError(
                f"{where}: unknown key '{key}' for {method} (known: {', '.join(sorted(fields))})"
            )


def parse_preset(data: dict, name: str, where: str) -> Preset:
    preset = Preset(name, where=where)
    for key, value in data.items():
        if key == "defaults":
            if not isinstance(value, dict):
                raise UsageError(f"{where}: [defaults] must be a table")
            check_defaults(value, f"{where} [defaults]")
            preset.defaults = dict(value)
        elif key == "tuned":
            check_tuned(value, where)
            preset.tuned = copy.deepcopy(value)
        elif isinstance(value, dict):
            preset.methods[key] = value
        else:
            raise UsageError(f"{where}: unknown top-level key '{key}'")
    return preset


def load(name: str) -> Preset:
    """A shipped preset by model name (``wan``, ``tiny``, ...)."""
    path = path_of(name)
    return parse_preset(_read_toml(path), name, str(path))


def load_file(path: str | Path) -> Preset:
    p = Path(path)
    return parse_preset(_read_toml(p), p.stem, str(p))


def merge(base: Preset, over: Preset) -> Preset:
    """``over`` wins key by key; method tables merge recursively."""
    out = copy.deepcopy(base)
    out.defaults.update(over.defaults)
    for method, table in over.methods.items():
        out.methods[method] = _deep_merge(out.methods.get(method, {}), table)
        if method not in over.tuned:  # a measurement holds for the table it was made with only
            out.tuned.pop(method, None)
    out.tuned = _deep_merge(out.tuned, over.tuned)
    return out


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax (numbers, booleans, arrays), else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected key=value")
        out.append((key.strip(), parse_value(value.strip())))
    return out


def method_params(preset: Preset, method: str, variant: str | None) -> dict[str, Any]:
    """The flat parameter table of ``method`` (and its ``variant``) in ``preset``."""
    table = preset.methods.get(method, {})
    params = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if variant:
        sub = table.get(variant)
        if not isinstance(sub, dict):
            variants = [k for k, v in table.items() if isinstance(v, dict)]
            raise UsageError(
                f"preset {preset.name} has no variant '{method}.{variant}'"
                f" (variants: {', '.join(variants) or 'none'})"
            )
        params.update(sub)
    return params

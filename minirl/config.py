"""Config dataclasses: field validation, and configs as TOML data (presets, resolved run configs).

Every config is a dataclass with a docstring under each field (CleanRL's
`Args`) and validates itself in `__post_init__` through `check_fields`, so an
error always names the class, the field, what is allowed and what was given:

    GRPOConfig.epsilon must be > 0, got 0.0

A run's configuration is a TOML document of sections, one per dataclass
(`[grpo]`, `[train]`, `[optimizer]`, ...), plus top-level keys (`command`,
`init`). Named presets are such documents inside the package (`minirl/presets/`):
data, never code (nanoGPT's `exec` configurator is the counter-example).
TOML has no null, so an optional field set to None is written "none", the
word the CLI takes too.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path


def check_fields(config, checks) -> None:
    """Raise ValueError for the first (field, ok, allowed) check of `config` that failed."""
    for name, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{type(config).__name__}.{name} must be {allowed}, got {getattr(config, name)!r}")


# -- field types --------------------------------------------------------------------------
def field_kind(annotation) -> tuple[type, bool, bool]:
    """A field annotation -> (scalar or item type, is a tuple, is optional); bool fields give bool."""
    ann = str(getattr(annotation, "__name__", annotation)).replace(" ", "")
    optional = ann.endswith("|None")
    base = ann[:-5] if optional else ann
    item = bool if base == "bool" else float if "float" in base else int if "int" in base else str
    return item, base.startswith("tuple["), optional


def _coerce(item: type, value, what: str):
    """One TOML value as `item`, or ValueError naming `what`."""
    if item is bool:
        if isinstance(value, bool):
            return value
    elif item is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if item is float:
            return float(value)
        if float(value).is_integer():
            return int(value)
    raise ValueError(f"{what} must be {'an integer' if item is int else 'a ' + item.__name__}, got {value!r}")


def check_keys(cls, keys, where: str) -> None:
    """Raise ValueError naming `where`, the keys that are not fields of dataclass `cls`, and the allowed ones."""
    allowed = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def from_values(cls, values: dict, where: str):
    """An instance of dataclass `cls` from TOML-style `values` (unknown keys are an error naming `where`)."""
    check_keys(cls, values, where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in values.items():
        item, is_tuple, optional = field_kind(fields[name].type)
        what = f"{where}.{name}"
        if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
            kwargs[name] = None
        elif is_tuple:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{what} must be a list, got {value!r}")
            kwargs[name] = tuple(_coerce(item, v, what) for v in value)
        else:
            kwargs[name] = _coerce(item, value, what)
    return cls(**kwargs)


def to_values(config) -> dict:
    """The fields of a config dataclass as TOML-ready values (None as "none", tuples as lists)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.init:
            v = getattr(config, f.name)
            out[f.name] = "none" if v is None else list(v) if isinstance(v, tuple) else v
    return out


# -- TOML in and out ----------------------------------------------------------------------
def load_toml(path) -> dict:
    """A TOML file as a dict; a missing or malformed file is a ValueError naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.toml"  # a run directory: its resolved config
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else "inf" if v > 0 else "-inf")
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def dumps_toml(doc: dict, header: str = "") -> str:
    """A document of top-level scalars and one level of tables as TOML text (`header` as # comments)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, table in doc.items():
        if isinstance(table, dict):
            lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines).lstrip("\n") + "\n"

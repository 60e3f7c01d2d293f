"""Config dataclasses: field validation, and presets as TOML data.

Every config is a dataclass with a docstring under each field (CleanRL's
`Args`) and validates itself in `__post_init__` through `check_fields`, so an
error always names the class, the field, what is allowed and what was given:

    GRPOConfig.epsilon must be > 0, got 0.0
"""

from __future__ import annotations


def check_fields(config, checks) -> None:
    """Raise ValueError for the first (field, ok, allowed) check of `config` that failed."""
    for name, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{type(config).__name__}.{name} must be {allowed}, got {getattr(config, name)!r}")

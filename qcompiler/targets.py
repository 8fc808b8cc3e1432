"""The target registry: a target name -> its backend, what it can run quantized, and its default recipe.

Backends register their targets when `qcompiler.backends` is imported; a second backend joins by calling
`register_target` with targets of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .recipe import Recipe


@dataclass(frozen=True)
class Target:
    """name: what users type (`--target cpu-int8`); backend: the backend's registry name;
    static: needs calibration data (activation ranges fixed at compile time);
    default_recipe: the recipe used when the user gives none;
    kernels: op type -> why/how it runs quantized on this target (for `inspect` and the report);
    notes: facts the target knows (e.g. u8 x s8 is ~13x faster than s8 x s8 on VNNI)."""

    name: str
    backend: str
    description: str
    static: bool
    default_recipe: Recipe
    kernels: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    make_backend: Callable[[], Any] | None = None


_TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    if target.name in _TARGETS:
        raise ValueError(f"target {target.name!r} is registered twice")
    _TARGETS[target.name] = target
    return target


def _load_backends() -> None:
    import importlib
    import pkgutil

    from . import backends

    for m in pkgutil.iter_modules(backends.__path__):
        try:
            importlib.import_module(f"{backends.__name__}.{m.name}")
        except ImportError:  # a backend whose library is missing simply offers no targets
            continue


def get_target(name: str) -> Target:
    _load_backends()
    t = _TARGETS.get(name)
    if t is None:
        valid = ", ".join(sorted(_TARGETS)) or "none registered"
        raise ConfigError(f"unknown target {name!r}; valid targets: {valid}")
    return t


def list_targets() -> list[Target]:
    _load_backends()
    return [_TARGETS[k] for k in sorted(_TARGETS)]

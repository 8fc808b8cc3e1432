"""Recipes are data: what to quantize and how, and which passes run, in a TOML or YAML file a user can read
and edit. Every key is validated; an unknown one is named with the valid ones listed. The recipe used for a
compile is written beside the artifact.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

GRANULARITY = re.compile(r"^(per_tensor|per_channel|per_group:\d+|per_block:\d+x\d+)$")


@dataclass(frozen=True)
class TensorSpec:
    """How one kind of tensor (activations or weights) is quantized: storage format, scheme, granularity,
    and — for values whose range comes from data — the observer and its options."""

    format: str = "int8"
    scheme: str = "symmetric"  # symmetric | affine
    granularity: str = "per_tensor"  # per_tensor | per_channel | per_group:N | per_block:RxC
    observer: str = "minmax"
    observer_options: dict[str, Any] = field(default_factory=dict)
    narrow_range: bool = False

    def __post_init__(self) -> None:
        from .numerics import FORMATS

        if self.format not in FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; valid formats: {', '.join(sorted(FORMATS))}")
        if self.scheme not in ("symmetric", "affine"):
            raise ConfigError(f"unknown scheme {self.scheme!r}; valid schemes: symmetric, affine")
        if not GRANULARITY.match(self.granularity):
            raise ConfigError(
                f"bad granularity {self.granularity!r}; valid: per_tensor, per_channel, per_group:N, per_block:RxC"
            )


@dataclass(frozen=True)
class QuantizeSection:
    """Which ops get quantized (by type), which are excluded (node-name regexes, op types), the first/last
    layer policy, and the activation and weight specs. `activations=None` means weight-only / dynamic."""

    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    first_last: str = "quantize"  # quantize | float (keep the first and last quantizable layers in float)
    activations: TensorSpec | None = TensorSpec("uint8", "affine", "per_tensor")
    weights: TensorSpec = TensorSpec("int8", "symmetric", "per_channel")
    dynamic: bool = False

    def __post_init__(self) -> None:
        if self.first_last not in ("quantize", "float"):
            raise ConfigError(f"first_last must be 'quantize' or 'float', not {self.first_last!r}")
        for rx in self.exclude_nodes:
            try:
                re.compile(rx)
            except re.error as e:
                raise ConfigError(f"exclude_nodes: bad regular expression {rx!r}: {e}") from None


@dataclass(frozen=True)
class CalibrationSection:
    samples: int = 128  # calibration samples read (the first N)
    holdout: int = 8  # of those, kept back to measure per-layer error for the report
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.samples < 1 or self.holdout < 0 or self.batch_size < 1:
            raise ConfigError("calibration: samples and batch_size must be >= 1, holdout >= 0")


@dataclass(frozen=True)
class PassSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    target: str = ""
    quantize: QuantizeSection = QuantizeSection()
    calibration: CalibrationSection = CalibrationSection()
    passes: tuple[PassSpec, ...] = ()

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    # -- files ----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a .toml or .yaml/.yml recipe."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path}: no such file")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = tomllib.loads(text)
        except Exception as e:  # noqa: BLE001 - any parse error is the user's file
            raise ConfigError(f"recipe {path}: cannot parse: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"recipe {path}: expected a table at the top level")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"recipe {path}: {e}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        _check_keys(data, {"target", "quantize", "calibration", "passes"}, "recipe")
        q = dict(data.get("quantize", {}))
        _check_keys(q, {f.name for f in dataclasses.fields(QuantizeSection)}, "[quantize]")
        if q.get("activations") in ("none", False, None) and "activations" in q:
            q["activations"] = None  # weight-only: TOML has no null, so the file says "none"
        for key in ("activations", "weights"):
            if key in q and q[key] is not None:
                _check_keys(q[key], {f.name for f in dataclasses.fields(TensorSpec)}, f"[quantize.{key}]")
                q[key] = TensorSpec(**q[key])
        for key in ("op_types", "exclude_nodes", "exclude_op_types"):
            if key in q:
                q[key] = tuple(q[key])
        c = dict(data.get("calibration", {}))
        _check_keys(c, {f.name for f in dataclasses.fields(CalibrationSection)}, "[calibration]")
        passes = []
        for i, p in enumerate(data.get("passes", [])):
            if not isinstance(p, dict) or "name" not in p:
                raise ConfigError(f"passes[{i}]: each pass needs a 'name'")
            opts = {k: v for k, v in p.items() if k != "name"}
            passes.append(PassSpec(p["name"], opts))
        try:
            return cls(
                target=data.get("target", ""),
                quantize=QuantizeSection(**q),
                calibration=CalibrationSection(**c),
                passes=tuple(passes),
            )
        except TypeError as e:
            raise ConfigError(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["passes"] = [{"name": p.name, **p.options} for p in self.passes]
        return d

    def to_toml(self) -> str:
        """The recipe as TOML (what `compile` writes beside the artifact)."""
        d = self.to_dict()
        lines = ["# qcompiler recipe: edit and pass back with --recipe", f"target = {_toml(d['target'])}", ""]
        q = d["quantize"]
        lines.append("[quantize]")
        for k, v in q.items():
            if k not in ("activations", "weights"):
                lines.append(f"{k} = {_toml(v)}")
        if q["activations"] is None:
            lines.append('activations = "none"')
        for k in ("activations", "weights"):
            if q[k] is None:
                continue
            lines += ["", f"[quantize.{k}]"]
            lines += [f"{kk} = {_toml(vv)}" for kk, vv in q[k].items() if kk != "observer_options"]
            lines.append(f"observer_options = {_toml(q[k]['observer_options'])}")
        lines += ["", "[calibration]"] + [f"{k} = {_toml(v)}" for k, v in d["calibration"].items()]
        for p in d["passes"]:
            lines += ["", "[[passes]]"] + [f"{k} = {_toml(v)}" for k, v in p.items()]
        return "\n".join(lines) + "\n"


def _check_keys(data: dict[str, Any], valid: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    bad = sorted(set(data) - valid)
    if bad:
        raise ConfigError(f"{where}: unknown key {bad[0]!r}; valid keys: {', '.join(sorted(valid))}")


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + "}"
    if v is None:
        raise ConfigError("TOML has no null")
    raise TypeError(f"cannot write {type(v).__name__} as TOML")

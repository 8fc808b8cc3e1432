"""The compile report's data: what was quantized how, and what it cost in accuracy, size and speed.

The compile pipeline fills a `Report`; this module only holds and stores the figures, it computes none of them.
`to_json` / `from_json` round-trip a report exactly; `to_html` and `summary_table` render it. Any figure may be
None (not measured): the renderers print "n/a" for it.

The JSON form is strict JSON (no NaN/Infinity tokens: a non-finite float is stored as the string "inf", "-inf"
or "nan"), tagged `"format": "qcompiler-report"` with a `schema_version`; a reader refuses a newer schema.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..errors import ConfigError

REPORT_FORMAT = "qcompiler-report"
SCHEMA_VERSION = 1
SQNR_WARN_DB = 20.0  # below this a layer's or output's SQNR is flagged (about 7 bits of signal over the error)

LayerStatus = Literal["quantized", "float"]


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second, e.g. '2025-03-01T12:00:00+00:00'."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _qcompiler_version() -> str:
    from .. import __version__

    return __version__


# -- records ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output. shape: ints, symbolic names ('batch') or None for an unknown dim; None if unknown."""

    name: str
    shape: list[int | str | None] | None = None
    dtype: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """The float model that was compiled. source: the path or a description ('torch.nn.Module ResNet')."""

    name: str
    source: str = ""
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)  # op type -> nodes of that type

    @property
    def node_count(self) -> int:
        return sum(self.op_counts.values())


@dataclass(frozen=True)
class TargetInfo:
    name: str
    backend: str = ""


@dataclass(frozen=True)
class CalibrationInfo:
    """Where activation ranges came from. samples: used to calibrate; held_back: kept out to measure error."""

    source: str
    samples: int | None = None
    held_back: int | None = None
    is_random: bool = False
    observers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LayerEntry:
    """One node, in graph order. quant: input/output value name -> its QuantType text ('uint8 affine per_tensor');
    sqnr_db: SQNR of its output, quantized vs float, on held-back samples; reason: why it has this status."""

    node: str
    op_type: str
    quant: dict[str, str] = field(default_factory=dict)
    sqnr_db: float | None = None
    status: LayerStatus = "quantized"
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in typing.get_args(LayerStatus):
            raise ValueError(f"layer {self.node!r}: status must be 'quantized' or 'float', not {self.status!r}")


@dataclass(frozen=True)
class OutputMetrics:
    """A model output, quantized vs float on held-back samples. max_abs / mean_abs: of the difference."""

    name: str
    sqnr_db: float | None = None
    cosine: float | None = None
    max_abs: float | None = None
    mean_abs: float | None = None


@dataclass(frozen=True)
class SizeInfo:
    """Artifact bytes: the float model and the compiled one."""

    before_bytes: int | None = None
    after_bytes: int | None = None

    @property
    def ratio(self) -> float | None:
        """after / before (0.25: a quarter of the float size); None when either is missing or before is 0."""
        return _ratio(self.after_bytes, self.before_bytes)


@dataclass(frozen=True)
class LatencyEntry:
    """Time per run (batch of `batch_size`) of the float and the compiled model, as measured by `engine`."""

    batch_size: int | None = None
    threads: int | None = None
    runs: int | None = None
    engine: str = ""  # e.g. "onnxruntime 1.32"
    before_ms: float | None = None
    after_ms: float | None = None

    @property
    def ratio(self) -> float | None:
        """after / before (0.5: twice as fast); None when either is missing or before is 0."""
        return _ratio(self.after_ms, self.before_ms)


@dataclass(frozen=True)
class KeptFloat:
    node: str
    op_type: str
    reason: str = ""


@dataclass(frozen=True)
class UnfusedPair:
    """A Q/DQ pair around `subject` (a node or value) that ONNX Runtime ran as separate ops: slower than float."""

    subject: str
    reason: str = ""


@dataclass(frozen=True)
class PassTiming:
    name: str
    seconds: float | None = None


@dataclass(frozen=True)
class DecisionEntry:
    """One thing a pass decided (mirrors `qcompiler.pipeline.Decision`)."""

    pass_name: str
    subject: str
    action: str
    reason: str = ""


def _ratio(after: float | None, before: float | None) -> float | None:
    if after is None or before is None or before == 0:
        return None
    return after / before


# -- the report -------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything one compile measured. Mutable so the pipeline can fill it step by step; the records in it
    are frozen. `recipe` and `machine` are free-form JSON data (dicts of str, numbers, lists, dicts);
    `accuracy` maps a task metric to (before, after), e.g. {"top1": (0.73, 0.72)}."""

    schema_version: ClassVar[int] = SCHEMA_VERSION

    model: ModelInfo
    target: TargetInfo
    recipe: dict[str, Any] = field(default_factory=dict)
    qcompiler_version: str = field(default_factory=_qcompiler_version)
    created: str = field(default_factory=utc_now)
    machine: dict[str, Any] = field(default_factory=dict)  # e.g. {"cpu": ..., "cores": 8, "threads": 4}
    artifact: str = ""  # path of the compiled artifact, as written
    calibration: CalibrationInfo | None = None  # None: no calibration (weight-only or dynamic quantization)
    layers: list[LayerEntry] = field(default_factory=list)
    outputs: list[OutputMetrics] = field(default_factory=list)
    size: SizeInfo = field(default_factory=SizeInfo)
    latency: list[LatencyEntry] = field(default_factory=list)
    kept_float: list[KeptFloat] = field(default_factory=list)
    unfused: list[UnfusedPair] = field(default_factory=list)
    accuracy: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    passes: list[PassTiming] = field(default_factory=list)
    decisions: list[DecisionEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Free-form data is normalized to what JSON gives back (tuples -> lists, numpy scalars -> Python numbers),
        # so a report compares equal to its own round trip.
        self.recipe = _encode(self.recipe, "recipe")
        self.machine = _encode(self.machine, "machine")
        acc: dict[str, tuple[float | None, float | None]] = {}
        for name, pair in self.accuracy.items():
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ValueError(f"accuracy[{name!r}] must be (before, after), not {pair!r}")
            acc[name] = (pair[0], pair[1])
        self.accuracy = acc

    # -- views ------------------------------------------------------------------------------------------
    @property
    def quantized_layers(self) -> list[LayerEntry]:
        return [layer for layer in self.layers if layer.status == "quantized"]

    def worst_layers(self, n: int) -> list[LayerEntry]:
        """The n layers with the lowest SQNR (NaN first: it is the worst there is), ties in graph order;
        layers without an SQNR are left out."""
        measured = [layer for layer in self.layers if layer.sqnr_db is not None]
        measured.sort(key=lambda layer: -math.inf if math.isnan(layer.sqnr_db) else layer.sqnr_db)  # type: ignore[arg-type]
        return measured[: max(n, 0)]

    def layer_gap(self, gap_db: float = 10.0) -> tuple[float, float] | None:
        """(worst layer SQNR, worst output SQNR) when the first lies more than `gap_db` below the second, else None.
        Readers of the per-layer table are then told that a tensor's figure is its own error, not what it costs
        the output (ranges fitted to the output clip channels that later layers barely read)."""
        worst = self.worst_layers(1)
        outs = [o.sqnr_db for o in self.outputs if o.sqnr_db is not None and math.isfinite(o.sqnr_db)]
        if not worst or not outs or math.isnan(worst[0].sqnr_db) or worst[0].sqnr_db > min(outs) - gap_db:  # type: ignore[arg-type]
            return None
        return float(worst[0].sqnr_db), float(min(outs))  # type: ignore[arg-type]

    # -- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: plain dicts, lists, str, numbers, bool, None."""
        body = _encode(self, "report")
        return {"format": REPORT_FORMAT, "schema_version": SCHEMA_VERSION, **body}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "report") -> Report:
        """Rebuild a report from `to_dict`'s form; a ConfigError naming `source` (and the key) if it is not one."""
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise ConfigError(f'{source} is not a qcompiler report (it has no "format": "{REPORT_FORMAT}" key)')
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(f"{source}: bad schema_version {version!r}; expected an integer from 1")
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{source} uses report schema version {version}, newer than this qcompiler "
                f"({_qcompiler_version()}) reads (up to {SCHEMA_VERSION}); upgrade qcompiler to read it"
            )
        body = {k: v for k, v in data.items() if k not in ("format", "schema_version")}
        try:
            return _decode(cls, body, "")
        except _BadField as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON, atomically (a temp file beside it, then a rename). Returns the path."""
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
        return write_text_atomic(path, text)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Report:
        """Read a report written by `to_json`; a ConfigError naming the file if it is missing or not a report."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"report file {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"report file {path}: cannot read it: {e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{path} is not a qcompiler report: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
            ) from None
        return cls.from_dict(data, source=str(path))

    # -- renderings -------------------------------------------------------------------------------------
    def html(self, *, sqnr_warn_db: float = SQNR_WARN_DB) -> str:
        """The report as one self-contained HTML page (inline CSS and SVG, no network)."""
        from .htmlpage import render_html

        return render_html(self, sqnr_warn_db=sqnr_warn_db)

    def to_html(self, path: str | os.PathLike[str], *, sqnr_warn_db: float = SQNR_WARN_DB) -> Path:
        """Write `html()` to `path`, atomically. Returns the path."""
        return write_text_atomic(path, self.html(sqnr_warn_db=sqnr_warn_db))

    def summary_table(
        self, *, color: bool = False, width: int = 100, worst: int = 10, sqnr_warn_db: float = SQNR_WARN_DB
    ) -> str:
        """A compact plain-text summary for a terminal; ANSI colors only when `color` (pass `stream.isatty()`)."""
        from .terminal import format_report

        return format_report(self, color=color, width=width, worst=worst, sqnr_warn_db=sqnr_warn_db)

    def write(self, stem: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write STEM.report.json and STEM.report.html (stem: the artifact path without its suffix)."""
        json_path, html_path = report_paths(stem)
        return self.to_json(json_path), self.to_html(html_path)


def report_paths(stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The report files of an artifact: 'out/resnet18' -> ('out/resnet18.report.json', 'out/resnet18.report.html')."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".report.json"), stem.with_name(stem.name + ".report.html")


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` (UTF-8) so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- JSON encoding and typed decoding ---------------------------------------------------------------------

_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _encode(value: Any, where: str) -> Any:
    """Plain JSON data for `value`; non-finite floats become "inf" / "-inf" / "nan" (strict JSON has none)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name), f"{where}.{f.name}") for f in dataclasses.fields(value)}
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, not {type(k).__name__} {k!r}")
            out[k] = _encode(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _encode(value.item(), where)  # numpy scalars, numpy.bool_ included
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        x = float(value)
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored in a report (JSON data only)")


class _BadField(Exception):
    pass


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if value is None or isinstance(value, int | float | str) else None
    if text is None:
        text = {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)
    return text if len(text) <= 40 else text[:37] + "..."


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return "an object"
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))}"
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, value: Any, where: str) -> Any:
    """`value` (parsed JSON) as type `tp`, checked all the way down; _BadField names the key path."""
    here = where or "the top level"
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _decode(arm, value, where)
            except _BadField:
                continue
        raise _BadField(f"{here}: expected {' or '.join(_type_name(a) for a in args)}, got {_show(value)}")
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, list) and len(value) == len(args):
            return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    elif origin is dict:
        if isinstance(value, dict):
            _, item = typing.get_args(tp)
            return {k: _decode(item, v, f"{where}[{k!r}]") for k, v in value.items()}
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _decode_record(tp, value, where)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value in _NONFINITE:
            return _NONFINITE[value]
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # a type this module does not use: a bug here, not in the file
        raise TypeError(f"report decoding does not handle {tp!r}")
    raise _BadField(f"{here}: expected {_type_name(tp)}, got {_show(value)}")


def _decode_record(cls: type, value: dict[str, Any], where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _BadField(
            f"unknown key '{prefix}{unknown[0]}' (valid keys{' in ' + where if where else ''}: {', '.join(fields)})"
        )
    missing = [
        name
        for name, f in fields.items()
        if name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise _BadField(f"missing key '{prefix}{missing[0]}'")
    hints = _hints(cls)
    kwargs = {name: _decode(hints[name], v, f"{prefix}{name}") for name, v in value.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise _BadField(f"{where or 'the top level'}: {e}") from None

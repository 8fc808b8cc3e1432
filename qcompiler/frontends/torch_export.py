"""torch.nn.Module -> ONNX: the one module that talks to torch's ONNX exporter.

``torch.onnx.export`` (torch 2.13) moves between releases: its dynamo path (``torch.export`` ->
onnxscript translation -> onnxscript optimizer) is the default and the one used here; the older
TorchScript exporter is only a fallback. Everything that depends on the exporter's behaviour lives
in this file, so an upgrade is a change here only.

What this wrapper adds to the exporter:

* one error, :class:`~qcompiler.errors.ExportError`, naming the module class and the root cause;
* a TorchScript fallback that is refused when its trace would bake data-dependent values into
  constants (a ``TracerWarning``), because that model would be silently wrong;
* parameter names on initializers: the optimizer folds ``Transpose(weight)`` into a new initializer
  called ``val_123``; such an initializer is renamed after the parameter it holds (see
  :func:`restore_parameter_names`);
* the exporter's chatter (progress prints, warnings, logging) hidden; when the export fails it goes
  to this module's logger at DEBUG level, and the exception chain keeps torch's full error;
* models over 2 GB written with external data and checked from the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from qcompiler.errors import ExportError

__all__ = ["LAYOUT_KEY", "PROTOBUF_LIMIT", "export_module", "restore_parameter_names"]

logger = logging.getLogger(__name__)

# A serialized ModelProto cannot exceed 2 GiB (protobuf limit). Past this many bytes of tensor data the
# model is written with external data; the margin leaves room for the graph itself.
PROTOBUF_LIMIT = 2**31
_EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - 2**27

# Metadata written on a renamed initializer whose layout differs from the parameter's.
LAYOUT_KEY = "qcompiler.layout"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CHATTY_LOGGERS = ("torch", "onnxscript", "onnx_ir")


def export_module(
    module: torch.nn.Module,
    example_inputs: tuple[Any, ...] | dict[str, Any],
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = 18,
    path: str | os.PathLike[str] | None = None,
    keep_batchnorm: bool = False,
    external_data: bool | None = None,
) -> onnx.ModelProto:
    """Export ``module`` (in eval mode) to a checked ONNX model; write it to ``path`` if given.

    ``example_inputs`` is a tuple of positional arguments or a dict of keyword arguments.
    ``dynamic_axes`` maps an input name to ``{axis: symbol}``; inputs sharing a symbol share the
    dimension (e.g. ``{"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}``).
    The example's size on a dynamic axis must be >= 2 (torch.export specializes sizes 0 and 1).
    Entries for output names are accepted and ignored: the exporter derives output shapes.
    ``keep_batchnorm`` keeps BatchNormalization nodes (the default optimizer folds them into Conv).
    ``external_data``: None writes external data only when the tensors exceed ~2 GB.

    Raises ``ExportError`` naming the module class and the first line of the cause.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"export_module expects a torch.nn.Module, got {type(module).__name__}")
    if isinstance(example_inputs, dict):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] | None = dict(example_inputs)
    elif isinstance(example_inputs, tuple):
        args, kwargs = example_inputs, None
    else:
        raise TypeError(
            "example_inputs must be a tuple (positional) or a dict (keyword), "
            f"got {type(example_inputs).__name__}"
        )
    was_training = module.training
    module.eval()
    try:
        return _export(module, args, kwargs, input_names, output_names, dynamic_axes, opset, path,
                       keep_batchnorm, external_data)
    finally:
        module.train(was_training)


def _export(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
    opset: int,
    path: str | os.PathLike[str] | None,
    keep_batchnorm: bool,
    external_data: bool | None,
) -> onnx.ModelProto:
    arg_names = _input_names(module, args, kwargs, input_names)
    dynamic_shapes = _dynamic_shapes(arg_names, args, kwargs, dynamic_axes, output_names)
    cls = type(module).__name__

    exporter = "dynamo"
    try:
        with _quiet() as captured:
            # Names are applied below, not by the exporter: it renames an output to "embedding" even when
            # an inner value (aten.embedding's result) already has that name, which breaks SSA.
            program = torch.onnx.export(
                module,
                args,
                kwargs=kwargs,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                optimize=not keep_batchnorm,
                verbose=False,
            )
            if keep_batchnorm:
                _optimize_keeping_batchnorm(program.model)
            proto = program.model_proto
    except Exception as dynamo_error:  # any exporter failure becomes one ExportError
        logger.debug("dynamo export of %s failed; exporter output:\n%s", cls, captured.text())
        proto = _torchscript_fallback(module, args, kwargs, arg_names, output_names, dynamic_axes, opset,
                                      cls, dynamo_error)
        exporter = "torchscript"
    else:
        _name_io(proto.graph, input_names, output_names)

    restore_parameter_names(proto, module)
    _set_metadata(proto, {"qcompiler.source_module": f"{type(module).__module__}.{type(module).__qualname__}",
                          "qcompiler.exporter": exporter})
    big = _tensor_bytes(proto) >= _EXTERNAL_DATA_THRESHOLD
    if path is not None:
        _save(proto, Path(path), external=big if external_data is None else external_data)
    elif big:
        raise ExportError(
            f"cannot return {cls} as one ONNX model: its tensors hold "
            f"{_tensor_bytes(proto) / 2**30:.1f} GiB, "
            "over the 2 GiB protobuf limit; pass path= to write it with external data"
        )
    else:
        _check(proto, cls)
    return proto


def restore_parameter_names(proto: onnx.ModelProto, module: torch.nn.Module) -> dict[str, str]:
    """Rename generated initializers (``val_12``) after the parameter or buffer they hold; return old->new.

    An initializer equal to a parameter takes its name; one equal to a 2-D parameter's transpose (the
    optimizer folds ``Transpose(W)`` in front of MatMul) takes the parameter's name too, with
    ``qcompiler.layout = transposed`` in its metadata. Tied weights (one tensor under several names,
    e.g. embedding and LM head) use their aliases in order, so the untransposed copy and the
    transposed one each get a name. Initializers whose name is already a parameter name are left alone
    (their values may differ after BatchNorm folding: the name says which layer they belong to).
    Names never collide: a name already taken is skipped.
    """
    aliases: dict[int, list[str]] = {}  # id(tensor) -> every name it is reachable by, in module order
    tensors: dict[int, torch.Tensor] = {}
    named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
    for name, t in named:
        aliases.setdefault(id(t), []).append(name)
        tensors[id(t)] = t
    known = {n for names in aliases.values() for n in names}
    graph = proto.graph
    taken = {init.name for init in graph.initializer} | {v.name for v in graph.input}
    taken |= _node_output_names(graph)
    candidates = [init for init in graph.initializer
                  if init.name not in known and init.data_location != onnx.TensorProto.EXTERNAL]
    if not candidates:
        return {}

    wanted_shapes = {tuple(init.dims) for init in candidates}
    index: dict[tuple[Any, ...], list[tuple[int, bool]]] = {}  # fingerprint -> (tensor id, transposed)
    for tid, t in tensors.items():
        if not t.is_floating_point() and t.dtype not in (torch.int64, torch.int32):
            continue
        shape = tuple(t.shape)
        if shape in wanted_shapes:
            index.setdefault(_fingerprint(_numpy(t)), []).append((tid, False))
        if t.dim() == 2 and shape[::-1] in wanted_shapes:
            index.setdefault(_fingerprint(np.ascontiguousarray(_numpy(t).T)), []).append((tid, True))

    renames: dict[str, str] = {}
    for init in candidates:
        matches = index.get(_fingerprint(numpy_helper.to_array(init)), [])
        for tid, transposed in matches:
            free = [n for n in aliases[tid] if n not in taken]
            if not free:
                continue
            renames[init.name] = free[0]
            taken.add(free[0])
            if transposed:
                init.metadata_props.add(key=LAYOUT_KEY, value="transposed")
            break
    _rename_values(graph, renames)
    renames.update(_order_tied_names(graph, [names for names in aliases.values() if len(names) > 1]))
    return renames


def _order_tied_names(graph: onnx.GraphProto, groups: list[list[str]]) -> dict[str, str]:
    """Within each tied group, give the first alias to the stored layout and the next to the transposed copy.

    torch.export names a tied tensor after one of its aliases (often the last, e.g. ``lm_head.weight``
    on the embedding's Gather); module order reads better: embedding first, head second.
    """
    by_name = {init.name: init for init in graph.initializer}
    renames: dict[str, str] = {}
    for names in groups:
        inits = [by_name[n] for n in names if n in by_name]
        if len(inits) < 2:
            continue
        # stored layout first, then transposed copies; each keeps its relative order
        ordered = sorted(inits, key=lambda t: any(p.key == LAYOUT_KEY for p in t.metadata_props))
        for init, name in zip(ordered, names):
            if init.name != name:
                renames[init.name] = name
    _rename_values(graph, renames)  # simultaneous: a swap of two names is one step
    return renames


# --------------------------------------------------------------------------------------------------
# export helpers


class _Captured:
    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.warnings: list[warnings.WarningMessage] = []

    def text(self) -> str:
        lines = [self.stream.getvalue()] + [f"{w.category.__name__}: {w.message}" for w in self.warnings]
        return "\n".join(line for line in lines if line)


@contextlib.contextmanager
def _quiet() -> Iterator[_Captured]:
    """Hide the exporter's prints, warnings and log records below ERROR; keep them for a failure report."""
    captured = _Captured()
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with (warnings.catch_warnings(record=True) as caught,
          contextlib.redirect_stdout(captured.stream),
          contextlib.redirect_stderr(captured.stream)):
        warnings.simplefilter("always")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield captured
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            captured.warnings = list(caught)


def _input_names(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                 input_names: Sequence[str] | None) -> list[str]:
    """The names the caller uses for the inputs, in order (to map ``dynamic_axes`` onto arguments)."""
    if input_names is not None:
        return list(input_names)
    if kwargs is not None:
        return list(kwargs)
    params = [p.name for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params[: len(args)]


def _dynamic_shapes(names: list[str], args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                    dynamic_axes: Mapping[str, Mapping[int, str]] | None,
                    output_names: Sequence[str] | None) -> tuple[Any, ...] | dict[str, Any] | None:
    """``dynamic_axes`` (names and symbols) -> torch.export ``dynamic_shapes`` (one ``Dim`` per symbol)."""
    if not dynamic_axes:
        return None
    outputs = set(output_names or ())
    unknown = [k for k in dynamic_axes if k not in names and k not in outputs]
    if unknown:
        raise ValueError(
            f"dynamic_axes names unknown input(s) {unknown}; inputs are {names}"
            + (f", outputs are {sorted(outputs)}" if outputs else "")
        )
    dims: dict[str, Any] = {}

    def spec(name: str) -> dict[int, Any] | None:
        axes = dynamic_axes.get(name)
        if not axes:
            return None
        out = {}
        for axis, symbol in axes.items():
            ident = re.sub(r"\W", "_", str(symbol))
            if not ident.isidentifier():
                ident = f"d_{ident}"
            out[int(axis)] = dims.setdefault(ident, torch.export.Dim(ident))
        return out

    if kwargs is not None:
        if len(names) != len(kwargs):
            raise ValueError(f"input_names has {len(names)} names for {len(kwargs)} keyword inputs")
        return {key: spec(name) for key, name in zip(kwargs, names)}
    if len(names) < len(args):
        raise ValueError(f"input_names has {len(names)} names for {len(args)} positional inputs")
    return tuple(spec(name) for name in names[: len(args)])


def _torchscript_fallback(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                          input_names: Sequence[str] | None, output_names: Sequence[str] | None,
                          dynamic_axes: Mapping[str, Mapping[int, str]] | None, opset: int, cls: str,
                          dynamo_error: BaseException) -> onnx.ModelProto:
    """Try the TorchScript exporter; refuse a trace that depends on data (it would be silently wrong)."""
    cause = _first_line(dynamo_error)
    with tempfile.TemporaryDirectory(prefix="qcompiler-export-") as tmp:
        f = Path(tmp) / "model.onnx"
        try:
            with _quiet() as captured:
                torch.onnx.export(
                    module, args, str(f), kwargs=kwargs, dynamo=False,
                    input_names=list(input_names) if input_names is not None else None,
                    output_names=list(output_names) if output_names is not None else None,
                    dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()} if dynamic_axes else None,
                    opset_version=opset,
                )
        except Exception as ts_error:
            raise ExportError(
                f"cannot export {cls} to ONNX: {cause} (the TorchScript fallback failed too: "
                f"{_first_line(ts_error)})"
            ) from dynamo_error
        tracer = [w for w in captured.warnings if issubclass(w.category, torch.jit.TracerWarning)]
        if tracer:
            raise ExportError(
                f"cannot export {cls} to ONNX: {cause} (the TorchScript fallback was refused: its trace "
                f"depends on input values: {_first_line(str(tracer[0].message)).split('. ')[0]})"
            ) from dynamo_error
        proto = onnx.load(str(f))
    msg = f"dynamo export of {cls} failed ({cause}); exported with the TorchScript exporter instead"
    logger.warning(msg)
    warnings.warn(msg, stacklevel=3)
    return proto


def _optimize_keeping_batchnorm(model: Any) -> None:
    """The exporter's optimizer (onnxscript ``optimize_ir``) without its BatchNorm->Conv fusion rules.

    Mirrors ``onnxscript.optimizer.optimize_ir`` (onnxscript 0.7) with one rule set removed; it uses
    onnxscript internals, so an onnxscript without them gets the unoptimized graph and a warning.
    """
    try:
        import onnx_ir.passes.common as common_passes
        from onnxscript import ir, rewriter
        from onnxscript.optimizer import _constant_folding
        from onnxscript.rewriter.rules.common import _fuse_batchnorm
    except ImportError as e:  # pragma: no cover - depends on the installed onnxscript
        warnings.warn(f"keep_batchnorm: onnxscript internals moved ({e}); the graph is left unoptimized",
                      stacklevel=3)
        return
    bn_rules = set(map(id, _fuse_batchnorm.rules))
    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if id(r) not in bn_rules]
    passes = ir.passes.Sequential(
        common_passes.InlinePass(),
        ir.passes.PassManager(
            [
                _constant_folding.FoldConstantsPass(
                    shape_inference=True,
                    input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                    output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
                ),
                rewriter.RewritePass(rules),
                common_passes.RemoveUnusedNodesPass(),
                common_passes.RemoveUnusedFunctionsPass(),
                common_passes.RemoveUnusedOpsetsPass(),
            ],
            steps=2,
            early_stop=True,
        ),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )
    passes(model)


def _first_line(error: BaseException | str) -> str:
    """``Type: first line`` of the innermost cause (the exporter wraps the real reason in generic text)."""
    if isinstance(error, str):
        text, name = error, ""
    else:
        root = error
        seen = {id(root)}
        while root.__cause__ is not None and id(root.__cause__) not in seen:
            root = root.__cause__
            seen.add(id(root))
        text, name = str(root), type(root).__name__
    lines = [ln.strip() for ln in _ANSI.sub("", text).splitlines() if ln.strip()]
    first = lines[0] if lines else "(no message)"
    return f"{name}: {first}" if name else first


# --------------------------------------------------------------------------------------------------
# proto helpers


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _fingerprint(a: np.ndarray) -> tuple[Any, ...]:
    a = np.ascontiguousarray(a)
    return (a.dtype.str, a.shape, hashlib.blake2b(a.tobytes(), digest_size=16).digest())


def _node_output_names(graph: onnx.GraphProto) -> set[str]:
    return {o for node in graph.node for o in node.output}


def _rename_values(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename values everywhere they are referenced, subgraphs included (they may use outer values)."""
    if not renames:
        return
    for init in graph.initializer:
        if init.name in renames:
            init.name = renames[init.name]
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name in renames:
            vi.name = renames[vi.name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_values(sub, renames)


def _name_io(graph: onnx.GraphProto, input_names: Sequence[str] | None,
             output_names: Sequence[str] | None) -> None:
    """Give the graph's inputs and outputs the caller's names; an inner value holding one is renamed away."""
    wanted: dict[str, str] = {}
    for kind, values, names in (("input", graph.input, input_names), ("output", graph.output, output_names)):
        if names is None:
            continue
        if len(names) != len(values):
            raise ValueError(f"{len(names)} {kind}_names given for a graph with {len(values)} {kind}s "
                             f"({[v.name for v in values]})")
        wanted.update({v.name: n for v, n in zip(values, names) if v.name != n})
    if not wanted:
        return
    used = {v.name for v in graph.input} | {t.name for t in graph.initializer} | _node_output_names(graph)
    renames = dict(wanted)
    for new in wanted.values():
        if new in used and new not in wanted:  # an inner value already has the name
            k = 0
            while f"{new}_{k}" in used:
                k += 1
            renames[new] = f"{new}_{k}"
            used.add(f"{new}_{k}")
    _rename_values(graph, renames)


def _set_metadata(proto: onnx.ModelProto, entries: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in entries.items():
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)


def _tensor_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in proto.graph.initializer)


def _check(proto: onnx.ModelProto, cls: str) -> None:
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported ONNX model of {cls} is invalid: {_first_line(str(e))}") from e


def _save(proto: onnx.ModelProto, path: Path, *, external: bool) -> None:
    """Write ``proto`` (and ``<name>.data`` if external) so that a crash leaves no half-written file.

    Both files are written in a temporary folder beside ``path``, checked from there, then renamed
    into place, data first. ``proto`` is unchanged afterwards.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = f"{path.name}.data"
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        tmp_model = Path(tmp) / path.name
        if external:
            _save_external(proto, tmp_model, data_name)
        else:
            onnx.save_model(proto, str(tmp_model))
        try:
            onnx.checker.check_model(str(tmp_model))
        except onnx.checker.ValidationError as e:
            raise ExportError(f"exported ONNX model {path.name} is invalid: {_first_line(str(e))}") from e
        if external:
            os.replace(Path(tmp) / data_name, path.parent / data_name)
        os.replace(tmp_model, path)


def _save_external(proto: onnx.ModelProto, model_path: Path, data_name: str, min_bytes: int = 1024) -> None:
    """Save with every initializer of ``min_bytes`` or more in ``data_name`` beside ``model_path``.

    Tensor by tensor: each is appended to the data file and emptied, the small model is written, and
    the tensors are read back, so peak memory stays near one copy of the weights (onnx.save_model's
    external-data path would need a full copy of a >2 GB proto to leave ``proto`` intact).
    """
    moved: list[tuple[onnx.TensorProto, int, int]] = []
    data_path = model_path.parent / data_name
    try:
        with open(data_path, "wb") as f:
            for t in proto.graph.initializer:
                if t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) < min_bytes:
                    continue
                offset = f.tell()
                length = f.write(t.raw_data)
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
                del t.external_data[:]
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    t.external_data.add(key=key, value=value)
                moved.append((t, offset, length))
        onnx.save_model(proto, str(model_path))
    finally:
        with open(data_path, "rb") as f:
            for t, offset, length in moved:
                f.seek(offset)
                t.raw_data = f.read(length)
                t.data_location = onnx.TensorProto.DEFAULT
                del t.external_data[:]

"""ONNX <-> IR, lossless: ops, attributes, initializers (bit-exact), names, metadata, opsets, value infos,
subgraphs and model-local functions. The only module that reads or writes ONNX protobufs.

External data is mapped lazily on load and streamed on save, so a model over 2 GB never sits in memory
twice. Locations that escape the model's folder are refused (path traversal).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from ..errors import GraphError, ModelLoadError, UnsupportedOpError
from ..ir import (
    Attr,
    AttrType,
    DType,
    ExternalRef,
    Function,
    Graph,
    MapType,
    Model,
    Node,
    Opaque,
    OptionalType,
    SequenceType,
    SparseTensorType,
    Tensor,
    TensorType,
    Value,
    ValueType,
)
from ..ir.tensor import unpack_storage

# Domains whose ops ONNX Runtime or ONNX define; anything else must be a model-local function.
KNOWN_DOMAINS = frozenset(
    {
        "", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training", "com.microsoft",
        "com.microsoft.nchwc", "com.microsoft.experimental", "com.ms.internal.nhwc", "org.pytorch.aten",
        "com.microsoft.extensions", "ai.onnx.contrib",
    }
)
EXTERNAL_THRESHOLD = 1024  # tensors at least this many bytes go to the data file when saving externally
TWO_GB = 2**31 - 1


# =============================================================================================== load
def load_onnx(path: str | os.PathLike[str], *, infer_shapes: bool = True, check: bool = True) -> Model:
    """Read an ONNX file into the IR. External data is mapped, not read. Errors name the file."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, not an ONNX file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read: {e.strerror}") from None
    proto = _parse_proto(data, str(path))
    del data
    return model_from_proto(proto, base_dir=path.parent, source=str(path), infer_shapes=infer_shapes, check=check)


def _parse_proto(data: bytes, source: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{source}: not an ONNX model or truncated ({e})") from None
    # A cut-off file can still parse (protobuf stops at a field boundary): insist on what every model has.
    if not proto.HasField("graph") or not proto.opset_import or proto.ir_version <= 0:
        missing = [
            w for w, ok in (("graph", proto.HasField("graph")), ("opset_import", bool(proto.opset_import)),
                            ("ir_version", proto.ir_version > 0)) if not ok
        ]
        raise ModelLoadError(f"{source}: not an ONNX model or truncated (missing {', '.join(missing)})")
    return proto


def model_from_proto(
    proto: onnx.ModelProto,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    source: str = "<model>",
    infer_shapes: bool = True,
    check: bool = True,
) -> Model:
    """Convert a ModelProto (external data not loaded) into a Model."""
    reader = _Reader(Path(base_dir) if base_dir is not None else None, source)
    inferred: dict[str, onnx.TypeProto] = {}
    if infer_shapes:
        inferred = _inferred_types(proto)
    graph = reader.graph(proto.graph, None, inferred)
    model = Model(
        graph,
        opset_imports={o.domain: o.version for o in proto.opset_import},
        ir_version=proto.ir_version,
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        domain=proto.domain,
        model_version=proto.model_version,
        doc_string=proto.doc_string,
        metadata_props={p.key: p.value for p in proto.metadata_props},
    )
    for fp in proto.functions:
        fn = reader.function(fp)
        model.functions[fn.key] = fn
    for t in proto.training_info:
        model.opaque.append(Opaque("training_info", t.SerializeToString()))
    for c in proto.configuration:
        model.opaque.append(Opaque("configuration", c.SerializeToString()))
    if check:
        check_domains(model, source)
        from ..ir import verify
        from .onnx_schema import schema_rule

        try:
            verify(model, rules=[schema_rule(model)])
        except GraphError as e:
            raise GraphError(f"{source}: {e}") from None
    return model


def check_domains(model: Model, source: str = "<model>") -> None:
    """Every node's domain must be imported, and known (ONNX, ONNX Runtime) or a model-local function's."""
    local = {(f.domain, f.name) for f in model.functions.values()}
    fn_domains = {f.domain for f in model.functions.values()}
    graphs = [model.graph] + [f.graph for f in model.functions.values()]
    for root in graphs:
        for n in root.all_nodes():
            dom = n.domain
            if dom not in model.opset_imports and not (dom in ("", "ai.onnx") and model.opset("") is not None):
                raise GraphError(
                    f"{source}: node {n.label()} uses op domain {dom!r}, which the model does not import "
                    f"(imported: {', '.join(repr(d) for d in model.opset_imports)})"
                )
            if dom not in KNOWN_DOMAINS and dom not in fn_domains and (dom, n.op_type) not in local:
                raise UnsupportedOpError(
                    f"{source}: node {n.label()} is in unknown op domain {dom!r}: neither ONNX, ONNX Runtime "
                    "nor a function of the model defines it"
                )


def _inferred_types(proto: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Value types from ONNX shape inference (best effort: a model it rejects is still loaded)."""
    try:
        out = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a convenience; the verifier reports real problems
        return {}
    types: dict[str, onnx.TypeProto] = {}

    def walk(g: onnx.GraphProto) -> None:
        for vi in list(g.value_info) + list(g.output):
            if vi.HasField("type"):
                types.setdefault(vi.name, vi.type)
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        walk(sg)

    walk(out.graph)
    return types


class _Reader:
    def __init__(self, base_dir: Path | None, source: str) -> None:
        self.base_dir = base_dir
        self.source = source

    # -- graphs ---------------------------------------------------------------------------------------
    def graph(
        self,
        gp: onnx.GraphProto,
        outer: dict[str, Value] | None,
        inferred: dict[str, onnx.TypeProto],
        parent_label: str = "",
    ) -> Graph:
        scope: dict[str, Value] = dict(outer) if outer else {}
        g = Graph(name=gp.name, doc_string=gp.doc_string)
        g.metadata_props = {p.key: p.value for p in gp.metadata_props}
        for vi in gp.input:
            v = self.value_from_info(vi)
            g.add_input(v)
            scope[v.name] = v
        input_names = {vi.name for vi in gp.input}
        for tp in gp.initializer:
            tensor = self.tensor(tp)
            v = scope.get(tp.name) if tp.name in input_names else None
            if v is None:
                v = Value(tp.name, TensorType(tensor.dtype, tensor.shape))
                scope[v.name] = v
            v.const = tensor
            g.add_initializer(v)
        for sp in gp.sparse_initializer:
            g.opaque.append(Opaque("sparse_initializer", sp.SerializeToString()))
        for qa in gp.quantization_annotation:
            g.opaque.append(Opaque("quantization_annotation", qa.SerializeToString()))
        value_info = {vi.name: vi for vi in gp.value_info}

        # Outputs first, so a node may read a value produced by a later node (ONNX files are not always
        # sorted); then sort.
        produced: dict[str, Value] = {}
        for np_ in gp.node:
            for name in np_.output:
                if name and name in produced:
                    raise GraphError(f"{self.source}: value {name!r} is produced by two nodes")
                if name:
                    produced[name] = Value(name)
        local = dict(scope)
        local.update(produced)
        sorted_needed = False
        defined_so_far = set(scope)
        for np_ in gp.node:
            ins: list[Value | None] = []
            label = f"{np_.name or '<unnamed>'} ({np_.op_type})"
            for name in np_.input:
                if not name:
                    ins.append(None)
                    continue
                v = local.get(name)
                if v is None:
                    raise GraphError(
                        f"{self.source}: node {label} reads {name!r}, which no node, input or initializer defines"
                    )
                if name not in defined_so_far:
                    sorted_needed = True
                ins.append(v)
            outs = [produced[name] if name else Value("") for name in np_.output]
            attrs = [self.attr(a, local, inferred, label) for a in np_.attribute]
            node = Node(np_.op_type, ins, outs, attrs, domain=np_.domain, name=np_.name, overload=np_.overload,
                        doc_string=np_.doc_string)
            node.metadata_props = {p.key: p.value for p in np_.metadata_props}
            for dc in np_.device_configurations:
                node.opaque.append(Opaque("device_configuration", dc.SerializeToString()))
            g.append(node, autoname=False)
            defined_so_far.update(n for n in np_.output if n)
        if sorted_needed:
            try:
                g.toposort()
            except GraphError as e:  # a cycle: name the file too
                raise GraphError(f"{self.source}: {e}") from None
        # Types: declared value_info (kept on save), else what shape inference found (not saved).
        for name, v in produced.items():
            if name in value_info:
                vi = value_info[name]
                v.type = self.type(vi.type) if vi.HasField("type") else None
                v.doc_string = vi.doc_string
                v.metadata_props = {p.key: p.value for p in vi.metadata_props}
                v.emit_value_info = True
            elif name in inferred:
                v.type = self.type(inferred[name])
        outs = []
        for vi in gp.output:
            v = local.get(vi.name)
            if v is None:
                raise GraphError(f"{self.source}: graph {gp.name!r} output {vi.name!r} is never defined")
            if vi.HasField("type"):
                v.type = self.type(vi.type)
            v.meta["output_doc_string"] = vi.doc_string
            if vi.metadata_props:
                v.meta["output_metadata_props"] = {p.key: p.value for p in vi.metadata_props}
            outs.append(v)
        g.outputs = outs
        # value_info entries that name inputs/initializers (allowed, rare): keep them.
        for name, vi in value_info.items():
            if name not in produced and name in scope:
                scope[name].meta["value_info"] = (
                    self.type(vi.type) if vi.HasField("type") else None,
                    vi.doc_string,
                    {p.key: p.value for p in vi.metadata_props},
                )
        return g

    def value_from_info(self, vi: onnx.ValueInfoProto) -> Value:
        v = Value(vi.name, self.type(vi.type) if vi.HasField("type") else None)
        v.doc_string = vi.doc_string
        v.metadata_props = {p.key: p.value for p in vi.metadata_props}
        return v

    def function(self, fp: onnx.FunctionProto) -> Function:
        value_info = {vi.name: vi for vi in fp.value_info}
        gp = onnx.GraphProto(name=fp.name, node=fp.node, value_info=fp.value_info)
        for name in fp.input:
            gp.input.append(value_info.get(name) or onnx.ValueInfoProto(name=name))
        for name in fp.output:
            gp.output.append(onnx.ValueInfoProto(name=name))
        g = self.graph(gp, None, {})
        for v in g.outputs:
            if v.name in value_info and value_info[v.name].HasField("type"):
                v.type = self.type(value_info[v.name].type)
                v.emit_value_info = True
            else:
                v.type = None
        for v in g.inputs:
            v.emit_value_info = v.name in value_info
        fn = Function(
            fp.domain,
            fp.name,
            g,
            attributes=list(fp.attribute),
            attribute_defaults={a.name: self.attr(a, {}, {}, fp.name) for a in fp.attribute_proto},
            opset_imports={o.domain: o.version for o in fp.opset_import},
            overload=fp.overload,
            doc_string=fp.doc_string,
            metadata_props={p.key: p.value for p in fp.metadata_props},
        )
        return fn

    # -- types ----------------------------------------------------------------------------------------
    def type(self, tp: onnx.TypeProto) -> ValueType | None:
        which = tp.WhichOneof("value")
        if which == "tensor_type":
            return TensorType(DType(tp.tensor_type.elem_type), _shape(tp.tensor_type))
        if which == "sparse_tensor_type":
            return SparseTensorType(DType(tp.sparse_tensor_type.elem_type), _shape(tp.sparse_tensor_type))
        if which == "sequence_type":
            return SequenceType(self.type(tp.sequence_type.elem_type))
        if which == "optional_type":
            return OptionalType(self.type(tp.optional_type.elem_type))
        if which == "map_type":
            return MapType(DType(tp.map_type.key_type), self.type(tp.map_type.value_type))
        return None

    # -- attributes -----------------------------------------------------------------------------------
    def attr(
        self, a: onnx.AttributeProto, scope: dict[str, Value], inferred: dict[str, onnx.TypeProto], label: str
    ) -> Attr:
        t = AttrType(a.type)
        if a.ref_attr_name:
            return Attr(a.name, t, None, ref_attr_name=a.ref_attr_name, doc_string=a.doc_string)
        A = onnx.AttributeProto
        value: object
        if t is AttrType.FLOAT:
            value = a.f
        elif t is AttrType.INT:
            value = a.i
        elif t is AttrType.STRING:
            value = _decode(a.s)
        elif t is AttrType.TENSOR:
            value = self.tensor(a.t)
        elif t is AttrType.GRAPH:
            value = self.graph(a.g, scope, inferred, label)
        elif t is AttrType.FLOATS:
            value = list(a.floats)
        elif t is AttrType.INTS:
            value = list(a.ints)
        elif t is AttrType.STRINGS:
            value = [_decode(s) for s in a.strings]
        elif t is AttrType.TENSORS:
            value = [self.tensor(x) for x in a.tensors]
        elif t is AttrType.GRAPHS:
            value = [self.graph(x, scope, inferred, label) for x in a.graphs]
        elif t is AttrType.SPARSE_TENSOR:
            value = Opaque("sparse_tensor", a.sparse_tensor.SerializeToString())
        elif t is AttrType.TYPE_PROTO:
            value = Opaque("type_proto", a.tp.SerializeToString())
        elif t is AttrType.SPARSE_TENSORS:
            value = [Opaque("sparse_tensor", x.SerializeToString()) for x in a.sparse_tensors]
        elif t is AttrType.TYPE_PROTOS:
            value = [Opaque("type_proto", x.SerializeToString()) for x in a.type_protos]
        else:
            raise GraphError(f"{self.source}: node {label} attribute {a.name!r} has no type ({A.UNDEFINED})")
        return Attr(a.name, t, value, doc_string=a.doc_string)

    # -- tensors --------------------------------------------------------------------------------------
    def tensor(self, tp: onnx.TensorProto) -> Tensor:
        dtype = DType(tp.data_type)
        shape = tuple(int(d) for d in tp.dims)
        if tp.data_location == onnx.TensorProto.EXTERNAL:
            ref = self.external_ref(tp)
            t = Tensor(dtype=dtype, shape=shape, external=ref, doc_string=tp.doc_string)
            nbytes = t.nbytes
            try:
                size = os.path.getsize(ref.path)
            except OSError as e:
                raise ModelLoadError(
                    f"{self.source}: tensor {tp.name!r}: external data file {ref.path} cannot be read "
                    f"({e.strerror})"
                ) from None
            if ref.offset + nbytes > size or (ref.length is not None and ref.length < nbytes):
                raise ModelLoadError(
                    f"{self.source}: tensor {tp.name!r}: external data file {ref.path} is too short "
                    f"(needs {nbytes} bytes at offset {ref.offset}, file has {size})"
                )
        elif tp.HasField("raw_data"):
            t = Tensor(unpack_storage(tp.raw_data, dtype, shape), dtype, doc_string=tp.doc_string)
        else:
            t = Tensor(_typed_fields_to_storage(tp, dtype, shape), dtype, doc_string=tp.doc_string)
        t.metadata_props = {p.key: p.value for p in tp.metadata_props}
        return t

    def external_ref(self, tp: onnx.TensorProto) -> ExternalRef:
        info = {e.key: e.value for e in tp.external_data}
        loc = info.get("location")
        if not loc:
            raise ModelLoadError(f"{self.source}: tensor {tp.name!r} has external data without a location")
        if self.base_dir is None:
            raise ModelLoadError(f"{self.source}: tensor {tp.name!r} has external data but no folder was given")
        base = os.path.realpath(self.base_dir)
        full = os.path.realpath(os.path.join(base, loc))
        if os.path.isabs(loc) or os.path.commonpath([base, full]) != base:
            raise ModelLoadError(
                f"{self.source}: tensor {tp.name!r}: external data location {loc!r} points outside the "
                f"model's folder {base} (refused: path traversal)"
            )
        if not os.path.isfile(full):
            raise ModelLoadError(f"{self.source}: tensor {tp.name!r}: external data file {full} does not exist")
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
        return ExternalRef(full, offset, length)


def _shape(tt: onnx.TypeProto.Tensor | onnx.TypeProto.SparseTensor) -> tuple | None:
    if not tt.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        w = d.WhichOneof("value")
        dims.append(d.dim_value if w == "dim_value" else d.dim_param if w == "dim_param" else None)
    return tuple(dims)


def _decode(b: bytes) -> str | bytes:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b


def _typed_fields_to_storage(tp: onnx.TensorProto, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    """Values held in float_data/int32_data/... -> storage array (exotic types via their bit patterns)."""
    if dtype is DType.STRING:
        return np.array(list(tp.string_data), dtype=object).reshape(shape)
    arr = numpy_helper.to_array(tp)
    storage = dtype.storage
    if dtype.is_native:
        return np.asarray(arr, dtype=storage).reshape(shape)
    if dtype.bitwidth in (2, 4):
        return np.asarray(arr).astype(np.float32).astype(storage).reshape(shape)  # small ints, exact
    return np.ascontiguousarray(arr).view(storage).reshape(shape)


# =============================================================================================== save
def model_to_proto(model: Model, *, data_writer: _DataWriter | None = None) -> onnx.ModelProto:
    """Model -> ModelProto. With a `data_writer`, large tensors go to its external file instead of inline."""
    w = _Writer(data_writer)
    mp = onnx.ModelProto(ir_version=model.ir_version)
    _set(
        mp, producer_name=model.producer_name, producer_version=model.producer_version, domain=model.domain,
        model_version=model.model_version, doc_string=model.doc_string,
    )
    for dom, ver in model.opset_imports.items():
        mp.opset_import.append(onnx.OperatorSetIdProto(domain=dom, version=ver))
    _put_props(mp.metadata_props, model.metadata_props)
    mp.graph.CopyFrom(w.graph(model.graph))
    for fn in model.functions.values():
        mp.functions.append(w.function(fn))
    for o in model.opaque:
        if o.kind == "training_info":
            mp.training_info.add().ParseFromString(o.data)
        elif o.kind == "configuration":
            mp.configuration.add().ParseFromString(o.data)
    return mp


def save_onnx(
    model: Model, path: str | os.PathLike[str], *, external_data: bool | None = None, verify: bool = True
) -> Path:
    """Write `model` to `path` atomically (temp files, then rename). `external_data=None` chooses: external
    when the initializers exceed 2 GB or the model already kept them outside. Data goes to `NAME.data`."""
    from ..ir import verify as verify_ir

    path = Path(path)
    if not path.parent.is_dir():
        raise ModelLoadError(f"{path}: output folder {path.parent} does not exist")
    if verify:
        verify_ir(model, where=f"saving {path}")
    if external_data is None:
        tensors = list(_all_tensors(model))
        total = sum(t.nbytes for t in tensors)
        external_data = total > TWO_GB - 64 * 2**20 or any(t.external is not None for t in tensors)
    data_name = path.name + ".data"
    tmp_model = tmp_data = None
    try:
        fd, tmp_model = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        writer = None
        if external_data:
            fd, tmp_data = tempfile.mkstemp(prefix=f".{data_name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            writer = _DataWriter(tmp_data, data_name)
        with writer if writer is not None else contextlib.nullcontext():
            proto = model_to_proto(model, data_writer=writer)
        blob = proto.SerializeToString()
        if len(blob) > TWO_GB:
            raise ModelLoadError(f"{path}: the model is over 2 GB even without its weights; cannot save")
        with open(tmp_model, "wb") as f:
            f.write(blob)
        del blob, proto
        if tmp_data is not None:
            os.replace(tmp_data, path.parent / data_name)
            tmp_data = None
        os.replace(tmp_model, path)
        tmp_model = None
    finally:
        for t in (tmp_model, tmp_data):
            if t is not None:
                with contextlib.suppress(OSError):
                    os.unlink(t)
    return path


def save_proto(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write a ModelProto as is (external data past 2 GB), for references kept as protobufs."""
    path = Path(path)
    if proto.ByteSize() < TWO_GB - 64 * 2**20:
        path.write_bytes(proto.SerializeToString())
    else:
        onnx.save_model(proto, path, save_as_external_data=True, location=path.name + ".data")
    return path


def _all_tensors(model: Model) -> Iterator[Tensor]:
    roots = [model.graph] + [f.graph for f in model.functions.values()]
    for root in roots:
        for g in root.all_graphs():
            for v in g.initializers.values():
                assert v.const is not None
                yield v.const


class _DataWriter:
    """Appends tensor bytes to one external data file, streaming, 64-byte aligned (mmap-friendly)."""

    ALIGN = 64
    CHUNK = 64 * 2**20

    def __init__(self, path: str, location: str) -> None:
        self.path = path
        self.location = location
        self.f = open(path, "wb")  # noqa: SIM115 - closed in __exit__
        self.offset = 0

    def __enter__(self) -> _DataWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def write(self, tensor: Tensor) -> tuple[int, int]:
        pad = (-self.offset) % self.ALIGN
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        start = self.offset
        if tensor.external is not None and not tensor.is_loaded:
            n = self._copy_external(tensor)  # file to file in chunks: nothing is mapped or held
        else:
            mv = memoryview(tensor.raw_bytes()).cast("B")
            for i in range(0, len(mv), self.CHUNK):
                self.f.write(mv[i : i + self.CHUNK])
            n = len(mv)
        self.offset += n
        return start, n

    def _copy_external(self, tensor: Tensor) -> int:
        ref = tensor.external
        assert ref is not None
        left = tensor.nbytes
        with open(ref.path, "rb") as src:
            src.seek(ref.offset)
            while left:
                chunk = src.read(min(self.CHUNK, left))
                if not chunk:
                    raise ModelLoadError(f"external data file {ref.path} ended early")
                self.f.write(chunk)
                left -= len(chunk)
        return tensor.nbytes


class _Writer:
    def __init__(self, data: _DataWriter | None) -> None:
        self.data = data

    def graph(self, g: Graph) -> onnx.GraphProto:
        gp = onnx.GraphProto()
        _set(gp, name=g.name, doc_string=g.doc_string)
        _put_props(gp.metadata_props, g.metadata_props)
        input_ids = {id(v) for v in g.inputs}
        for v in g.inputs:
            gp.input.append(self.value_info(v))
        for v in g.initializers.values():
            assert v.const is not None
            gp.initializer.append(self.tensor(v.const, v.name))
            if id(v) not in input_ids and "value_info" in v.meta:
                vtype, doc, props = v.meta["value_info"]
                vi = _value_info(v.name, vtype)
                _set(vi, doc_string=doc)
                _put_props(vi.metadata_props, props)
                gp.value_info.append(vi)
        for o in g.opaque:
            if o.kind == "sparse_initializer":
                gp.sparse_initializer.add().ParseFromString(o.data)
            elif o.kind == "quantization_annotation":
                gp.quantization_annotation.add().ParseFromString(o.data)
        for n in g.nodes:
            gp.node.append(self.node(n))
            for v in n.outputs:
                if v.emit_value_info and v.name:
                    gp.value_info.append(self.value_info(v))
        for v in g.outputs:
            vi = self.value_info(v)
            _set(vi, doc_string=v.meta.get("output_doc_string", v.doc_string))
            del vi.metadata_props[:]
            _put_props(vi.metadata_props, v.meta.get("output_metadata_props", {}))
            gp.output.append(vi)
        return gp

    def value_info(self, v: Value) -> onnx.ValueInfoProto:
        vi = _value_info(v.name, v.type)
        _set(vi, doc_string=v.doc_string)
        _put_props(vi.metadata_props, v.metadata_props)
        return vi

    def node(self, n: Node) -> onnx.NodeProto:
        np_ = onnx.NodeProto(op_type=n.op_type)
        _set(np_, domain=n.domain, name=n.name, overload=n.overload, doc_string=n.doc_string)
        np_.input.extend("" if v is None else v.name for v in n.inputs)
        np_.output.extend(v.name for v in n.outputs)
        for a in n.attrs.values():
            np_.attribute.append(self.attr(a))
        _put_props(np_.metadata_props, n.metadata_props)
        for o in n.opaque:
            if o.kind == "device_configuration":
                np_.device_configurations.add().ParseFromString(o.data)
        return np_

    def function(self, fn: Function) -> onnx.FunctionProto:
        fp = onnx.FunctionProto(name=fn.name)
        _set(fp, domain=fn.domain, overload=fn.overload, doc_string=fn.doc_string)
        fp.input.extend(v.name for v in fn.graph.inputs)
        fp.output.extend(v.name for v in fn.graph.outputs)
        fp.attribute.extend(fn.attributes)
        for a in fn.attribute_defaults.values():
            fp.attribute_proto.append(self.attr(a))
        for dom, ver in fn.opset_imports.items():
            fp.opset_import.append(onnx.OperatorSetIdProto(domain=dom, version=ver))
        for n in fn.graph.nodes:
            fp.node.append(self.node(n))
        for v in fn.graph.inputs + [o for n in fn.graph.nodes for o in n.outputs]:
            if v.emit_value_info and v.type is not None:
                fp.value_info.append(self.value_info(v))
        _put_props(fp.metadata_props, fn.metadata_props)
        return fp

    def attr(self, a: Attr) -> onnx.AttributeProto:
        ap = onnx.AttributeProto(name=a.name, type=int(a.type))
        _set(ap, doc_string=a.doc_string)
        if a.ref_attr_name is not None:
            ap.ref_attr_name = a.ref_attr_name
            return ap
        t, v = a.type, a.value
        if t is AttrType.FLOAT:
            ap.f = v
        elif t is AttrType.INT:
            ap.i = v
        elif t is AttrType.STRING:
            ap.s = _encode(v)
        elif t is AttrType.TENSOR:
            ap.t.CopyFrom(self.tensor(v, "", inline=True))
        elif t is AttrType.GRAPH:
            ap.g.CopyFrom(self.graph(v))
        elif t is AttrType.FLOATS:
            ap.floats.extend(v)
        elif t is AttrType.INTS:
            ap.ints.extend(v)
        elif t is AttrType.STRINGS:
            ap.strings.extend(_encode(s) for s in v)
        elif t is AttrType.TENSORS:
            ap.tensors.extend(self.tensor(x, "", inline=True) for x in v)
        elif t is AttrType.GRAPHS:
            ap.graphs.extend(self.graph(x) for x in v)
        elif t is AttrType.SPARSE_TENSOR:
            ap.sparse_tensor.ParseFromString(v.data)
        elif t is AttrType.TYPE_PROTO:
            ap.tp.ParseFromString(v.data)
        elif t is AttrType.SPARSE_TENSORS:
            for o in v:
                ap.sparse_tensors.add().ParseFromString(o.data)
        elif t is AttrType.TYPE_PROTOS:
            for o in v:
                ap.type_protos.add().ParseFromString(o.data)
        return ap

    def tensor(self, t: Tensor, name: str, *, inline: bool = False) -> onnx.TensorProto:
        tp = onnx.TensorProto(data_type=int(t.dtype))
        _set(tp, name=name, doc_string=t.doc_string)
        tp.dims.extend(t.shape)
        _put_props(tp.metadata_props, t.metadata_props)
        if t.dtype is DType.STRING:
            tp.string_data.extend(_encode(s) for s in t.numpy().ravel())
            return tp
        if self.data is not None and not inline and t.nbytes >= EXTERNAL_THRESHOLD:
            offset, length = self.data.write(t)
            tp.data_location = onnx.TensorProto.EXTERNAL
            for k, val in (("location", self.data.location), ("offset", str(offset)), ("length", str(length))):
                tp.external_data.append(onnx.StringStringEntryProto(key=k, value=val))
            return tp
        raw = t.raw_bytes()
        tp.raw_data = bytes(raw)
        return tp


def _value_info(name: str, vtype: ValueType | None) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto(name=name)
    if vtype is not None:
        vi.type.CopyFrom(_type_proto(vtype))
    return vi


def _type_proto(t: ValueType | None) -> onnx.TypeProto:
    tp = onnx.TypeProto()
    if t is None:
        return tp
    if isinstance(t, TensorType | SparseTensorType):
        tt = tp.tensor_type if isinstance(t, TensorType) else tp.sparse_tensor_type
        tt.elem_type = int(t.dtype)
        if t.shape is not None:
            tt.shape.SetInParent()
            for d in t.shape:
                dim = tt.shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                elif isinstance(d, str):
                    dim.dim_param = d
    elif isinstance(t, SequenceType):
        tp.sequence_type.SetInParent()
        if t.elem is not None:
            tp.sequence_type.elem_type.CopyFrom(_type_proto(t.elem))
    elif isinstance(t, OptionalType):
        tp.optional_type.SetInParent()
        if t.elem is not None:
            tp.optional_type.elem_type.CopyFrom(_type_proto(t.elem))
    elif isinstance(t, MapType):
        tp.map_type.key_type = int(t.key)
        if t.value is not None:
            tp.map_type.value_type.CopyFrom(_type_proto(t.value))
    return tp


def _set(msg: object, **fields: object) -> None:
    """Set only non-empty fields: ONNX protos are proto2, where assigning "" still marks a field present."""
    for k, v in fields.items():
        if v:
            setattr(msg, k, v)


def _encode(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("utf-8")


def _put_props(field: object, props: dict[str, str]) -> None:
    for k, v in props.items():
        field.append(onnx.StringStringEntryProto(key=k, value=v))  # type: ignore[attr-defined]

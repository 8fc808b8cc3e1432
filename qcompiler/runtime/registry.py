"""The op table: one entry per ONNX op (domain, name, opset range) with its traits and its torch function.

An op function takes an `OpContext`, the node's inputs as torch tensors (None for an omitted optional
input; trailing omitted inputs are not passed) and the node's attributes as keyword arguments, and returns
one tensor or a tuple of tensors (one per output). Attribute values arrive as plain Python: int, float,
str, lists of those, torch tensors for TENSOR attributes, IR `Graph`s for GRAPH attributes. Sequences are
Python lists of tensors; an empty optional is None.

    @register("Relu", since=6, traits={"elementwise"})
    def relu(ctx, x):
        return torch.relu(x)

Rules for op functions: never modify an input in place (inputs may share memory with the model's
initializers or the caller's arrays), and stay differentiable where the op is (no `torch.no_grad`): QAT
backpropagates through the executor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UnsupportedOpError
from ..ir import DType, OptionalType, SequenceType, TensorType

if TYPE_CHECKING:
    from ..ir import Graph, Node, Value

OpFn = Callable[..., Any]

# Trait vocabulary (free-form, but these are the ones passes read):
#   elementwise    output[i] depends on input[i] only (broadcasting aside)
#   data_movement  output elements are copies of input elements (Reshape, Transpose, Gather, Slice, ...):
#                  a quantized input gives a quantized output with the same scale and zero point
#   shape          the output depends only on input shapes (Shape, Size)
#   random         the output is random (Dropout in training mode, RandomNormal, ...)
#   control_flow   runs subgraphs (If, Loop, Scan)
#   quantize / dequantize / integer_kernel   the quantization ops (QuantizeLinear, DequantizeLinear,
#                  MatMulInteger, QLinearConv, ...)


@dataclass(frozen=True)
class OpDef:
    """One op at one range of opset versions. `traits` are tags passes read (see the vocabulary above);
    `quantizable_inputs` lists the inputs an integer kernel can take quantized (Conv: (0, 1))."""

    op_type: str
    domain: str
    since: int
    fn: OpFn
    until: int | None = None  # first opset version this entry no longer covers
    traits: frozenset[str] = field(default_factory=frozenset)
    quantizable_inputs: tuple[int, ...] = ()


def _dtype_of(v: Value | None) -> DType | None:
    t = v.type if v is not None else None
    while isinstance(t, SequenceType | OptionalType):
        t = t.elem
    return t.dtype if isinstance(t, TensorType) else None


class OpContext:
    """What an op function may need beyond its inputs: the node (for errors), the opset version in force,
    the IR element types of its inputs and outputs (int4 is held in int8 tensors, so only the IR knows),
    and a way to run subgraphs (If/Loop/Scan) with the enclosing scope visible."""

    __slots__ = ("node", "opset", "_run_subgraph", "in_dtypes", "out_dtypes")

    def __init__(
        self,
        node: Node,
        opset: int,
        run_subgraph: Callable[[Graph, list[Any]], list[Any]] | None = None,
    ) -> None:
        self.node = node
        self.opset = opset
        self._run_subgraph = run_subgraph
        self.in_dtypes: tuple[DType | None, ...] = tuple(_dtype_of(v) for v in node.inputs)
        self.out_dtypes: tuple[DType | None, ...] = tuple(_dtype_of(v) for v in node.outputs)

    @property
    def n_outputs(self) -> int:
        return len(self.node.outputs)

    def in_dtype(self, i: int) -> DType | None:
        """The IR element type of input `i` (None when absent or unknown)."""
        return self.in_dtypes[i] if i < len(self.in_dtypes) else None

    def out_dtype(self, i: int) -> DType | None:
        return self.out_dtypes[i] if i < len(self.out_dtypes) else None

    def output_used(self, i: int) -> bool:
        """Whether output `i` exists and has a name (ONNX omits optional outputs by an empty name)."""
        return i < len(self.node.outputs) and bool(self.node.outputs[i].name)

    def with_runner(self, run_subgraph: Callable[[Graph, list[Any]], list[Any]]) -> OpContext:
        """A copy bound to a subgraph runner (the executor makes one per call of a control-flow node)."""
        ctx = OpContext.__new__(OpContext)
        ctx.node, ctx.opset, ctx.in_dtypes, ctx.out_dtypes = (
            self.node,
            self.opset,
            self.in_dtypes,
            self.out_dtypes,
        )
        ctx._run_subgraph = run_subgraph
        return ctx

    def run_subgraph(self, graph: Graph, inputs: list[Any]) -> list[Any]:
        """Run a subgraph with `inputs` bound to its formal inputs; outer values come from the caller."""
        if self._run_subgraph is None:
            raise RuntimeError(f"{self.node.label()}: no subgraph runner in this context")
        return self._run_subgraph(graph, inputs)

    def fail(self, message: str) -> UnsupportedOpError:
        """An error naming this node: `raise ctx.fail("mode 'foo' is not supported")`."""
        return UnsupportedOpError(f"node {self.node.label()} (opset {self.opset}): {message}")


_TABLE: dict[tuple[str, str], list[OpDef]] = {}


def register(
    op_type: str,
    *,
    domain: str = "",
    since: int = 1,
    until: int | None = None,
    traits: Iterable[str] = (),
    quantizable_inputs: tuple[int, ...] = (),
) -> Callable[[OpFn], OpFn]:
    """Decorator adding `fn` to the op table for opsets [since, until). Stack it to register one function
    for several version ranges."""

    def deco(fn: OpFn) -> OpFn:
        entries = _TABLE.setdefault((_norm(domain), op_type), [])
        for e in entries:
            if e.since == since:
                raise ValueError(f"op {domain}::{op_type} since {since} is registered twice")
        entries.append(OpDef(op_type, _norm(domain), since, fn, until, frozenset(traits), quantizable_inputs))
        entries.sort(key=lambda e: e.since)
        return fn

    return deco


def lookup(op_type: str, domain: str, opset: int) -> OpDef | None:
    """The entry covering `opset` (largest `since` <= opset), or None if the op is not in the table."""
    _load_ops()
    entries = _TABLE.get((_norm(domain), op_type))
    if not entries:
        return None
    best = None
    for e in entries:
        if e.since <= opset and (e.until is None or opset < e.until):
            best = e
    return best


def all_ops() -> list[OpDef]:
    """Every entry, sorted by (domain, op, since) — what `qcompiler inspect` and docs list."""
    _load_ops()
    return sorted((e for es in _TABLE.values() for e in es), key=lambda e: (e.domain, e.op_type, e.since))


def _norm(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


_loaded = False


def _load_ops() -> None:
    """Import the op modules (they register themselves)."""
    global _loaded
    if not _loaded:
        from . import ops  # noqa: F401

        _loaded = True

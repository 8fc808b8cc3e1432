"""The op table: one entry per ONNX op (domain, name, opset range) with its traits and its torch function.

An op function takes an `OpContext`, the node's inputs as torch tensors (None for an omitted optional
input; trailing omitted inputs are not passed) and the node's attributes as keyword arguments, and returns
one tensor or a tuple of tensors (one per output). Attribute values arrive as plain Python: int, float,
str, lists of those, torch tensors for TENSOR attributes, IR `Graph`s for GRAPH attributes.

    @register("Relu", since=6, traits={"elementwise"})
    def relu(ctx, x):
        return torch.relu(x)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import UnsupportedOpError

if TYPE_CHECKING:
    import torch

    from ..ir import Graph, Node

OpFn = Callable[..., Any]


@dataclass(frozen=True)
class OpDef:
    """One op at one range of opset versions. `traits` are free-form tags passes read ("elementwise",
    "shape" (output depends only on shapes), "random", "control_flow"); `quantizable_inputs` lists the
    inputs an integer kernel can take quantized (Conv: (0, 1))."""

    op_type: str
    domain: str
    since: int
    fn: OpFn
    until: int | None = None  # first opset version this entry no longer covers
    traits: frozenset[str] = field(default_factory=frozenset)
    quantizable_inputs: tuple[int, ...] = ()


class OpContext:
    """What an op function may need beyond its inputs: the node (for errors), the opset version in force,
    and a way to run subgraphs (If/Loop/Scan) with the enclosing scope visible."""

    def __init__(
        self,
        node: Node,
        opset: int,
        run_subgraph: Callable[[Graph, list[torch.Tensor | None]], list[torch.Tensor]] | None = None,
    ) -> None:
        self.node = node
        self.opset = opset
        self._run_subgraph = run_subgraph

    def run_subgraph(self, graph: Graph, inputs: list[Any]) -> list[Any]:
        """Run a subgraph with `inputs` bound to its formal inputs; outer values come from the caller's scope."""
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
    """Decorator adding `fn` to the op table for opsets [since, until)."""

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

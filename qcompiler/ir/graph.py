"""The graph IR: `Value`, `Node`, `Graph`, `Function`, `Model`.

Nodes speak ONNX's operator vocabulary: (domain, op_type, inputs, outputs, attributes) with ONNX semantics,
so any ONNX model round-trips and an op nobody understands passes through untouched. Values know their
producer and their users; every edit goes through the methods here, which keep those lists true.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .tensor import Tensor
from .types import ValueType

if TYPE_CHECKING:
    from .quant import QuantType


class AttrType(enum.IntEnum):
    """Attribute kinds, numbered as ONNX's AttributeProto.AttributeType."""

    UNDEFINED = 0
    FLOAT = 1
    INT = 2
    STRING = 3
    TENSOR = 4
    GRAPH = 5
    SPARSE_TENSOR = 11
    TYPE_PROTO = 13
    FLOATS = 6
    INTS = 7
    STRINGS = 8
    TENSORS = 9
    GRAPHS = 10
    SPARSE_TENSORS = 12
    TYPE_PROTOS = 14


@dataclass(frozen=True)
class Opaque:
    """A piece of a model the IR keeps but does not interpret (sparse tensors, type protos, training info):
    the serialized protobuf bytes and what they were."""

    kind: str
    data: bytes


@dataclass
class Attr:
    """A node attribute. `ref_attr_name` is set inside functions for attributes bound at the call site."""

    name: str
    type: AttrType
    value: Any
    ref_attr_name: str | None = None
    doc_string: str = ""


class Value:
    """An SSA value: a graph input, an initializer (`const` set), or a node output."""

    __slots__ = (
        "name", "type", "quant", "producer", "index", "_uses", "const", "graph", "doc_string",
        "metadata_props", "emit_value_info", "meta",
    )

    def __init__(self, name: str, type: ValueType | None = None, *, const: Tensor | None = None) -> None:
        self.name = name
        self.type = type
        self.quant: QuantType | None = None
        self.producer: Node | None = None
        self.index: int | None = None  # output index in the producer
        self._uses: list[tuple[Node, int]] = []
        self.const = const
        self.graph: Graph | None = None  # the graph whose input/initializer this is (None for node outputs)
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        # Whether saving writes a value_info entry for it (keeps round trips exact; inferred types are not).
        self.emit_value_info = False
        self.meta: dict[str, Any] = {}  # analysis scratch (observer stats, sensitivity); never serialized

    @property
    def uses(self) -> tuple[tuple[Node, int], ...]:
        """(node, input index) pairs that read this value, subgraph nodes included."""
        return tuple(self._uses)

    @property
    def users(self) -> list[Node]:
        seen: dict[int, Node] = {}
        for n, _ in self._uses:
            seen.setdefault(id(n), n)
        return list(seen.values())

    @property
    def is_initializer(self) -> bool:
        return self.const is not None

    @property
    def is_graph_input(self) -> bool:
        return self.graph is not None and any(v is self for v in self.graph.inputs)

    def is_graph_output(self) -> bool:
        g = self.owning_graph()
        return g is not None and any(v is self for v in g.outputs)

    def owning_graph(self) -> Graph | None:
        return self.producer.graph if self.producer is not None else self.graph

    def replace_all_uses_with(self, new: Value, *, graph_outputs: bool = True) -> None:
        """Point every reader of this value at `new` (and the graph's outputs, unless told otherwise)."""
        if new is self:
            return
        for node, i in list(self._uses):
            node.set_input(i, new)
        g = self.owning_graph()
        if graph_outputs and g is not None:
            g.outputs = [new if v is self else v for v in g.outputs]
        if g is not None:
            # Subgraph bodies may return an outer value directly (no node reads it there): follow them too.
            for sub in g.all_graphs():
                if sub is not g and any(v is self for v in sub.outputs):
                    sub.outputs = [new if v is self else v for v in sub.outputs]

    @property
    def num_uses(self) -> int:
        return len(self._uses)

    def __repr__(self) -> str:
        t = f": {self.type}" if self.type is not None else ""
        return f"%{self.name}{t}"


class Node:
    """One operator application: ONNX semantics, inputs may be None for omitted optional inputs."""

    __slots__ = (
        "op_type", "domain", "name", "overload", "_inputs", "outputs", "attrs", "graph", "doc_string",
        "metadata_props", "meta", "opaque",
    )

    def __init__(
        self,
        op_type: str,
        inputs: Sequence[Value | None] = (),
        outputs: Sequence[Value] | int = 1,
        attrs: dict[str, Attr] | Iterable[Attr] | None = None,
        *,
        domain: str = "",
        name: str = "",
        overload: str = "",
        doc_string: str = "",
    ) -> None:
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self.overload = overload
        self.doc_string = doc_string
        self.metadata_props: dict[str, str] = {}
        self.meta: dict[str, Any] = {}
        self.opaque: list[Opaque] = []  # fields kept for the round trip but not read (device_configurations)
        self.graph: Graph | None = None
        if attrs is None:
            self.attrs: dict[str, Attr] = {}
        elif isinstance(attrs, dict):
            self.attrs = dict(attrs)
        else:
            self.attrs = {a.name: a for a in attrs}
        self._inputs: list[Value | None] = []
        for v in inputs:
            self._inputs.append(v)
            if v is not None:
                v._uses.append((self, len(self._inputs) - 1))
        if isinstance(outputs, int):
            outputs = [Value("") for _ in range(outputs)]
        self.outputs: list[Value] = []
        for i, v in enumerate(outputs):
            if v.producer is not None or v.graph is not None:
                raise ValueError(f"value %{v.name} already has a producer")
            v.producer, v.index = self, i
            self.outputs.append(v)

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain not in ("", "ai.onnx") else self.op_type

    def set_input(self, i: int, value: Value | None) -> None:
        old = self._inputs[i]
        if old is value:
            return
        if old is not None:
            old._uses.remove((self, i))
        self._inputs[i] = value
        if value is not None:
            value._uses.append((self, i))

    def append_input(self, value: Value | None) -> None:
        self._inputs.append(None)
        self.set_input(len(self._inputs) - 1, value)

    def detach_inputs(self) -> None:
        for i in range(len(self._inputs)):
            self.set_input(i, None)

    def attr(self, name: str, default: Any = None) -> Any:
        """The attribute's value, or `default` when absent."""
        a = self.attrs.get(name)
        return default if a is None else a.value

    def subgraphs(self) -> Iterator[Graph]:
        for a in self.attrs.values():
            if a.type is AttrType.GRAPH:
                yield a.value
            elif a.type is AttrType.GRAPHS:
                yield from a.value

    def label(self) -> str:
        """How errors and reports name this node: 'name (OpType)'."""
        return f"{self.name or '<unnamed>'} ({self.qualified_op})"

    def __repr__(self) -> str:
        return f"Node({self.label()})"


class Graph:
    """An ordered list of nodes over values, with inputs, outputs and initializers. Also used for the
    bodies of If/Loop/Scan (with `parent` set) and of model-local functions."""

    def __init__(
        self,
        inputs: Sequence[Value] = (),
        outputs: Sequence[Value] = (),
        nodes: Iterable[Node] = (),
        initializers: Iterable[Value] = (),
        *,
        name: str = "",
        doc_string: str = "",
    ) -> None:
        self.name = name
        self.doc_string = doc_string
        self.metadata_props: dict[str, str] = {}
        self.parent: Node | None = None  # the node whose attribute holds this graph
        self._name_cache: set[str] | None = None  # names taken in this tree (root only), see fresh_name
        self.opaque: list[Opaque] = []  # sparse initializers, quantization annotations: kept, not read
        self.inputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self.nodes: list[Node] = []
        for v in inputs:
            self.add_input(v)
        for v in initializers:
            self.add_initializer(v)
        for n in nodes:
            self.append(n)
        self.outputs: list[Value] = list(outputs)

    # -- building -------------------------------------------------------------------------------------
    def add_input(self, value: Value) -> Value:
        if value.producer is not None:
            raise ValueError(f"%{value.name} is produced by {value.producer.label()}; it cannot be an input")
        value.graph = self
        self.inputs.append(value)
        self._note_name(value.name)
        return value

    def add_initializer(self, value: Value) -> Value:
        """Register a constant value (its `const` must be set); a graph input of that name stays one value."""
        if value.const is None:
            raise ValueError(f"initializer %{value.name} has no tensor")
        if value.name in self.initializers and self.initializers[value.name] is not value:
            raise ValueError(f"graph {self.name!r} already has an initializer named {value.name!r}")
        value.graph = self
        self.initializers[value.name] = value
        self._note_name(value.name)
        return value

    def make_initializer(self, name: str, tensor: Tensor) -> Value:
        """A new initializer with a fresh name based on `name`."""
        from .types import TensorType

        v = Value(self.fresh_name(name), TensorType(tensor.dtype, tensor.shape), const=tensor)
        return self.add_initializer(v)

    def remove_initializer(self, value: Value) -> None:
        if value._uses:
            raise ValueError(f"initializer %{value.name} still has {len(value._uses)} use(s)")
        del self.initializers[value.name]
        if not value.is_graph_input:
            value.graph = None

    def append(self, node: Node, *, autoname: bool = True) -> Node:
        """Add a node at the end. Outputs without a name get a fresh one, unless `autoname` is False
        (a loader keeping ONNX's empty names for omitted optional outputs)."""
        self._adopt(node, autoname)
        self.nodes.append(node)
        return node

    def insert_before(self, anchor: Node, nodes: Node | Sequence[Node]) -> None:
        new = [nodes] if isinstance(nodes, Node) else list(nodes)
        i = self._index(anchor)
        for n in new:
            self._adopt(n)
        self.nodes[i:i] = new

    def insert_after(self, anchor: Node, nodes: Node | Sequence[Node]) -> None:
        new = [nodes] if isinstance(nodes, Node) else list(nodes)
        i = self._index(anchor) + 1
        for n in new:
            self._adopt(n)
        self.nodes[i:i] = new

    def erase(self, node: Node) -> None:
        """Remove a node whose outputs nobody reads (refuses otherwise, naming the reader)."""
        for v in node.outputs:
            if v._uses:
                user = v._uses[0][0]
                raise ValueError(f"cannot erase {node.label()}: %{v.name} is used by {user.label()}")
            if any(o is v for o in self.outputs):
                raise ValueError(f"cannot erase {node.label()}: %{v.name} is a graph output")
        self.nodes.pop(self._index(node))
        node.detach_inputs()
        node.graph = None

    def erase_many(self, nodes: Iterable[Node]) -> int:
        """Erase several nodes in one sweep (linear, where repeated `erase` would be quadratic). Refuses,
        naming the reader, if an output is a graph output or is read by a node that is not being erased
        (a reader inside the body of an erased If/Loop/Scan counts as erased). Returns how many."""
        doomed = {id(n): n for n in nodes}
        if not doomed:
            return 0
        outs = {id(v) for v in self.outputs}
        for n in doomed.values():
            if n.graph is not self:
                raise ValueError(f"{n.label()} is not in graph {self.name!r}")
            for v in n.outputs:
                if id(v) in outs:
                    raise ValueError(f"cannot erase {n.label()}: %{v.name} is a graph output")
                for user, _ in v._uses:
                    if id(self._holder(user)) not in doomed:
                        raise ValueError(f"cannot erase {n.label()}: %{v.name} is used by {user.label()}")
        for n in doomed.values():
            n.detach_inputs()
            for sub in n.subgraphs():  # readers inside an erased body leave the use lists of outer values
                for inner in sub.all_nodes():
                    inner.detach_inputs()
            n.graph = None
        self.nodes = [n for n in self.nodes if id(n) not in doomed]
        return len(doomed)

    def _holder(self, node: Node) -> Node:
        """The node of this graph that holds `node`: itself, or the If/Loop/Scan whose body contains it."""
        while node.graph is not None and node.graph is not self and node.graph.parent is not None:
            node = node.graph.parent
        return node

    def _index(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise ValueError(f"{node.label()} is not in graph {self.name!r}")

    def _adopt(self, node: Node, autoname: bool = True) -> None:
        if node.graph is not None:
            raise ValueError(f"{node.label()} already belongs to graph {node.graph.name!r}")
        node.graph = self
        for v in node.outputs:
            if autoname and not v.name:
                v.name = self.fresh_name(f"{node.name or node.op_type}_out{v.index}")
            else:
                self._note_name(v.name)
        for g in node.subgraphs():
            g.parent = node
            g._name_cache = None  # no longer a root: names are tracked by the root above
            cache = self.root()._name_cache
            if cache is not None:
                cache |= g._names()

    # -- naming ---------------------------------------------------------------------------------------
    def root(self) -> Graph:
        g = self
        while g.parent is not None and g.parent.graph is not None:
            g = g.parent.graph
        return g

    def fresh_name(self, base: str) -> str:
        """A value name not used anywhere in this graph tree (ONNX names are unique across subgraphs).

        The root keeps the set of names taken, built once and kept up to date by the methods that add values
        (add_input, add_initializer, append/insert), so many calls stay cheap. A pass that renames a value
        by assignment calls `forget_names()`."""
        root = self.root()
        taken = root._name_cache
        if taken is None:
            taken = root._name_cache = root._names()
        cand = base
        i = 0
        while not cand or cand in taken:
            i += 1
            cand = f"{base}_{i}"
        taken.add(cand)
        return cand

    def forget_names(self) -> None:
        """Drop the cached set of taken names (after renaming values by assignment)."""
        self.root()._name_cache = None

    def _note_name(self, name: str) -> None:
        cache = self.root()._name_cache
        if cache is not None and name:
            cache.add(name)

    def _names(self) -> set[str]:
        names: set[str] = {""}
        for g in self.all_graphs():
            names.update(v.name for v in g.inputs)
            names.update(g.initializers)
            for n in g.nodes:
                names.update(v.name for v in n.outputs)
        return names

    # -- walking --------------------------------------------------------------------------------------
    def all_graphs(self) -> Iterator[Graph]:
        """This graph and every subgraph below it, depth first."""
        yield self
        for n in self.nodes:
            for g in n.subgraphs():
                yield from g.all_graphs()

    def all_nodes(self) -> Iterator[Node]:
        for g in self.all_graphs():
            yield from g.nodes

    def values(self) -> Iterator[Value]:
        """Inputs, initializers and node outputs of this graph (not of subgraphs)."""
        seen: set[int] = set()
        for v in itertools.chain(self.inputs, self.initializers.values()):
            if id(v) not in seen:
                seen.add(id(v))
                yield v
        for n in self.nodes:
            yield from n.outputs

    def find_value(self, name: str) -> Value | None:
        for v in self.values():
            if v.name == name:
                return v
        return None

    def find_node(self, name: str) -> Node | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None

    def toposort(self) -> None:
        """Reorder nodes so producers come first (stable: keeps the given order where it is free).
        Values read by subgraph nodes count as inputs of the node owning the subgraph."""
        index = {id(n): i for i, n in enumerate(self.nodes)}
        deps: dict[int, set[int]] = {}
        for n in self.nodes:
            d: set[int] = set()
            for v in _node_reads(n):
                p = v.producer  # producers in outer graphs are not in `index`: not ordered here
                if p is not None and id(p) in index:
                    d.add(id(p))
            deps[id(n)] = d
        order: list[Node] = []
        done: set[int] = set()

        users: dict[int, list[Node]] = {id(n): [] for n in self.nodes}
        pending = {id(n): len(deps[id(n)]) for n in self.nodes}
        for n in self.nodes:
            for d in deps[id(n)]:
                users[d].append(n)
        heap = [(index[id(n)], id(n), n) for n in self.nodes if pending[id(n)] == 0]
        heapq.heapify(heap)
        while heap:
            _, nid, n = heapq.heappop(heap)
            order.append(n)
            done.add(nid)
            for u in users[nid]:
                pending[id(u)] -= 1
                if pending[id(u)] == 0:
                    heapq.heappush(heap, (index[id(u)], id(u), u))
        if len(order) != len(self.nodes):
            from ..errors import GraphError

            stuck = [n for n in self.nodes if id(n) not in done]
            raise GraphError(f"graph {self.name!r} has a cycle through {stuck[0].label()}")
        self.nodes = order

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes)"

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)


def _node_reads(node: Node) -> Iterator[Value]:
    """Values a node reads: its inputs and, for If/Loop/Scan, what its subgraphs capture from outside."""
    for v in node.inputs:
        if v is not None:
            yield v
    for g in node.subgraphs():
        yield from captured_values(g)


def captured_values(graph: Graph) -> list[Value]:
    """Values used inside `graph` (or its subgraphs) that are defined outside it."""
    inner: set[int] = set()
    for g in graph.all_graphs():
        inner.update(id(v) for v in g.values())
    out: dict[int, Value] = {}
    for g in graph.all_graphs():
        for n in g.nodes:
            for v in n.inputs:
                if v is not None and id(v) not in inner:
                    out.setdefault(id(v), v)
        for v in g.outputs:
            if id(v) not in inner:
                out.setdefault(id(v), v)
    return list(out.values())


@dataclass
class Function:
    """A model-local function (FunctionProto): a body graph whose inputs/outputs are the formal parameters."""

    domain: str
    name: str
    graph: Graph
    attributes: list[str] = field(default_factory=list)  # formal attribute names without defaults
    attribute_defaults: dict[str, Attr] = field(default_factory=dict)
    opset_imports: dict[str, int] = field(default_factory=dict)
    overload: str = ""
    doc_string: str = ""
    metadata_props: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.domain, self.name, self.overload)


@dataclass
class Model:
    """A graph with what ONNX keeps around it: opsets, functions, producer, metadata."""

    graph: Graph
    opset_imports: dict[str, int] = field(default_factory=lambda: {"": 18})
    ir_version: int = 10
    producer_name: str = "qcompiler"
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata_props: dict[str, str] = field(default_factory=dict)
    functions: dict[tuple[str, str, str], Function] = field(default_factory=dict)
    opaque: list[Opaque] = field(default_factory=list)  # training_info, configuration: kept, not read

    def opset(self, domain: str = "") -> int | None:
        """The imported version of an op domain ('' and 'ai.onnx' are the same)."""
        if domain == "ai.onnx":
            domain = ""
        v = self.opset_imports.get(domain)
        if v is None and domain == "":
            v = self.opset_imports.get("ai.onnx")
        return v

    def function(self, domain: str, name: str, overload: str = "") -> Function | None:
        return self.functions.get((domain, name, overload))

"""Structural checks of the IR, run after every pass: a broken graph is caught at the pass that broke it.

Checks: each input is defined before its use (inputs, initializers, earlier outputs, enclosing graphs);
value names are unique across the graph tree; use lists agree with node inputs; graph outputs exist;
quant types point at defined float scales and integer zero points. Op-signature type checks live with
the op knowledge (`qcompiler.frontends.onnx_schema`) and are passed in as extra rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import GraphError
from .graph import Graph, Model, Node, Value
from .types import TensorType

Rule = Callable[[Node], str | None]  # returns a reason when the node is wrong


def verify(target: Graph | Model, *, rules: Iterable[Rule] = (), where: str = "") -> None:
    """Raise GraphError naming the first problem (and `where`, e.g. the pass that ran)."""
    graph = target.graph if isinstance(target, Model) else target
    problems: list[str] = []
    names: dict[str, Value] = {}
    rule_list = list(rules)
    _check_graph(graph, set(), names, problems, rule_list)
    if isinstance(target, Model):
        for fn in target.functions.values():
            _check_graph(fn.graph, set(), {}, problems, rule_list)
    if problems:
        head = f"after {where}: " if where else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise GraphError(head + problems[0] + more)


def _check_graph(
    graph: Graph, outer: set[int], names: dict[str, Value], problems: list[str], rules: list[Rule]
) -> None:
    defined = set(outer)
    gname = graph.name or "<graph>"

    def define(v: Value, what: str) -> None:
        if v.name and v.name in names and names[v.name] is not v:
            problems.append(f"graph {gname!r}: value name {v.name!r} is defined twice ({what})")
        names[v.name] = v
        defined.add(id(v))

    for v in graph.inputs:
        define(v, "graph input")
    for v in graph.initializers.values():
        if v.const is None:
            problems.append(f"graph {gname!r}: initializer %{v.name} has no tensor")
        if not any(i is v for i in graph.inputs):
            define(v, "initializer")
    for node in graph.nodes:
        if node.graph is not graph:
            problems.append(f"{node.label()} is listed in graph {gname!r} but belongs to another")
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in defined:
                problems.append(f"{node.label()} input {i} %{v.name} is used before it is defined")
            if (node, i) not in v._uses:
                problems.append(f"{node.label()} input {i} %{v.name}: the value's use list misses it")
        for sub in node.subgraphs():
            if sub.parent is not node:
                problems.append(f"{node.label()}: subgraph {sub.name!r} does not point back at its node")
            _check_graph(sub, defined, names, problems, rules)
        for j, v in enumerate(node.outputs):
            if v.producer is not node or v.index != j:
                problems.append(f"{node.label()} output {j} %{v.name} does not point back at its producer")
            define(v, f"output of {node.label()}")
        for rule in rules:
            reason = rule(node)
            if reason:
                problems.append(f"{node.label()}: {reason}")
    for v in graph.outputs:
        if id(v) not in defined:
            problems.append(f"graph {gname!r} output %{v.name} is not defined")
    for v in graph.values():
        for user, i in v._uses:
            if i >= len(user._inputs) or user._inputs[i] is not v:
                problems.append(f"%{v.name}: use list names {user.label()} input {i}, which reads something else")
        if v.quant is not None:
            reason = _check_quant(v)
            if reason:
                problems.append(f"%{v.name}: {reason}")


def _check_quant(v: Value) -> str | None:
    q = v.quant
    assert q is not None
    for role, ref in (("scale", q.scale), ("zero point", q.zero_point)):
        if ref is None:
            continue
        if ref.producer is None and ref.graph is None:
            return f"quant {role} %{ref.name} is not in any graph"
        t = ref.type
        if role == "scale" and isinstance(t, TensorType) and not t.dtype.is_float:
            return f"quant scale %{ref.name} has element type {t.dtype.short}, not a float"
    axis = getattr(q.granularity, "axis", None)
    if axis is not None and isinstance(v.type, TensorType) and v.type.rank is not None:
        r = v.type.rank
        if not -r <= axis < r:
            return f"quant granularity axis {axis} is out of range for rank {r}"
    return None

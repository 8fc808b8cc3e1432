"""Graph analyses over a networkx view of the IR (the IR stays the storage; networkx serves the algorithms).

`to_networkx(graph)` gives a DiGraph whose nodes are IR `Node`s and whose edges carry the `Value` that flows
(and its input index); values read by subgraphs count as edges into the node owning the subgraph.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from .graph import Graph, Node, _node_reads


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    """Nodes -> nodes; one edge per value read (key = value name)."""
    g = nx.MultiDiGraph()
    for n in graph.nodes:
        g.add_node(n)
    in_graph = {id(n) for n in graph.nodes}
    for n in graph.nodes:
        for v in _node_reads(n):
            p = v.producer
            if p is not None and id(p) in in_graph:
                g.add_edge(p, n, key=v.name, value=v)
    return g


def ancestors(graph: Graph, node: Node) -> set[Node]:
    """Nodes whose outputs `node` depends on (transitively)."""
    return nx.ancestors(to_networkx(graph), node)


def dominators(graph: Graph) -> dict[Node, Node]:
    """Immediate dominator of each node reachable from a virtual entry feeding every source node."""
    g = nx.DiGraph(to_networkx(graph))
    entry = "__entry__"
    g.add_node(entry)
    for n in graph.nodes:
        if g.in_degree(n) == 0:
            g.add_edge(entry, n)
    idom = nx.immediate_dominators(g, entry)
    return {k: v for k, v in idom.items() if k != entry and v != entry}


def match_chains(graph: Graph, ops: list[str], *, single_use: bool = True) -> list[list[Node]]:
    """Chains of nodes with the given op types, each output feeding the next (e.g. ["Conv", "BatchNormalization"]).
    With `single_use`, inner outputs must have exactly one reader (fusing them loses nothing)."""
    found = []
    for n in graph.nodes:
        if n.op_type != ops[0]:
            continue
        chain = [n]
        for op in ops[1:]:
            out = chain[-1].outputs[0]
            users = out.users
            shared = len(out.uses) != 1 or out.is_graph_output()
            if len(users) != 1 or users[0].op_type != op or (single_use and shared):
                break
            chain.append(users[0])
        if len(chain) == len(ops):
            found.append(chain)
    return found


def regions(graph: Graph, keep: Callable[[Node], bool]) -> list[list[Node]]:
    """Maximal weakly connected groups of nodes for which `keep` holds (e.g. runs of quantizable ops)."""
    g = to_networkx(graph)
    sub = g.subgraph([n for n in graph.nodes if keep(n)])
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    comps = [sorted(c, key=lambda n: order[id(n)]) for c in nx.weakly_connected_components(sub)]
    return sorted(comps, key=lambda c: order[id(c[0])])

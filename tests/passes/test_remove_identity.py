"""remove_identity: structure (readers rewired, graph outputs keep their names, what stays and why) and
numerics (removing a copy changes nothing: outputs are bit-identical)."""

from __future__ import annotations

import numpy as np

import qcompiler
from qcompiler.ir import format_graph, parse_graph

from .canon_util import decided, ops, run_passes

RNG = np.random.default_rng(1)

GRAPH = """graph g (%x: f32[2,3]) -> (%out, %x_copy, %d) {
  init %t: bool[] = tensor<bool[]>false
  init %r: f32[] = tensor<f32[]>0.5
  %a: f32[2,3] = Identity(%x) @id_in
  %b: f32[2,3] = Relu(%a) @relu
  %c: f32[2,3] = Identity(%b) @id_mid
  %c2: f32[2,3] = Identity(%c) @id_chain
  %d: f32[2,3] = Dropout(%c2, %r, %t) @drop
  %e: f32[2,3] = Neg(%d) @neg
  %out: f32[2,3] = Identity(%e) @id_out
  %x_copy: f32[2,3] = Identity(%x) @id_graph_input
}"""


def test_identities_go_and_graph_outputs_keep_their_names() -> None:
    m, ctx = run_passes(parse_graph(GRAPH), "remove_identity")
    # %e is renamed %out (the graph output); %x_copy must stay a node: %x is a graph input and ONNX needs a
    # node to give one value a second name. %d is a graph output read by Neg: Dropout's input takes its name.
    # Dropout's ratio and training_mode initializers had no other reader: they go with it.
    assert format_graph(m.graph) == """graph g (%x: f32[2,3]) -> (%out, %x_copy, %d) {
  %d: f32[2,3] = Relu(%x) @relu
  %out: f32[2,3] = Neg(%d) @neg
  %x_copy: f32[2,3] = Identity(%x) @id_graph_input
}"""
    assert decided(ctx, "kept") == {
        "id_graph_input (Identity)": "its output %x_copy is a graph output and its input %x is a graph input, "
                                     "whose name cannot change"}
    removed = decided(ctx, "removed")
    assert removed["id_in (Identity)"] == "readers of %a now read %x"
    assert removed["drop (Dropout)"] == "%b renamed to the graph output %d"
    assert removed["id_out (Identity)"] == "%e renamed to the graph output %out"
    assert len(removed) == 5


def test_outputs_are_identical_after_removal() -> None:
    g = parse_graph(GRAPH)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    want = qcompiler.run(g, {"x": x})
    m, _ = run_passes(parse_graph(GRAPH), "remove_identity")
    got = qcompiler.run(m, {"x": x})
    assert list(got) == list(want) == ["out", "x_copy", "d"]
    for k in want:  # exact: nothing was computed differently, only copies dropped
        assert np.array_equal(got[k], want[k]), k


def test_dropout_that_drops_or_whose_mask_is_read_stays() -> None:
    g = parse_graph("""graph g (%x: f32[4], %train: bool[]) -> (%y, %mask) {
  init %yes: bool[] = tensor<bool[]>true
  %a: f32[4] = Dropout(%x, _, %yes) @training
  %b: f32[4] = Dropout(%a, _, %train) @fed_mode
  %y: f32[4], %mask: bool[4] = Dropout(%b) @mask_read
}""")
    m, ctx = run_passes(g, "remove_identity")
    assert ops(m) == ["Dropout", "Dropout", "Dropout"]
    assert decided(ctx, "kept") == {
        "training (Dropout)": "training_mode is true: it drops values",
        "fed_mode (Dropout)": "training_mode %train is not a constant",
        "mask_read (Dropout)": "its mask output %mask is read",
    }

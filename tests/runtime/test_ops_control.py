"""If / Loop / Scan / SequenceMap against ONNX Runtime (bit for bit: the bodies use exact ops only, or the
same float ops in the same order as ORT, one element at a time)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper

from .harness import check_model, finish_model

RNG = np.random.default_rng(3)
vi = helper.make_tensor_value_info


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def model(
    nodes: list, inputs: list, outputs: list, inits: list | None = None, opset: int = 21
) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "main", inputs, outputs, inits or [])
    return finish_model(g, [helper.make_opsetid("", opset)])


def _branch(name: str, op: str, out: str) -> onnx.GraphProto:
    # reads `x` and `y` from the enclosing graph: outer-scope capture
    return helper.make_graph([helper.make_node(op, ["x", "y"], [out])], name, [], [vi(out, TP.FLOAT, None)])


@pytest.mark.parametrize("flag", [True, False])
def test_if_reads_outer_scope(flag: bool) -> None:
    nodes = [
        helper.make_node("Add", ["x", "y"], ["s"]),
        helper.make_node(
            "If",
            ["c"],
            ["r"],
            then_branch=_branch("then", "Mul", "t"),
            else_branch=_branch("else", "Sub", "e"),
        ),
        helper.make_node("Add", ["r", "s"], ["out"]),
    ]
    m = model(
        nodes,
        [vi("c", TP.BOOL, []), vi("x", TP.FLOAT, [3]), vi("y", TP.FLOAT, [3])],
        [vi("out", TP.FLOAT, [3])],
    )
    check_model(m, {"c": np.array(flag), "x": f32(3), "y": f32(3)})


def test_nested_if_inside_loop_captures_two_levels_up() -> None:
    # Loop body contains an If whose branches read `w` from the main graph (two scopes up)
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["acc_in", "w"], ["t"])], "then", [], [vi("t", TP.FLOAT, None)]
    )
    else_g = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "w"], ["e"])], "else", [], [vi("e", TP.FLOAT, None)]
    )
    body = helper.make_graph(
        [
            helper.make_node("Mod", ["i", "two"], ["r"]),
            helper.make_node("Equal", ["r", "zero"], ["even"]),
            helper.make_node("If", ["even"], ["acc_out"], then_branch=then_g, else_branch=else_g),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [vi("i", TP.INT64, []), vi("cond_in", TP.BOOL, []), vi("acc_in", TP.FLOAT, [2])],
        [vi("cond_out", TP.BOOL, []), vi("acc_out", TP.FLOAT, [2])],
        [helper.make_tensor("two", TP.INT64, [], [2]), helper.make_tensor("zero", TP.INT64, [], [0])],
    )
    nodes = [helper.make_node("Loop", ["n", "", "a0"], ["a"], body=body)]
    m = model(
        nodes,
        [vi("n", TP.INT64, []), vi("a0", TP.FLOAT, [2]), vi("w", TP.FLOAT, [2])],
        [vi("a", TP.FLOAT, [2])],
    )
    check_model(m, {"n": np.array(5, np.int64), "a0": f32(2), "w": np.array([1.5, -0.5], np.float32)})


def _loop_body(with_cond: bool) -> onnx.GraphProto:
    """carried: acc (+= x * i), count (+1); scan outputs: acc each step and i; stops when acc sum > limit."""
    nodes = [
        helper.make_node("Cast", ["i"], ["fi"], to=TP.FLOAT),
        helper.make_node("Mul", ["x", "fi"], ["xi"]),
        helper.make_node("Add", ["acc_in", "xi"], ["acc_out"]),
        helper.make_node("Add", ["cnt_in", "one"], ["cnt_out"]),
        helper.make_node("Identity", ["acc_out"], ["scan_acc"]),
        helper.make_node("Identity", ["i"], ["scan_i"]),
    ]
    if with_cond:
        nodes += [
            helper.make_node("ReduceSum", ["acc_out"], ["tot"], keepdims=0),
            helper.make_node("Less", ["tot", "limit"], ["cond_out"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    return helper.make_graph(
        nodes,
        "body",
        [
            vi("i", TP.INT64, []),
            vi("cond_in", TP.BOOL, []),
            vi("acc_in", TP.FLOAT, [3]),
            vi("cnt_in", TP.INT64, []),
        ],
        [
            vi("cond_out", TP.BOOL, []),
            vi("acc_out", TP.FLOAT, [3]),
            vi("cnt_out", TP.INT64, []),
            vi("scan_acc", TP.FLOAT, [3]),
            vi("scan_i", TP.INT64, []),
        ],
        [helper.make_tensor("one", TP.INT64, [], [1])],
    )


@pytest.mark.parametrize(
    "trip,cond,with_cond",
    [
        (4, None, False),  # trip count only
        (None, True, True),  # condition only (stops when the sum passes the limit)
        (10, True, True),  # both: whichever ends first
        (0, None, False),  # zero iterations: empty scan outputs
        (6, False, True),  # initial condition false: zero iterations
    ],
)
def test_loop(trip: int | None, cond: bool | None, with_cond: bool) -> None:
    ins = ["M" if trip is not None else "", "C" if cond is not None else "", "acc0", "cnt0"]
    nodes = [helper.make_node("Loop", ins, ["acc", "cnt", "accs", "iters"], body=_loop_body(with_cond))]
    inputs = [
        vi("acc0", TP.FLOAT, [3]),
        vi("cnt0", TP.INT64, []),
        vi("x", TP.FLOAT, [3]),
        vi("limit", TP.FLOAT, []),
    ]
    feeds = {
        "acc0": f32(3),
        "cnt0": np.array(0, np.int64),
        "x": np.abs(f32(3)) + 0.5,
        "limit": np.array(20.0, np.float32),
    }
    if trip is not None:
        inputs.append(vi("M", TP.INT64, []))
        feeds["M"] = np.array(trip, np.int64)
    if cond is not None:
        inputs.append(vi("C", TP.BOOL, []))
        feeds["C"] = np.array(cond)
    outs = [
        vi("acc", TP.FLOAT, [3]),
        vi("cnt", TP.INT64, []),
        vi("accs", TP.FLOAT, None),
        vi("iters", TP.INT64, None),
    ]
    check_model(model(nodes, inputs, outs), feeds)


def test_loop_carries_a_sequence() -> None:
    body = helper.make_graph(
        [
            helper.make_node("SequenceInsert", ["seq_in", "i"], ["seq_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            vi("i", TP.INT64, []),
            vi("cond_in", TP.BOOL, []),
            helper.make_tensor_sequence_value_info("seq_in", TP.INT64, None),
        ],
        [vi("cond_out", TP.BOOL, []), helper.make_tensor_sequence_value_info("seq_out", TP.INT64, None)],
    )
    nodes = [
        helper.make_node("SequenceEmpty", [], ["s0"], dtype=TP.INT64),
        helper.make_node("Loop", ["n", "", "s0"], ["s"], body=body),
        helper.make_node("ConcatFromSequence", ["s"], ["out"], axis=0, new_axis=1),
    ]
    check_model(
        model(nodes, [vi("n", TP.INT64, [])], [vi("out", TP.INT64, None)]), {"n": np.array(4, np.int64)}
    )


def _scan_body() -> onnx.GraphProto:
    """state: running sum (+= row) and running max; per step outputs: sum so far and row * 2."""
    return helper.make_graph(
        [
            helper.make_node("Add", ["sum_in", "row"], ["sum_out"]),
            helper.make_node("Max", ["mx_in", "row"], ["mx_out"]),
            helper.make_node("Identity", ["sum_out"], ["y_sum"]),
            helper.make_node("Add", ["row", "col"], ["y_mix"]),
        ],
        "scan_body",
        [
            vi("sum_in", TP.FLOAT, [4]),
            vi("mx_in", TP.FLOAT, [4]),
            vi("row", TP.FLOAT, [4]),
            vi("col", TP.FLOAT, [4]),
        ],
        [
            vi("sum_out", TP.FLOAT, [4]),
            vi("mx_out", TP.FLOAT, [4]),
            vi("y_sum", TP.FLOAT, [4]),
            vi("y_mix", TP.FLOAT, [4]),
        ],
    )


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"scan_input_axes": [0, 1]},
        {"scan_input_directions": [1, 0], "scan_input_axes": [0, -1]},
        {"scan_output_axes": [1, 0], "scan_output_directions": [0, 1], "scan_input_axes": [0, 1]},
        {"scan_output_axes": [-1, 0], "scan_input_axes": [0, 1]},
    ],
)
def test_scan(attrs: dict) -> None:
    a = f32(5, 4)
    b = f32(5, 4) if attrs.get("scan_input_axes", [0, 0])[1] == 0 else f32(4, 5)
    nodes = [
        helper.make_node(
            "Scan",
            ["s0", "m0", "a", "b"],
            ["s", "m", "ys", "ym"],
            body=_scan_body(),
            num_scan_inputs=2,
            **attrs,
        )
    ]
    m = model(
        nodes,
        [
            vi("s0", TP.FLOAT, [4]),
            vi("m0", TP.FLOAT, [4]),
            vi("a", TP.FLOAT, list(a.shape)),
            vi("b", TP.FLOAT, list(b.shape)),
        ],
        [vi(n, TP.FLOAT, None) for n in ("s", "m", "ys", "ym")],
    )
    check_model(m, {"s0": np.zeros(4, np.float32), "m0": np.full(4, -np.inf, np.float32), "a": a, "b": b})


def test_scan_reads_outer_scope() -> None:
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["row", "w"], ["p"]),
            helper.make_node("Add", ["st_in", "p"], ["st_out"]),
            helper.make_node("Identity", ["p"], ["y"]),
        ],
        "body",
        [vi("st_in", TP.FLOAT, [3]), vi("row", TP.FLOAT, [3])],
        [vi("st_out", TP.FLOAT, [3]), vi("y", TP.FLOAT, [3])],
    )
    nodes = [helper.make_node("Scan", ["s0", "x"], ["s", "ys"], body=body, num_scan_inputs=1)]
    m = model(
        nodes,
        [vi("s0", TP.FLOAT, [3]), vi("x", TP.FLOAT, [6, 3]), vi("w", TP.FLOAT, [3])],
        [vi("s", TP.FLOAT, None), vi("ys", TP.FLOAT, None)],
    )
    check_model(m, {"s0": f32(3), "x": f32(6, 3), "w": f32(3)})


def test_sequence_map() -> None:
    body = helper.make_graph(
        [helper.make_node("Mul", ["e", "kk"], ["o1"]), helper.make_node("Shape", ["e"], ["o2"])],
        "map_body",
        [vi("e", TP.FLOAT, None), vi("kk", TP.FLOAT, None)],
        [vi("o1", TP.FLOAT, None), vi("o2", TP.INT64, None)],
    )
    nodes = [
        helper.make_node("SplitToSequence", ["x", "sizes"], ["seq"], axis=0),
        helper.make_node("SequenceMap", ["seq", "k"], ["m1", "m2"], body=body),
        helper.make_node("ConcatFromSequence", ["m1"], ["y1"], axis=0),
        helper.make_node("ConcatFromSequence", ["m2"], ["y2"], axis=0, new_axis=1),
    ]
    m = model(
        nodes,
        [vi("x", TP.FLOAT, [6, 2]), vi("k", TP.FLOAT, [2])],
        [vi("y1", TP.FLOAT, None), vi("y2", TP.INT64, None)],
        [helper.make_tensor("sizes", TP.INT64, [3], [1, 2, 3])],
        opset=18,
    )
    check_model(m, {"x": f32(6, 2), "k": f32(2)})

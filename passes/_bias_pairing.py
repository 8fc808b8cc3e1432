"""Whether a MatMul's bias Add, as `fuse_matmul_add` paired them (`matmul.meta["bias"]`), is still there to fold.

Passes between the pairing and the lowering may have moved the Add elsewhere (`fuse_transformer` folds biases
into BiasGelu / SkipLayerNormalization): the pairing is trusted only after it is checked again here.
"""

from __future__ import annotations

import numpy as np

from qcompiler.ir import DType, Graph, Node, TensorType

from ._rewrite import is_standard


def paired_bias(graph: Graph, mm: Node, n: int) -> tuple[Node, np.ndarray] | None:
    """The bias Add paired with MatMul `mm` and its values as a float32 vector of `n` (the MatMul's output
    columns), when the pairing still holds: the Add is in `graph`, is the only reader of the MatMul output
    (which is no graph output), and adds a constant float32 initializer (not a graph input) of n values
    along the last axis whose rank is no more than the output's, so it does not broadcast the output up.
    Else None."""
    add = mm.meta.get("bias")
    y = mm.outputs[0]
    if not isinstance(add, Node) or add.graph is not graph or not is_standard(add, "Add") or len(add.inputs) != 2:
        return None
    if y.is_graph_output() or len(y.uses) != 1 or y.uses[0][0] is not add:
        return None
    b = add.inputs[1 - y.uses[0][1]]
    if b is None or b.const is None or b.is_graph_input or b.const.dtype is not DType.FLOAT:
        return None
    shape = b.const.shape
    rank = y.type.rank if isinstance(y.type, TensorType) else None
    if rank is None or len(shape) > rank or int(np.prod(shape)) != n or (shape and shape[-1] != n):
        return None
    return add, np.asarray(b.const.numpy(), np.float32).reshape(n)

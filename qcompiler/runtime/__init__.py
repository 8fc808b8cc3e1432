"""The torch executor of the IR: one op table, hooks to observe or replace values.

ex = qcompiler.runtime.Executor(model)   # plan once
ex.run({"x": x})                         # numpy in/out; ex.run_torch(...) is torch in/out, differentiable
"""

from .dtypes import ir_dtype, to_numpy, to_torch, torch_dtype
from .executor import Executor, run
from .hooks import HookHandle
from .registry import OpContext, OpDef, all_ops, lookup, register

__all__ = [
    "Executor",
    "HookHandle",
    "OpContext",
    "OpDef",
    "all_ops",
    "ir_dtype",
    "lookup",
    "register",
    "run",
    "to_numpy",
    "to_torch",
    "torch_dtype",
]

"""The torch executor of the IR: one op table, hooks to observe or replace values."""

from .executor import run, to_numpy, to_torch
from .registry import OpContext, OpDef, all_ops, lookup, register

__all__ = ["OpContext", "OpDef", "all_ops", "lookup", "register", "run", "to_numpy", "to_torch"]

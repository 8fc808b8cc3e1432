"""The graph IR (numpy only): values, nodes, graphs, types, quant types, text form, verifier."""

from .graph import Attr, AttrType, Function, Graph, Model, Node, Opaque, Value, captured_values
from .parser import ParseError, parse_graph, parse_model
from .printer import format_graph, format_model, format_node
from .quant import QuantType
from .tensor import ExternalRef, Tensor
from .types import DType, MapType, OptionalType, SequenceType, SparseTensorType, TensorType, ValueType
from .verifier import verify

__all__ = [
    "Attr", "AttrType", "DType", "ExternalRef", "Function", "Graph", "MapType", "Model", "Node", "Opaque",
    "OptionalType", "ParseError", "QuantType", "SequenceType", "SparseTensorType", "Tensor", "TensorType",
    "Value", "ValueType", "captured_values", "format_graph", "format_model", "format_node", "parse_graph",
    "parse_model", "verify",
]

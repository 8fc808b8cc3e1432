"""Runs an IR graph with torch kernels from the op table.

`Executor(model)` compiles the graph once into a plan: every value gets a slot in a flat list, every node
becomes a step (op function, its `OpContext`, converted attributes, input and output slots, the slots to
free after it). A run is then a short loop (as JAX's `eval_jaxpr`): gather the inputs, call, store the
outputs, fire hooks if any, drop what no later step reads, so memory stays bounded by the live set.

    ex = Executor(model)
    outs = ex.run({"x": x})                          # numpy in/out (under torch.no_grad)
    outs = ex.run_torch({"x": torch_x})              # torch in/out, differentiable
    with ex.add_hook(lambda v: v.producer is not None and v.producer.op_type == "MatMul", observer):
        ex.run(feeds)                                # observer(value, tensor) sees every MatMul output
    params = ex.parameters(["fc.weight"])            # nn.Parameters the graph reads live on every run

If/Loop/Scan bodies are planned once and run with the enclosing scope visible; a model-local function is
planned once per call site, with the call's attributes bound. An Executor describes the graph as it was
when built: rebuild it after editing the graph. It is not thread-safe while hooks are being added.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any

import numpy as np
import torch

from ..errors import UnsupportedOpError
from ..ir import Attr, AttrType, DType, Function, Graph, Model, Node, Tensor, Value, captured_values
from ..ir.types import OptionalType, SequenceType, TensorType
from .dtypes import _ML_DTYPES, ir_dtype, to_numpy, to_torch, torch_dtype
from .hooks import HookFn, HookHandle, HookTarget, fire
from .registry import OpContext, _dtype_of, lookup

DEFAULT_OPSETS = {"": 21, "com.microsoft": 1}


class _Step:
    """One node of a plan."""

    __slots__ = (
        "node",
        "fn",
        "ctx",
        "ins",
        "nin",
        "get",
        "outs",
        "single",
        "attrs",
        "free",
        "hooks",
        "subplans",
    )

    def __init__(self, node: Node) -> None:
        self.node = node
        self.hooks: list[tuple[int, Value, list[HookFn]]] | None = None
        self.subplans: dict[int, _Plan] | None = None


class _Plan:
    """A graph compiled for execution."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.slot_of: dict[int, int] = {}  # id(Value) -> slot; slot 0 always holds None (omitted inputs)
        self.n_slots = 1
        self.inputs: list[tuple[int, Value]] = []  # formal inputs, in order
        self.consts: list[tuple[int, Value]] = []  # initializers
        self.const_bind: list[tuple[int, torch.Tensor]] = []
        self.captures: list[tuple[int, int]] = []  # (slot in the enclosing env, slot here)
        self.steps: list[_Step] = []
        self.outputs: list[int] = []
        self.input_hooks: list[tuple[int, Value, list[HookFn]]] | None = None
        self.hookable = True  # False for function bodies

    def slot(self, v: Value) -> int:
        s = self.slot_of.get(id(v))
        if s is None:
            s = self.slot_of[id(v)] = self.n_slots
            self.n_slots += 1
        return s


class _FunctionCall:
    """The op function of a node that calls a model-local function: runs the body's plan."""

    def __init__(self, executor: Executor, plan: _Plan, n_outputs: int) -> None:
        self.executor = executor
        self.plan = plan
        self.n_outputs = n_outputs

    def __call__(self, ctx: OpContext, *inputs: Any) -> Any:
        args = list(inputs) + [None] * (len(self.plan.inputs) - len(inputs))
        outs = self.executor._exec(self.plan, args, None)
        return tuple(outs) if self.n_outputs != 1 else outs[0]


class _Unsupported:
    """Stands in for a missing op when the executor is not strict: raises when (if ever) reached."""

    def __init__(self, error: UnsupportedOpError) -> None:
        self.error = error

    def __call__(self, ctx: OpContext, *args: Any, **kw: Any) -> Any:
        raise self.error


class Executor:
    """A compiled, reusable runner of one model (see the module doc).

    `strict=True` raises `UnsupportedOpError` at construction when any node (subgraphs and called functions
    included) has no op-table entry; `strict=False` defers the error to the moment such a node runs.
    `opsets` overrides the model's opset imports (needed when running a bare `Graph`)."""

    def __init__(
        self,
        model: Model | Graph,
        *,
        device: str | torch.device = "cpu",
        opsets: dict[str, int] | None = None,
        strict: bool = True,
    ) -> None:
        self.model = model if isinstance(model, Model) else None
        self.graph = model.graph if isinstance(model, Model) else model
        base = dict(model.opset_imports) if isinstance(model, Model) else dict(DEFAULT_OPSETS)
        if opsets:
            base.update(opsets)
        self.opsets = _norm_opsets(base)
        self.device = torch.device(device)
        self.strict = strict
        self._functions: dict[tuple[str, str, str], Function] = (
            dict(self.model.functions) if self.model else {}
        )
        self._const_cache: dict[int, torch.Tensor] = {}
        self._params: dict[int, torch.nn.Parameter] = {}
        self._plans: list[_Plan] = []
        self._hooks: dict[int, list[HookFn]] = {}
        self._site: dict[int, tuple[_Plan, _Step | None]] = {}  # id(Value) -> where it is bound
        self._values: dict[str, Value] = {}  # hookable values by name (graph and subgraphs)
        self._missing: list[UnsupportedOpError] = []
        self._plan = self._build(self.graph, self.opsets, None, None, ())
        if self._missing and strict:
            more = f" (and {len(self._missing) - 1} more unsupported nodes)" if len(self._missing) > 1 else ""
            raise UnsupportedOpError(str(self._missing[0]) + more)

    # ------------------------------------------------------------------------------------------ running
    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Numpy in, numpy out (IR storage convention, see `qcompiler.runtime.dtypes`), no autograd."""
        args = self._feeds(feeds, numpy=True)
        with torch.no_grad():
            outs = self._exec(self._plan, args, None)
        # Copies: an output may be a feed, an initializer or a view of one (Identity, Reshape, Expand).
        return {v.name: _fresh(to_numpy(t)) for v, t in zip(self.graph.outputs, outs)}

    def run_torch(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Torch in, torch out, differentiable: gradients reach Parameters and feeds that require them."""
        args = self._feeds(feeds, numpy=False)
        outs = self._exec(self._plan, args, None)
        return {v.name: t for v, t in zip(self.graph.outputs, outs)}

    __call__ = run_torch

    def iter_batches(
        self, feeds: dict[str, Any], batch_size: int, *, static: Iterable[str] = ()
    ) -> Iterator[dict[str, Any]]:
        """Run `feeds` in slices of `batch_size` along axis 0, yielding each slice's outputs (numpy).

        Every feed is split along its first axis (they must agree on its length), except those named in
        `static`, which every slice gets whole (e.g. a position table without a batch axis)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        static = set(static)
        unknown = static - set(feeds)
        if unknown:
            raise ValueError(f"static names {sorted(unknown)} are not among the feeds {sorted(feeds)}")
        split = {
            k: np.asarray(v) if not isinstance(v, torch.Tensor) else v
            for k, v in feeds.items()
            if k not in static
        }
        if not split:
            raise ValueError("run_batched needs at least one feed to split along axis 0")
        lengths = {k: (v.shape[0] if v.ndim else None) for k, v in split.items()}
        n = next(iter(lengths.values()))
        bad = {k: ln for k, ln in lengths.items() if ln != n or ln is None}
        if bad:
            raise ValueError(
                f"feeds to split along axis 0 disagree on its length: {lengths} "
                "(name the ones without a batch axis in static=)"
            )
        for i in range(0, n, batch_size):
            part = {k: (v[i : i + batch_size] if k in split else v) for k, v in feeds.items()}
            yield (
                self.run(part)
                if not any(isinstance(v, torch.Tensor) for v in part.values())
                else self.run_torch(part)
            )

    def run_batched(
        self, feeds: dict[str, Any], batch_size: int, *, static: Iterable[str] = ()
    ) -> dict[str, Any]:
        """`iter_batches` concatenated: outputs joined along axis 0 (every output must have the batch on
        axis 0). Peak memory is one batch's live set plus the outputs."""
        parts = list(self.iter_batches(feeds, batch_size, static=static))
        if not parts:
            raise ValueError("run_batched got feeds with 0 rows along axis 0")
        cat = (
            (lambda xs: torch.cat(xs, 0))
            if isinstance(next(iter(parts[0].values())), torch.Tensor)
            else (lambda xs: np.concatenate(xs, 0))
        )
        return {k: cat([p[k] for p in parts]) for k in parts[0]}

    def run_many(self, samples: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Run each feed dict of `samples` (numpy), yielding outputs one sample at a time."""
        for s in samples:
            yield self.run(s)

    # ------------------------------------------------------------------------------------------ hooks
    def value(self, name: str) -> Value:
        """A value of the graph (or of an If/Loop/Scan body) by name."""
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"graph {self.graph.name!r} has no value named {name!r}") from None

    def add_hook(self, target: HookTarget, fn: HookFn) -> HookHandle:
        """Attach `fn(value, tensor) -> None | tensor` to the values `target` names: a name, a `Value`, an
        iterable of those, or a predicate `Value -> bool` over every value (graph inputs and initializers
        included). See `qcompiler.runtime.hooks`."""
        values = self._resolve(target)
        for v in values:
            self._hooks.setdefault(id(v), []).append(fn)
        self._refresh_hooks(values)

        def remove() -> None:
            for v in values:
                fns = self._hooks.get(id(v), [])
                for i, f in enumerate(fns):
                    if f is fn:
                        del fns[i]
                        break
                if not fns:
                    self._hooks.pop(id(v), None)
            self._refresh_hooks(values)

        return HookHandle(remove, values)

    def _resolve(self, target: HookTarget) -> list[Value]:
        if isinstance(target, str | Value):
            target = [target]
        elif callable(target):
            pred = target
            return [v for v in self._values.values() if pred(v)]
        out: list[Value] = []
        for t in target:
            if isinstance(t, Value):
                if id(t) not in self._site:
                    raise KeyError(f"value %{t.name} is not a hookable value of graph {self.graph.name!r}")
                out.append(t)
            else:
                out.append(self.value(t))
        return out

    def _refresh_hooks(self, values: list[Value]) -> None:
        for v in values:
            plan, step = self._site[id(v)]
            if step is None:
                entries = [
                    (s, w, self._hooks[id(w)]) for s, w in plan.inputs + plan.consts if id(w) in self._hooks
                ]
                # a graph input that is also an initializer is listed twice: keep one entry per slot
                plan.input_hooks = list({s: (s, w, f) for s, w, f in entries}.values()) or None
            else:
                step.hooks = [
                    (step.outs[i], o, self._hooks[id(o)])
                    for i, o in enumerate(step.node.outputs)
                    if id(o) in self._hooks
                ] or None

    # ------------------------------------------------------------------------------------------ parameters
    def parameters(
        self, select: Iterable[str] | Callable[[Value], bool] | None = None
    ) -> dict[str, torch.nn.Parameter]:
        """Initializers as `torch.nn.Parameter`s, by name: the graph reads the live parameter on every run,
        so an optimizer stepping them changes what the executor computes. `select` is a list of names or a
        predicate over initializer `Value`s; None means every floating-point initializer. Asking twice gives
        the same Parameter objects. `commit_parameters()` writes their values back into the model."""
        inits = {v.name: v for p in self._plans if p.hookable for _, v in p.consts}
        if select is None:
            chosen = [v for v in inits.values() if v.const is not None and v.const.dtype.is_float]
        elif callable(select):
            chosen = [v for v in inits.values() if select(v)]
        else:
            chosen = []
            for name in select:
                if name not in inits:
                    raise KeyError(f"graph {self.graph.name!r} has no initializer named {name!r}")
                chosen.append(inits[name])
        out: dict[str, torch.nn.Parameter] = {}
        changed = False
        for v in chosen:
            p = self._params.get(id(v))
            if p is None:
                t = self._const(v)
                if not t.dtype.is_floating_point:
                    raise TypeError(
                        f"initializer {v.name!r} is {t.dtype}; only floating-point tensors can be "
                        "trainable parameters"
                    )
                p = self._params[id(v)] = torch.nn.Parameter(t.detach().clone())
                self._const_cache[id(v)] = p
                changed = True
            out[v.name] = p
        if changed:
            for plan in self._plans:
                plan.const_bind = [(s, self._const(v)) for s, v in plan.consts]
        return out

    def commit_parameters(self) -> list[str]:
        """Write every Parameter's current value into its initializer in the IR; returns their names."""
        names = []
        for p in self._plans:
            for _, v in p.consts:
                param = self._params.get(id(v))
                if param is None or v.const is None:
                    continue
                dt = v.const.dtype
                arr = to_numpy(param.detach().to(torch_dtype(dt)))
                v.const = Tensor(arr, dt, doc_string=v.const.doc_string)
                names.append(v.name)
        return names

    # ------------------------------------------------------------------------------------------ internals
    def _const(self, v: Value) -> torch.Tensor:
        t = self._const_cache.get(id(v))
        if t is None:
            assert v.const is not None
            t = _tensor_to_torch(v.const).to(self.device)
            self._const_cache[id(v)] = t
        return t

    def _feeds(self, feeds: dict[str, Any], *, numpy: bool) -> list[Any]:
        plan = self._plan
        names = {v.name for _, v in plan.inputs}
        extra = [k for k in feeds if k not in names]
        if extra:
            raise ValueError(
                f"feed {extra[0]!r} is not an input of graph {self.graph.name!r}; "
                f"inputs: {', '.join(v.name for _, v in plan.inputs) or '(none)'}"
            )
        args: list[Any] = []
        for _, v in plan.inputs:
            if v.name not in feeds:
                if v.const is None and not isinstance(v.type, OptionalType):
                    raise ValueError(
                        f"graph {self.graph.name!r} input {v.name!r} is not fed "
                        f"(feeds: {', '.join(feeds) or 'none'})"
                    )
                args.append(None)
                continue
            x = feeds[v.name]
            args.append(_convert_feed(v, x, self.device) if numpy else _move(x, self.device))
        return args

    def _exec(self, plan: _Plan, inputs: list[Any], outer: list[Any] | None) -> list[Any]:
        env: list[Any] = [None] * plan.n_slots
        for s, t in plan.const_bind:
            env[s] = t
        if outer is not None:
            for o, s in plan.captures:
                env[s] = outer[o]
        for (s, _), t in zip(plan.inputs, inputs):
            if t is not None:
                env[s] = t
        if plan.input_hooks is not None:
            fire(plan.input_hooks, env)
        st = None
        try:
            for st in plan.steps:
                n = st.nin
                ctx = st.ctx if st.subplans is None else st.ctx.with_runner(_SubRunner(self, st, env))
                if n == 1:
                    out = st.fn(ctx, env[st.ins[0]], **st.attrs)
                elif n == 0:
                    out = st.fn(ctx, **st.attrs)
                else:
                    out = st.fn(ctx, *st.get(env), **st.attrs)
                if st.single:
                    env[st.outs[0]] = out[0] if type(out) is tuple else out
                else:
                    if type(out) is not tuple:
                        raise TypeError(
                            f"op function returned {type(out).__name__}, expected a tuple of "
                            f"{len(st.outs)} outputs"
                        )
                    for s, t in zip(st.outs, out):
                        env[s] = t
                if st.hooks is not None:
                    fire(st.hooks, env)
                for s in st.free:
                    env[s] = None
        except Exception as e:
            if st is not None and not getattr(e, "_qc_noted", False):
                e.add_note(f"while running node {st.node.label()} of graph {plan.graph.name!r}")
                e._qc_noted = True  # type: ignore[attr-defined]  # note the innermost node only
            raise
        return [env[s] for s in plan.outputs]

    # ------------------------------------------------------------------------------------------ planning
    def _build(
        self,
        graph: Graph,
        opsets: dict[str, int],
        binding: dict[str, Attr] | None,
        outer: _Plan | None,
        fn_stack: tuple[tuple[str, str, str], ...],
    ) -> _Plan:
        plan = _Plan(graph)
        plan.hookable = not fn_stack
        self._plans.append(plan)
        if outer is not None:
            for v in captured_values(graph):
                if id(v) not in outer.slot_of:
                    raise UnsupportedOpError(
                        f"graph {graph.name!r} reads %{v.name}, which its enclosing scope does not define"
                    )
                plan.captures.append((outer.slot_of[id(v)], plan.slot(v)))
        for v in graph.inputs:
            plan.inputs.append((plan.slot(v), v))
        for v in graph.initializers.values():
            plan.consts.append((plan.slot(v), v))
        for node in graph.nodes:
            for v in node.outputs:
                plan.slot(v)
        plan.const_bind = [(s, self._const(v)) for s, v in plan.consts]
        plan.outputs = [
            plan.slot_of[id(v)] if id(v) in plan.slot_of else _undefined(graph, v) for v in graph.outputs
        ]
        if plan.hookable:
            for _, v in plan.inputs + plan.consts:
                self._site[id(v)] = (plan, None)
                self._values.setdefault(v.name, v)
        # Liveness: the last step reading each slot (subgraph captures count as reads of their node).
        last: dict[int, int] = {}
        reads_per_node: list[list[int]] = []
        for i, node in enumerate(graph.nodes):
            reads = [plan.slot_of[id(v)] for v in node.inputs if v is not None]
            for g in _node_graphs(node, binding):
                reads.extend(plan.slot_of[id(v)] for v in captured_values(g))
            reads_per_node.append(reads)
            for s in reads:
                last[s] = i
        keep = set(plan.outputs)
        for i, node in enumerate(graph.nodes):
            st = self._step(node, plan, opsets, binding, fn_stack)
            free = {s for s in reads_per_node[i] if last[s] == i and s not in keep}
            free.update(s for s in st.outs if s not in last and s not in keep)  # produced, never read
            st.free = tuple(sorted(free))
            plan.steps.append(st)
            if plan.hookable:
                for v in node.outputs:
                    self._site[id(v)] = (plan, st)
                    if v.name:
                        self._values.setdefault(v.name, v)
        return plan

    def _step(
        self,
        node: Node,
        plan: _Plan,
        opsets: dict[str, int],
        binding: dict[str, Attr] | None,
        fn_stack: tuple[tuple[str, str, str], ...],
    ) -> _Step:
        st = _Step(node)
        ins = [plan.slot_of[id(v)] if v is not None else 0 for v in node.inputs]
        while ins and ins[-1] == 0:
            ins.pop()
        st.ins = tuple(ins)
        st.nin = len(ins)
        st.get = itemgetter(*ins) if len(ins) > 1 else None
        st.outs = tuple(plan.slot_of[id(v)] for v in node.outputs)
        st.single = len(node.outputs) == 1
        domain = "" if node.domain == "ai.onnx" else node.domain
        opset = opsets.get(domain, 1)
        st.ctx = OpContext(node, opset)
        func = self._functions.get((node.domain, node.op_type, node.overload))
        if func is not None:
            if func.key in fn_stack:
                raise UnsupportedOpError(f"node {node.label()}: function {func.name!r} calls itself")
            fb = dict(func.attribute_defaults)
            for name, a in node.attrs.items():
                bound = _bind(a, binding)
                if bound is not None:
                    fb[name] = bound
            f_opsets = dict(opsets)
            f_opsets.update(_norm_opsets(func.opset_imports))
            body = self._build(func.graph, f_opsets, fb, None, fn_stack + (func.key,))
            st.fn = _FunctionCall(self, body, len(node.outputs))
            st.attrs = {}
            return st
        entry = lookup(node.op_type, domain, opset)
        if entry is None:
            err = UnsupportedOpError(
                f"node {node.label()}: op {node.qualified_op} (opset {opset}) is not in the op table"
            )
            self._missing.append(err)
            st.fn, st.attrs = _Unsupported(err), {}
            return st
        st.fn = entry.fn
        attrs: dict[str, Any] = {}
        for name, a in node.attrs.items():
            bound = _bind(a, binding)
            if bound is not None:
                attrs[name] = _attr_value(bound)
        accepted = _accepted_kwargs(entry.fn)
        if accepted is not None:
            for name in attrs:
                if name not in accepted:
                    err = st.ctx.fail(f"attribute {name!r} is not supported by the executor's {node.op_type}")
                    self._missing.append(err)
                    st.fn, st.attrs = _Unsupported(err), {}
                    return st
        st.attrs = attrs
        graphs = _node_graphs(node, binding)
        if graphs:
            st.subplans = {id(g): self._build(g, opsets, binding, plan, fn_stack) for g in graphs}
        return st


class _SubRunner:
    """`ctx.run_subgraph` for one call of a control-flow node: runs a body with the caller's env as scope."""

    __slots__ = ("executor", "step", "env")

    def __init__(self, executor: Executor, step: _Step, env: list[Any]) -> None:
        self.executor, self.step, self.env = executor, step, env

    def __call__(self, graph: Graph, inputs: list[Any]) -> list[Any]:
        assert self.step.subplans is not None
        plan = self.step.subplans[id(graph)]
        if len(inputs) != len(plan.inputs):
            raise ValueError(
                f"{self.step.node.label()}: body {graph.name!r} takes {len(plan.inputs)} inputs, "
                f"got {len(inputs)}"
            )
        return self.executor._exec(plan, list(inputs), self.env)


# ---------------------------------------------------------------------------------------------- helpers
def _norm_opsets(opsets: dict[str, int]) -> dict[str, int]:
    out = {("" if d == "ai.onnx" else d): v for d, v in opsets.items()}
    out.setdefault("com.microsoft", 1)
    return out


def _undefined(graph: Graph, v: Value) -> int:
    raise UnsupportedOpError(
        f"graph {graph.name!r} output %{v.name} is not defined in the graph or its scope"
    )


def _bind(a: Attr, binding: dict[str, Attr] | None) -> Attr | None:
    """The attribute itself, or for a function body's reference the call site's attribute (None: unbound)."""
    if a.ref_attr_name is None:
        return a
    if binding is None:
        return None
    b = binding.get(a.ref_attr_name)
    if b is None:
        return None
    return Attr(a.name, b.type, b.value)


def _node_graphs(node: Node, binding: dict[str, Attr] | None) -> list[Graph]:
    out: list[Graph] = []
    for a in node.attrs.values():
        b = _bind(a, binding)
        if b is None:
            continue
        if b.type is AttrType.GRAPH:
            out.append(b.value)
        elif b.type is AttrType.GRAPHS:
            out.extend(b.value)
    return out


def _attr_value(a: Attr) -> Any:
    if a.type is AttrType.TENSOR:
        return _tensor_to_torch(a.value)
    if a.type is AttrType.TENSORS:
        return [_tensor_to_torch(t) for t in a.value]
    if a.type is AttrType.INTS or a.type is AttrType.FLOATS or a.type is AttrType.STRINGS:
        return list(a.value)
    return a.value


def _tensor_to_torch(t: Tensor) -> torch.Tensor:
    if t.dtype is DType.STRING:
        raise UnsupportedOpError("string tensors are not supported by the torch executor")
    return to_torch(t.numpy(), t.dtype)


_KW_CACHE: dict[Any, frozenset[str] | None] = {}


def _accepted_kwargs(fn: Callable[..., Any]) -> frozenset[str] | None:
    """Keyword names an op function takes (None: it takes **kwargs, anything goes)."""
    if fn in _KW_CACHE:
        return _KW_CACHE[fn]
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        _KW_CACHE[fn] = None
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        res = None
    else:
        res = frozenset(
            p.name
            for p in params
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
    _KW_CACHE[fn] = res
    return res


def _convert_feed(v: Value, x: Any, device: torch.device) -> Any:
    """A numpy feed (or list of them for a sequence input) as torch, checked against the declared type."""
    if x is None:
        return None
    t = v.type
    if isinstance(t, OptionalType):
        t = t.elem
    if isinstance(t, SequenceType) or isinstance(x, list | tuple):
        dt = _dtype_of(v)
        return [to_torch(_check_np(v, a, dt), dt).to(device) for a in x]
    dt = t.dtype if isinstance(t, TensorType) else None
    return to_torch(_check_np(v, x, dt), dt).to(device)


def _check_np(v: Value, x: Any, dt: DType | None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = to_numpy(x)
    arr = np.asarray(x)
    if dt is None or dt is DType.STRING:
        return arr
    ok = arr.dtype == dt.storage or _ML_DTYPES.get(arr.dtype.name) is dt
    if not ok:
        if arr.ndim == 0 and arr.dtype.kind in "iufb" and isinstance(x, int | float | bool):
            return arr.astype(dt.storage)  # a Python scalar: take it in the declared type
        raise TypeError(
            f"input {v.name!r} expects {dt.short} (numpy {dt.storage}), got an array of {arr.dtype}"
        )
    return arr


def _fresh(a: Any) -> Any:
    if isinstance(a, list):
        return [_fresh(x) for x in a]
    return None if a is None else np.array(a, copy=True)


def _move(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x if x.device == device else x.to(device)
    if isinstance(x, list | tuple):
        return [_move(a, device) for a in x]
    if isinstance(x, np.ndarray):
        return to_torch(x).to(device)
    return x


def run(
    model: Model | Graph,
    feeds: dict[str, Any],
    *,
    device: str | torch.device = "cpu",
    opsets: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Execute the model once; feeds and results are numpy arrays keyed by value name. For many runs build
    an `Executor` once (planning and converting the initializers happen at construction)."""
    return Executor(model, device=device, opsets=opsets).run(feeds)


__all__ = ["Executor", "HookHandle", "ir_dtype", "run", "to_numpy", "to_torch", "torch_dtype"]

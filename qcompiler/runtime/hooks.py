"""Hooks: observe or replace any value while the executor runs.

A hook is `fn(value: ir.Value, tensor) -> None | tensor`. Returning None observes (calibration observers,
activation capture for GPTQ/AWQ); returning a tensor replaces the value for every later reader (QAT
fake-quant, sensitivity perturbations). Several hooks on one value run in the order they were added, each
seeing the previous one's result. A hook fires where the value comes to exist: after its producing node,
or at the start of a run for graph inputs and initializers (so a hook on a weight runs on every run, on
the live `Parameter` if the weight is one). Hooks on values inside If/Loop/Scan bodies fire on every
execution of the body; values inside model-local function bodies cannot be hooked (a body is shared by
its call sites).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..ir import Value

HookFn = Callable[["Value", Any], Any]
HookTarget = str | Any | Iterable[Any] | Callable[["Value"], bool]


class HookHandle:
    """What `Executor.add_hook` returns: `.remove()` detaches the hook from every value it was added to.
    Also a context manager (`with ex.add_hook(...):`), removing on exit."""

    def __init__(self, remove: Callable[[], None], values: list[Value]) -> None:
        self._remove: Callable[[], None] | None = remove
        self.values = values  # the values the hook was attached to

    def remove(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None

    def __enter__(self) -> HookHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self._remove is not None else "removed"
        return f"HookHandle({len(self.values)} values, {state})"


def fire(hooks: list[tuple[int, Value, list[HookFn]]], env: list[Any]) -> None:
    """Run the hooks of the slots in `hooks` on `env`, in place."""
    for slot, value, fns in hooks:
        t = env[slot]
        for fn in fns:
            r = fn(value, t)
            if r is not None:
                t = r
        env[slot] = t

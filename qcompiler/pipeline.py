"""Passes and the PassManager: a pipeline is a list of small, named transformations.

A pass is an object with a `name`, what it `requires` and `ensures`, and `__call__(model, ctx) -> PassResult`.
Passes hold no state between runs; what they learn goes into `ctx` (decisions for the report, timings).
The PassManager runs them in order, times each, verifies the IR after each (naming the pass that broke it),
and can dump the IR text after any pass.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError
from .ir import Model, format_model, verify


@dataclass
class PassResult:
    model: Model
    modified: bool


@dataclass
class Decision:
    """One thing a pass decided about a node or value, with the reason — the report lists them."""

    pass_name: str
    subject: str  # node label or %value
    action: str  # "quantized", "kept float", "folded", ...
    reason: str = ""


@dataclass
class PassContext:
    """What passes share during one compile: options, data, and what they record for the report."""

    options: dict[str, Any] = field(default_factory=dict)
    calibration: Any = None  # a qcompiler.calibration.CalibrationSet, for passes that need data
    target: Any = None  # the qcompiler.targets.Target being compiled for
    decisions: list[Decision] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)  # results passes hand on (ranges, stats)
    progress: bool = True

    def decide(self, pass_name: str, subject: str, action: str, reason: str = "") -> None:
        self.decisions.append(Decision(pass_name, subject, action, reason))

    def calibration_batches(self, *, limit: int | None = None, desc: str | None = None,
                            progress: bool = True) -> Iterable[Any]:
        """The calibration feeds in batches of the compile's `calib_batch_size` (a plain iterable of feed dicts
        passes through as it is), the first `limit` batches only when given; with `desc`, behind a progress bar
        (shown when both `progress` and the compile's progress are on)."""
        data = self.calibration
        batch_size = self.options.get("calib_batch_size", 1)
        batches = data.batches(batch_size) if hasattr(data, "batches") else data
        total = None
        if hasattr(data, "__len__"):
            total = -(-len(data) // batch_size) if hasattr(data, "batches") else len(data)
        if limit is not None:
            batches = itertools.islice(batches, limit)
            total = limit if total is None else min(total, limit)
        if desc is None:
            return batches
        from tqdm import tqdm

        return tqdm(batches, total=total, desc=desc, unit="batch", leave=False,
                    disable=not (progress and self.progress))

    def observe(self, executor: Any, values: Sequence[Any], hook: Callable[[Any, Any], Any], *, desc: str,
                limit: int | None = None, progress: bool = True) -> int:
        """Run `executor` (a `qcompiler.runtime.Executor`) over `calibration_batches(limit=, desc=, progress=)`
        with `hook(value, tensor)` on `values`, detached afterwards; returns how many batches ran. Streaming:
        what the hook keeps is all that stays in memory."""
        n = 0
        with executor.add_hook(values, hook):
            for feeds in self.calibration_batches(limit=limit, desc=desc, progress=progress):
                executor.run(feeds)
                n += 1
        return n


class Pass:
    """Base class. Subclasses set `name` (and optionally `requires`/`ensures`) and implement `run`.

    `Options` (a frozen dataclass, optional) declares the pass's recipe options; `options(ctx)` builds it from
    the recipe's table for this pass, with a ConfigError naming any unknown key."""

    name: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    ensures: ClassVar[tuple[str, ...]] = ()
    Options: ClassVar[type | None] = None

    def __init__(self, **options: Any) -> None:
        self._options = options

    def __call__(self, model: Model, ctx: PassContext) -> PassResult:
        return self.run(model, ctx)

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def skipped(self, ctx: PassContext, *, enabled: bool = True, needs_data: bool = False) -> bool:
        """Whether the pass must do nothing (the recipe turned it off, or it needs calibration data and there is
        none); the plan records which."""
        if not enabled:
            ctx.decide(self.name, "model", "skipped", "disabled by the recipe (enabled = false)")
            return True
        if needs_data and ctx.calibration is None:
            ctx.decide(self.name, "model", "skipped", "needs calibration data (none was given)")
            return True
        return False

    def options(self) -> Any:
        if self.Options is None:
            if self._options:
                raise ConfigError(f"pass {self.name!r} takes no options; got {', '.join(sorted(self._options))}")
            return None
        return build_options(self.Options, self._options, where=f"pass {self.name!r}")


def build_options(cls: type, values: dict[str, Any], *, where: str) -> Any:
    """Construct a frozen options dataclass, naming an unknown key and listing the valid ones."""
    import dataclasses

    valid = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(values) - valid)
    if bad:
        raise ConfigError(f"{where}: unknown option {bad[0]!r}; valid options: {', '.join(sorted(valid)) or 'none'}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


_PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to recipes by its name."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _PASSES[cls.name] = cls
    return cls


def get_pass(name: str, **options: Any) -> Pass:
    _load_passes()
    cls = _PASSES.get(name)
    if cls is None:
        raise ConfigError(f"unknown pass {name!r}; valid passes: {', '.join(sorted(_PASSES))}")
    p = cls(**options)
    p.options()  # validate now, not halfway through a compile
    return p


def pass_names() -> list[str]:
    _load_passes()
    return sorted(_PASSES)


def _load_passes() -> None:
    import importlib
    import pkgutil

    from . import passes

    for m in pkgutil.iter_modules(passes.__path__):
        importlib.import_module(f"{passes.__name__}.{m.name}")


class PassManager:
    """Runs passes in order: times each, verifies the IR after each, optionally dumps it.

    `dump_dir`: write `NN-passname.ir` after each pass. `rules`: extra verifier rules (op signatures)."""

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        verify_each: bool = True,
        dump_dir: str | Path | None = None,
        rules_for: Callable[[Model], Iterable[Callable]] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.passes = list(passes)
        self.verify_each = verify_each
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.rules_for = rules_for
        self.log = log

    def run(self, model: Model, ctx: PassContext) -> Model:
        ensured: set[str] = set()
        for i, p in enumerate(self.passes):
            missing = [r for r in p.requires if r not in ensured]
            if missing:
                raise ConfigError(f"pass {p.name!r} requires {', '.join(missing)}, which no earlier pass ensures")
            t0 = time.perf_counter()
            result = p(model, ctx)
            elapsed = time.perf_counter() - t0
            ctx.timings[p.name] = ctx.timings.get(p.name, 0.0) + elapsed
            model = result.model
            ensured.update(p.ensures)
            if self.log is not None:
                self.log(f"{p.name}: {elapsed:.2f}s{'' if result.modified else ' (no change)'}")
            if self.verify_each and result.modified:
                rules = list(self.rules_for(model)) if self.rules_for is not None else []
                verify(model, rules=rules, where=f"pass {p.name!r}")
            if self.dump_dir is not None:
                self.dump_dir.mkdir(parents=True, exist_ok=True)
                (self.dump_dir / f"{i:02d}-{p.name}.ir").write_text(format_model(model))
        return model

    def run_to_fixed_point(self, model: Model, ctx: PassContext, *, max_rounds: int = 10) -> Model:
        """Repeat the whole group until no pass changes anything (e.g. folding that exposes more folding)."""
        for _ in range(max_rounds):
            changed = False
            for p in self.passes:
                r = p(model, ctx)
                model, changed = r.model, changed or r.modified
            if not changed:
                return model
        return model

"""`canonicalize`: the clean-up every model gets before quantization decides anything.

Runs, in this order, until a round changes nothing (folding can expose more: a folded Reshape makes a
MatMul weight constant, a removed Identity puts a BatchNormalization right after its Conv):

1. `fold_constants`   constants computed, dead code removed
2. `remove_identity`  Identity and inference Dropout gone
3. `fold_batchnorm`   BatchNormalization folded into the Conv/Gemm/MatMul before it
4. `fuse_matmul_add`  MatMul + bias Add marked as linear layers (Gemm for 2-D inputs)
5. `normalize_ops`    ops rewritten into the equivalent form with an integer kernel (ReduceMean -> GlobalAveragePool)

Each step is also a pass of its own, usable alone in a recipe. Each step's time is added to
`ctx.timings` under `canonicalize/<step>`. Decisions: every edit of every round, and the declines of
the last round only (a decline in round 1 may have become a fold in round 2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from qcompiler.ir import Model, verify
from qcompiler.pipeline import Decision, Pass, PassContext, PassResult, register_pass

from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldConstants
from .fuse_matmul_add import FuseMatMulAdd
from .normalize_ops import NormalizeOps
from .remove_identity import RemoveIdentity

STEPS: tuple[type[Pass], ...] = (FoldConstants, RemoveIdentity, FoldBatchNorm, FuseMatMulAdd, NormalizeOps)
STATE_ACTIONS = frozenset({"kept", "paired"})  # decisions describing the graph as it is, not an edit


@dataclass(frozen=True)
class CanonicalizeOptions:
    """`max_rounds`: repeat the steps at most this often (a round that changes nothing ends it).
    `fold_max_bytes`: `fold_constants`'s `max_bytes`."""

    max_rounds: int = 4
    fold_max_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")
        if self.fold_max_bytes < 0:
            raise ValueError(f"fold_max_bytes must be >= 0, got {self.fold_max_bytes}")


@register_pass
class Canonicalize(Pass):
    """fold_constants, remove_identity, fold_batchnorm, fuse_matmul_add, normalize_ops to a fixed point."""

    name = "canonicalize"
    ensures = ("canonical",) + tuple(e for step in STEPS for e in step.ensures)
    Options = CanonicalizeOptions

    def run(self, model: Model, ctx: PassContext) -> PassResult:
        opts: CanonicalizeOptions = self.options()
        steps = [FoldConstants(max_bytes=opts.fold_max_bytes), RemoveIdentity(), FoldBatchNorm(), FuseMatMulAdd(),
                 NormalizeOps()]
        modified = False
        done: list[Decision] = []
        state: list[Decision] = []
        for _ in range(opts.max_rounds):
            # Each round records into its own list: what was done is kept from every round, what was
            # declined ("kept", "paired") only from the last, so the report describes the final graph.
            scratch = replace(ctx, decisions=[])
            changed = False
            for step in steps:
                t0 = time.perf_counter()
                result = step(model, scratch)
                key = f"{self.name}/{step.name}"
                ctx.timings[key] = ctx.timings.get(key, 0.0) + time.perf_counter() - t0
                model = result.model
                if result.modified:  # structural checks name the step that broke the IR (ms on an LLM graph)
                    verify(model, where=f"pass '{key}'")
                changed = changed or result.modified
            done.extend(d for d in scratch.decisions if d.action not in STATE_ACTIONS)
            state = [d for d in scratch.decisions if d.action in STATE_ACTIONS]
            modified = modified or changed
            if not changed:
                break
        ctx.decisions.extend(done + state)
        return PassResult(model, modified)

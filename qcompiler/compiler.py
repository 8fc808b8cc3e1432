"""`qcompiler.compile()`: model in, quantized artifact out, with a report measured against the float model.

    art = qcompiler.compile("model.onnx", target="cpu-int8", calib="calib.npz")
    art.run({"input": x}); art.save("model.int8.onnx"); print(art.report.summary_table())

Steps: load -> recipe (the target's default, a file, or overrides) -> calibration data -> passes
(PassManager: canonicalize, assign_quant_types, calibrate, lower_qdq, ...) -> the backend writes the artifact
-> the report compares it with the float model (per-layer SQNR with the executor on held-back samples;
outputs, size and latency with the backend's runtime). Nothing is written until everything succeeded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import CalibrationError, ConfigError, ModelLoadError
from .ir import Model
from .pipeline import PassContext, PassManager, get_pass
from .recipe import Recipe
from .targets import Target, get_target


@dataclass
class CompileOptions:
    """Knobs of one compile that are not part of the recipe (they do not change what is computed)."""

    threads: int | None = None
    report: bool = True
    measure_latency: bool = True
    latency_batch_sizes: tuple[int, ...] = (1,)
    progress: bool = True
    dump_ir: str | None = None
    log: Callable[[str], None] | None = None


@dataclass
class Artifact:
    """A compiled model: the lowered IR, the file the backend wrote, the recipe used and the report."""

    model: Model
    target: Target
    recipe: Recipe
    path: Path | None = None
    report: Any = None
    files: list[Path] = field(default_factory=list)
    decisions: list[Any] = field(default_factory=list)  # what the passes decided and why (the dry-run plan)
    _runner: Any = None

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run the artifact in its backend's runtime (ONNX Runtime for the cpu targets)."""
        if self._runner is None:
            if self.path is None:
                raise ModelLoadError("the artifact has not been saved yet; call .save(path) first")
            from .backends.onnxruntime.session import OrtRunner

            self._runner = OrtRunner(self.path)
        return self._runner(feeds)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact, its recipe and (if any) report beside it; returns the model path."""
        path = Path(path)
        files = _write_outputs(self, path)
        self.path, self.files, self._runner = path, files, None
        return path


def model_stem(path: Path) -> str:
    """A model file's name without `.onnx`: the stem its recipe and report files are named after."""
    return path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name


def _artifact_names(path: Path) -> dict[str, Path]:
    stem = model_stem(path)
    return {
        "recipe": path.with_name(stem + ".recipe.toml"),
        "report_json": path.with_name(stem + ".report.json"),
        "report_html": path.with_name(stem + ".report.html"),
    }


def _write_outputs(art: Artifact, path: Path) -> list[Path]:
    """Everything goes to a temp folder beside `path` first, then is moved into place: no partial output."""
    from .frontends.onnx_io import save_onnx

    if not path.parent.is_dir():
        raise ConfigError(f"output folder {path.parent} does not exist")
    names = _artifact_names(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        written = {"model": save_onnx(art.model, tmp / path.name)}
        data = tmp / (path.name + ".data")
        if data.exists():
            written["data"] = data
        (tmp / names["recipe"].name).write_text(art.recipe.to_toml())
        written["recipe"] = tmp / names["recipe"].name
        if art.report is not None:
            art.report.to_json(tmp / names["report_json"].name)
            art.report.to_html(tmp / names["report_html"].name)
            written["report_json"] = tmp / names["report_json"].name
            written["report_html"] = tmp / names["report_html"].name
        final = []
        for f in written.values():
            dest = path.parent / f.name
            os.replace(f, dest)
            final.append(dest)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve_recipe(
    target: Target,
    recipe: Recipe | str | os.PathLike[str] | None,
    *,
    exclude: tuple[str, ...] = (),
    calib_samples: int | None = None,
) -> Recipe:
    """The target's default recipe, or the given one, with command-line overrides applied."""
    if recipe is None:
        r = target.default_recipe
    elif isinstance(recipe, Recipe):
        r = recipe
    else:
        r = Recipe.load(recipe)
    if r.target and r.target != target.name:
        raise ConfigError(f"the recipe is for target {r.target!r}, not {target.name!r}")
    if not r.passes:
        r = replace(r, passes=target.default_recipe.passes)
    if exclude:
        r = replace(r, quantize=replace(r.quantize, exclude_nodes=r.quantize.exclude_nodes + tuple(exclude)))
    if calib_samples is not None:
        if calib_samples < 1:
            raise ConfigError(f"--calib-samples must be >= 1, not {calib_samples}")
        cal = r.calibration
        r = replace(r, calibration=replace(cal, samples=calib_samples, holdout=min(cal.holdout, calib_samples // 2)))
    return replace(r, target=target.name)


def compile(  # noqa: A001 - the product's verb
    model: Any,
    *,
    target: str,
    calib: Any = None,
    recipe: Recipe | str | os.PathLike[str] | None = None,
    exclude: tuple[str, ...] | list[str] = (),
    calib_samples: int | None = None,
    output: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    options: CompileOptions | None = None,
    example_inputs: Any = None,
) -> Artifact:
    """Quantize `model` (a path, an onnx.ModelProto, an IR Model or a torch module with example_inputs) for
    `target`. With `output`, the artifact, recipe and report are written there; `dry_run` plans only (the
    plan is `Artifact.decisions`). An IR Model passed in is transformed in place."""
    from . import load
    from .frontends.onnx_io import model_to_proto
    from .frontends.onnx_schema import schema_rule

    opts = options or CompileOptions()
    tgt = get_target(target)
    rec = resolve_recipe(tgt, recipe, exclude=tuple(exclude), calib_samples=calib_samples)
    if output is not None and not Path(output).parent.is_dir():
        raise ConfigError(f"output folder {Path(output).parent} does not exist")
    source = str(model) if isinstance(model, str | os.PathLike) else type(model).__name__
    ir = model if isinstance(model, Model) else load(model, example_inputs=example_inputs)
    # The reference the report measures against, taken before the passes transform the IR.
    float_proto = model_to_proto(ir) if opts.report and not dry_run else None
    passes = [get_pass(p.name, **p.options) for p in rec.passes]
    if dry_run:
        passes = passes[: _index_after(passes, "assign_quant_types")]
    cal_set = held = None
    needs_data = any(p.name == "calibrate" for p in passes) and tgt.static
    if needs_data and calib is None:
        raise CalibrationError(
            f"target {tgt.name} quantizes activations statically and needs calibration data: pass --calib "
            "DATA (an .npz with arrays named after the inputs, a folder of .npz/.npy, or module:function); "
            "--calib random runs a smoke test on random data"
        )
    if calib is not None and not dry_run:
        # Static targets calibrate on it; any target measures its report on the held-back part.
        from .calibration import load_calibration

        cal_all = load_calibration(calib, ir.graph.inputs, samples=rec.calibration.samples)
        holdout = rec.calibration.holdout
        n = getattr(cal_all, "length", None)
        if n is not None:
            holdout = min(holdout, n // 4)  # a small set keeps most of its samples for calibration
        cal_set, held = cal_all.split(holdout) if holdout else (cal_all, None)
    ctx = PassContext(
        options={"recipe": rec, "calib_batch_size": rec.calibration.batch_size},
        calibration=cal_set, target=tgt, progress=opts.progress,
    )
    pm = PassManager(passes, rules_for=lambda m: [schema_rule(m)], dump_dir=opts.dump_ir, log=opts.log)
    lowered = pm.run(ir, ctx)
    art = Artifact(lowered, tgt, rec, decisions=list(ctx.decisions))
    if dry_run:
        return art
    if float_proto is not None:
        from .measure import build_report

        with tempfile.TemporaryDirectory() as tmp:
            qpath = Path(tmp) / "quantized.onnx"
            from .frontends.onnx_io import save_onnx, save_proto

            save_onnx(lowered, qpath)
            fpath = Path(tmp) / "float.onnx"
            save_proto(float_proto, fpath)
            art.report = build_report(
                source=source, float_path=fpath, quant_path=qpath, float_proto=float_proto, quant_model=lowered,
                target=tgt, recipe=rec, ctx=ctx, calibration=cal_set, holdout=held, calib_spec=calib,
                options=opts,
            )
    if output is not None:
        art.save(output)
    return art


def _index_after(passes: list[Any], name: str) -> int:
    for i, p in enumerate(passes):
        if p.name == name:
            return i + 1
    return len(passes)

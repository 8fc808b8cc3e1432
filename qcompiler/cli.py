"""`qcompiler` on the command line: inspect | targets | compile | report | demo.

Errors a user can cause print one line, `qcompiler: error: ...`, and exit with code 2; no partial output
file is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import QCompilerError

EXIT_USER_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except QCompilerError as e:
        print(f"qcompiler: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("qcompiler: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcompiler", description="A quantization compiler for neural networks.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"qcompiler {__version__}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    ins = sub.add_parser("inspect", help="ops, parameters, inputs/outputs, opsets, what is quantizable")
    ins.add_argument("model", help="an ONNX file")
    ins.add_argument("--target", help="judge quantizability for this target (default: the generic rules)")
    ins.add_argument("--json", action="store_true", help="print JSON instead of text")
    ins.set_defaults(func=_cmd_inspect)

    tg = sub.add_parser("targets", help="list the compilation targets")
    tg.add_argument("--json", action="store_true", help="print JSON instead of text")
    tg.set_defaults(func=_cmd_targets)

    cp = sub.add_parser("compile", help="quantize a model for a target and write the artifact and its report")
    cp.add_argument("model", help="an ONNX file")
    cp.add_argument("--target", required=True, help="a target name (see `qcompiler targets`)")
    cp.add_argument("--calib", help="calibration data: FILE.npz, a folder of .npz/.npy, module:function, or random")
    cp.add_argument("--calib-samples", type=int, help="use the first N calibration samples")
    cp.add_argument("--recipe", help="a recipe file (.toml/.yaml); default: the target's")
    cp.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                    help="keep nodes whose name matches REGEX in float (repeatable)")
    cp.add_argument("-o", "--output", help="the artifact's path (default: MODEL.TARGET.onnx beside the model)")
    cp.add_argument("--dry-run", action="store_true", help="print the plan; write nothing")
    cp.add_argument("--threads", type=int, help="threads for latency measurement (default: all cores)")
    cp.add_argument("--no-report", action="store_true", help="skip measuring (no report files)")
    cp.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    cp.add_argument("--dump-ir", metavar="DIR", help="write the IR text after every pass into DIR")
    cp.add_argument("--quiet", action="store_true", help="no progress output")
    cp.set_defaults(func=_cmd_compile)

    rp = sub.add_parser("report", help="print the summary of a compile report")
    rp.add_argument("report", help="a NAME.report.json file")
    rp.add_argument("--worst", type=int, default=10, help="how many worst layers to list")
    rp.set_defaults(func=_cmd_report)

    dm = sub.add_parser("demo", help="compile an embedded real model end to end and show the report")
    dm.add_argument("--model", default="mobilenet_v2", help="a zoo model (default: mobilenet_v2)")
    dm.add_argument("--out", default="demo-out", help="folder for the artifact and report")
    dm.set_defaults(func=_cmd_demo)
    return p


def _cmd_compile(args: argparse.Namespace) -> int:

    from .compiler import CompileOptions, compile

    out = Path(args.output) if args.output else _default_output(Path(args.model), args.target)
    log = None if args.quiet else (lambda msg: print(f"  {msg}", file=sys.stderr))
    opts = CompileOptions(threads=args.threads, report=not args.no_report, measure_latency=not args.no_latency,
                          progress=not args.quiet, dump_ir=args.dump_ir, log=log)
    art = compile(args.model, target=args.target, calib=args.calib, recipe=args.recipe, exclude=args.exclude,
                  calib_samples=args.calib_samples, output=None if args.dry_run else out, dry_run=args.dry_run,
                  options=opts)
    if args.dry_run:
        print(_format_plan(art))
        return 0
    if art.report is not None:
        print(art.report.summary_table(color=sys.stdout.isatty(), width=_width()))
    print("wrote:")
    for f in art.files:
        print(f"  {f}")
    return 0


def _default_output(model: Path, target: str) -> Path:
    from .compiler import model_stem

    return model.with_name(f"{model_stem(model)}.{target}.onnx")


def _format_plan(art: object) -> str:
    decisions = art.decisions  # type: ignore[attr-defined]
    recipe = art.recipe  # type: ignore[attr-defined]
    lines = [f"plan for target {recipe.target} (dry run: nothing written)",
             "passes: " + " -> ".join(p.name for p in recipe.passes)]
    quantized = [d for d in decisions if d.action == "quantized"]
    kept = [d for d in decisions if d.action == "kept float"]
    lines.append(f"quantized: {len(quantized)} nodes")
    lines += [f"  {d.subject}  [{d.reason}]" for d in quantized]
    lines.append(f"kept float: {len(kept)} nodes")
    lines += [f"  {d.subject}: {d.reason}" for d in kept]
    return "\n".join(lines)


def _width() -> int:
    import shutil

    return max(80, min(140, shutil.get_terminal_size().columns))


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import Report

    rep = Report.from_json(args.report)
    print(rep.summary_table(color=sys.stdout.isatty(), width=_width(), worst=args.worst))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.model, args.out)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from . import load
    from .inspect_model import format_inspection, inspect_model

    info = inspect_model(load(args.model), target=args.target)
    print(json.dumps(info, indent=2) if args.json else format_inspection(info, args.model))
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from .targets import list_targets

    targets = list_targets()
    if args.json:
        print(json.dumps([
            {"name": t.name, "backend": t.backend, "static": t.static, "description": t.description,
             "kernels": sorted(t.kernels), "notes": list(t.notes)}
            for t in targets
        ], indent=2))
        return 0
    if not targets:
        print("no targets: no backend is installed")
        return 0
    width = max(len(t.name) for t in targets)
    for t in targets:
        kind = "static, needs --calib" if t.static else "no calibration needed"
        print(f"{t.name:<{width}}  {t.backend:<12} {kind:<22} {t.description}")
    return 0



if __name__ == "__main__":
    sys.exit(main())

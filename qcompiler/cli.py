"""`qcompiler` on the command line: inspect | targets | compile | report | demo.

Errors a user can cause print one line, `qcompiler: error: ...`, and exit with code 2; no partial output
file is left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

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

    for name, fn in _EXTRA_COMMANDS.items():
        fn(sub, name)
    return p


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


# Commands added by other modules (compile, report, demo), so this file stays a thin dispatcher.
_EXTRA_COMMANDS: dict[str, Callable[[argparse._SubParsersAction, str], None]] = {}


def command(name: str) -> Callable[[Callable[[argparse._SubParsersAction, str], None]], Callable]:
    def deco(fn: Callable[[argparse._SubParsersAction, str], None]) -> Callable:
        _EXTRA_COMMANDS[name] = fn
        return fn

    return deco


if __name__ == "__main__":
    sys.exit(main())

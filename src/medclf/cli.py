"""The ``medclf`` command: a thin table of subcommands over the Python API.

Each area registers its own subcommands (``medclf/<area>/_cli.py: register(subparsers)``); those modules import
nothing heavy at import time so ``medclf --help`` stays fast. A ``MedclfError`` is printed as one line (no
traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from medclf import __version__
from medclf.errors import MedclfError

__all__ = ["build_parser", "main"]

# order = order in `medclf --help`
_AREAS = (
    "medclf.demo_cli",
    "medclf.data._cli",
    "medclf.models._cli",
    "medclf.train._cli",
    "medclf.evaluate._cli",
    "medclf.explain._cli",
    "medclf.serve._cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medclf",
        description="Train, evaluate, explain and serve medical image classifiers. "
        "Research use only: its output is not a diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"medclf {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # area not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        result = args.func(args)
    except MedclfError as exc:
        if args.debug or os.environ.get("MEDCLF_DEBUG"):
            raise
        print(f"medclf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medclf {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The `textseg` command line: the one application layer over the library.

Each module of this package adds one command group with ``register(subparsers)``, setting ``func(args) -> int``.
A user mistake raises :class:`textseg.errors.UserError` anywhere below; :func:`main` prints it as one line and
returns status 2. Nothing outside this package parses arguments or exits the process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from textseg.errors import UserError

COMMAND_MODULES = ("segment", "referring", "eval", "train", "grouping", "promptable", "points", "workbench", "data",
                   "bench", "demo")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are :class:`UserError` (one line, status 2) like every other mistake."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (modules are imported here, so a broken optional feature names itself)."""
    parser = _Parser(
        prog="textseg", description="Open-vocabulary and referring segmentation learned from image-caption pairs.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"textseg.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 user mistake, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except UserError as err:
        print(f"textseg: error: {err}", file=sys.stderr)
        return 2
    # Other libraries (open_clip, faiss) log chatty INFO lines through the root logger: show only their warnings.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("textseg").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"textseg: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("textseg: interrupted", file=sys.stderr)
        return 130

"""The `textseg` command line.

Each feature module exposes ``register_cli(subparsers)``, which adds its sub-command and sets
``func=callable(args) -> int``. User mistakes raise :class:`textseg.errors.UserError`; they are printed
as one line and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from textseg.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textseg", description="Open-vocabulary and referring segmentation learned from image-caption pairs.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    # Imported here so that `textseg --help` stays fast and a broken optional feature names itself.
    from textseg import commands

    commands.register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())

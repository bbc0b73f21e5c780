#!/usr/bin/env python
"""Write the command-line reference: `python tools/cli_reference.py [docs/cli.md]` (`-` prints it instead)."""

import sys
from pathlib import Path

from textseg.cli import build_parser
from textseg.cli.reference import render_cli_reference
from textseg.io import atomic_write_text

if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1] / "docs" / "cli.md")
    text = render_cli_reference(build_parser())
    if target == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(target, text)
        print(f"wrote {target}")

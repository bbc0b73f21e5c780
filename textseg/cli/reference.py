"""The command-line reference (``docs/cli.md``), rendered from the argparse parsers themselves.

``tools/cli_reference.py`` writes it; a test checks that the file equals what :func:`render_cli_reference`
returns, so the reference cannot fall behind the parsers.
"""

from __future__ import annotations

import argparse
import functools
from typing import Iterator

WIDTH = 100  # usage lines are wrapped at this width, whatever the terminal, so the output is reproducible


def iter_commands(parser: argparse.ArgumentParser,
                  path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every command under ``parser`` (groups and their subcommands, depth first, in registration order).

    Yields:
        ``(path, help, subparser)``: e.g. ``(("eval", "semseg"), "evaluate ...", parser)``.
    """
    for action in parser._actions:  # argparse has no public accessor for its actions
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for name, sub in action.choices.items():
            if id(sub) in seen:  # an alias shares its command's parser: listed under the command's name only
                continue
            seen.add(id(sub))
            if helps.get(name) == argparse.SUPPRESS:  # a hidden command
                continue
            yield path + (name,), helps.get(name, ""), sub
            yield from iter_commands(sub, path + (name,))


def command_options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings (``--out``, ``-v``, ...) one command's own parser accepts."""
    return {opt for action in parser._actions for opt in action.option_strings}


def _aliases(parent: argparse.ArgumentParser, sub: argparse.ArgumentParser) -> list[str]:
    for action in parent._actions:
        if isinstance(action, argparse._SubParsersAction):
            names = [name for name, p in action.choices.items() if p is sub]
            return names[1:]
    return []


def _usage(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = functools.partial(argparse.HelpFormatter, width=WIDTH)
    if hasattr(parser, "color"):  # Python 3.14+: never colour the reference
        parser.color = False
    return parser.format_usage().strip()


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _help_text(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "prog": prog}
    return text


def _option_row(action: argparse.Action, prog: str) -> str | None:
    if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
        return None
    names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.nargs == 0:
        value = ""
    elif action.choices is not None:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        value = str(action.metavar or action.dest.upper())
        if action.nargs in ("*", "+"):
            value += " ..."
    help_text = _help_text(action, prog)
    default = action.default
    # A help text that states its default says it better (and some defaults depend on the machine, e.g. its CPUs).
    hidden = default is None or default is False or default == argparse.SUPPRESS or action.nargs == 0
    shown = "" if hidden or "default" in help_text else f"`{_plain(default)}`"
    if action.required and action.option_strings:
        shown = "required"
    return f"| {names} | {_cell(value)} | {_cell(shown)} | {_cell(help_text)} |"


def _plain(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def render_cli_reference(parser: argparse.ArgumentParser) -> str:
    """The Markdown reference of every command of ``parser``: its help line, usage and options.

    Args:
        parser: a freshly built parser (:func:`textseg.cli.build_parser`); its formatter is set to a fixed width.

    Returns:
        The text of ``docs/cli.md``.
    """
    lines = [
        "# Command-line reference",
        "",
        "Generated from the argument parsers by `python tools/cli_reference.py` (do not edit by hand); "
        "`textseg COMMAND --help` prints the same options. Every command exits with status 2 and one line "
        "naming the problem on a user mistake.",
        "",
        "```text",
        _usage(parser),
        "```",
        "",
    ]
    lines += _options_table(parser)
    parents = {(): parser}
    for path, help_text, sub in iter_commands(parser):
        parents[path] = sub
        aliases = _aliases(parents[path[:-1]], sub)
        lines += [f"{'#' * min(len(path) + 1, 4)} textseg {' '.join(path)}", ""]
        if help_text:
            lines += [help_text[0].upper() + help_text[1:] + ("" if help_text.endswith(".") else "."), ""]
        if aliases:
            lines += [f"Also accepted, deprecated: {', '.join(f'`textseg {a}`' for a in aliases)}.", ""]
        lines += ["```text", _usage(sub), "```", ""]
        lines += _options_table(sub)
    return "\n".join(lines).rstrip() + "\n"


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = [row for action in parser._actions if (row := _option_row(action, parser.prog)) is not None]
    if not rows:
        return []
    return ["| argument | value | default | meaning |", "|---|---|---|---|", *rows, ""]

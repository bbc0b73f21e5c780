"""The documents stay true: README's length, the commands and options they show, their links, the generated CLI
reference and the config files users copy."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest

from textseg.cli import build_parser
from textseg.cli.reference import command_options, render_cli_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
COMMAND_DOCS = [ROOT / "README.md", *DOCS]
LINK_DOCS = [*COMMAND_DOCS, ROOT / "CHANGELOG.md", ROOT / "configs" / "README.md"]

FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"`([^`\n]+)`")
# `textseg CMD`, `.venv/bin/textseg CMD`, `python -m textseg.cli CMD`; not `textseg/cli` or `textseg.create_model`
PROGRAM = re.compile(r"(?:^|(?<=[\s/]))textseg(?:\.cli)?[ \t]+(.*)$")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def shell_snippets(text: str) -> list[str]:
    """Command lines shown in a Markdown text: fenced blocks (not Python), indented blocks and inline code spans;
    a line ending in a backslash continues on the next."""
    snippets: list[str] = []
    lang = None
    for line in text.splitlines():
        fence = FENCE.match(line.strip())
        if fence:
            lang = None if lang is not None else (fence.group(1) or "text")
            continue
        if lang is not None:
            if lang not in ("python", "py", "yaml", "json"):
                snippets.append(line)
        elif line.startswith("    ") and line.strip():
            snippets.append(line)
        else:
            snippets += INLINE.findall(line)
    joined = "\n".join(snippets).replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip()]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for its subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def check_command(parser: argparse.ArgumentParser, line: str) -> list[str]:
    """Problems with every ``textseg ...`` invocation on one line: an unknown command or an option the command's
    parser does not have."""
    problems = []
    for segment in re.split(r"&&|;|\s#\s", line):
        match = PROGRAM.search(segment.strip())
        if not match:
            continue
        words = match.group(1).split()
        node, path = parser, ["textseg"]
        while words and words[0].startswith("-") and words[0] in command_options(node):  # textseg -v CMD
            words.pop(0)
        while words and subcommands(node):
            word = words[0].strip("[]()'\",.:")
            if word.startswith("-") and word.split("=")[0] in command_options(node):  # usage: textseg [-h] ...
                words.pop(0)
                continue
            if word.isupper():  # a placeholder: textseg COMMAND --help
                break
            if word not in subcommands(node):
                problems.append(f"{' '.join(path)}: no command {word!r} (in {segment.strip()!r})")
                break
            node = subcommands(node)[word]
            path.append(word)
            words.pop(0)
        else:
            known = command_options(node)
            problems += [f"{' '.join(path)}: no option {opt} (in {segment.strip()!r})"
                         for opt in OPTION.findall(" ".join(words)) if opt not in known]
    return problems


def relative_links(path: Path) -> list[str]:
    """Link targets in a Markdown file that are neither web addresses nor anchors of the same page."""
    targets = LINK.findall(path.read_text(encoding="utf-8"))
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        if ROOT not in resolved.parents or not resolved.exists():
            broken.append(f"{path.relative_to(ROOT)}: {target}")
    return broken


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert 50 <= len(lines) <= 250, len(lines)


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1].strip()
    assert ci == "bash tools/install.sh && .venv/bin/python -m pytest -q tests"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"\n{ci}\n" in readme or f"    {ci}\n" in readme
    assert "bash tools/install.sh && .venv/bin/textseg quickstart" in readme


def test_documents_show_many_commands():
    lines = [line for doc in COMMAND_DOCS for line in shell_snippets(doc.read_text(encoding="utf-8"))
             if PROGRAM.search(line)]
    assert len(lines) > 40  # the check below has something to check


@pytest.mark.parametrize("doc", COMMAND_DOCS, ids=lambda p: p.name)
def test_shown_commands_and_options_exist(parser, doc):
    problems = [p for line in shell_snippets(doc.read_text(encoding="utf-8")) for p in check_command(parser, line)]
    assert not problems, "\n".join(problems)


def test_command_check_catches_mistakes(parser):
    assert check_command(parser, "textseg segment a.jpg --classes dog --out o") == []
    assert check_command(parser, "bash tools/install.sh && .venv/bin/textseg quickstart --seed 1") == []
    assert check_command(parser, "torchrun --nproc_per_node=8 -m textseg.cli segment x --out o") == []
    assert check_command(parser, "textseg eval semseg --dataset voc21 [--diagnose]") == []
    assert len(check_command(parser, "textseg segmnt a.jpg")) == 1
    assert len(check_command(parser, "textseg eval semsg --root r")) == 1
    bad = check_command(parser, "textseg segment a.jpg --clases dog --out o --windw 4")
    assert [p.split(": ")[1].split(" (")[0] for p in bad] == ["no option --clases", "no option --windw"]
    assert len(check_command(parser, "textseg refer img 'a dog' --out o && textseg models --all")) == 1
    assert check_command(parser, "pip install 'textseg[demo]'") == []


def test_shell_snippets_join_continued_lines_and_skip_python():
    text = "x\n\n    textseg train a \\\n        b=1\n\n```python\ntextseg foo\n```\nsee `textseg models`.\n"
    assert shell_snippets(text) == ["    textseg train a          b=1", "textseg models"]


@pytest.mark.parametrize("doc", LINK_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    assert doc.is_file(), doc
    assert not broken_links(doc)


def test_link_check_catches_a_broken_link(tmp_path, monkeypatch):
    assert relative_links(ROOT / "docs" / "architecture.md")  # the docs link to each other
    fake = tmp_path / "page.md"
    fake.write_text("[a](https://x.org/y) [b](#top) ![c](missing.png) [d](page.md#s)\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert relative_links(fake) == ["missing.png", "page.md#s"]
    assert broken_links(fake) == ["page.md: missing.png"]


def test_cli_reference_is_current(parser):
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    generated = render_cli_reference(parser)
    assert current == generated, "docs/cli.md is stale: run `python tools/cli_reference.py`"
    for name in subcommands(parser):
        assert f"textseg {name}" in current


def test_config_files_load():
    from textseg.config import load_protocol
    from textseg.train import load_train_config

    loaders = {"train": load_train_config, "protocols": load_protocol}
    files = sorted(p for p in (ROOT / "configs").rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    assert {p.parent.name for p in files} >= {"train", "protocols"}
    for path in files:
        kind = path.relative_to(ROOT / "configs").parts[0]
        assert kind in loaders, f"{path}: no loader for configs/{kind}/ (add one to this test)"
        loaders[kind](path)
    real = load_train_config(ROOT / "configs" / "train" / "cc3m_cc12m_vits16_vitb16_8gpu.yaml")
    assert (real.model, real.pretrained, real.data.image_size, real.data.batch_size) == (
        "dino-s16-clip-b16", True, 224, 256)
    voc = load_protocol(ROOT / "configs" / "protocols" / "voc21.yaml")
    shipped = load_protocol("groupvit").for_benchmark("voc21")
    assert voc.replace(name="groupvit") == shipped
    context = load_protocol(ROOT / "configs" / "protocols" / "context60.yaml")
    assert context.replace(name="groupvit") == load_protocol("groupvit").for_benchmark("context60")

"""Wires every sub-command of the `textseg` CLI; each lives in the module that owns the feature."""

from __future__ import annotations

import argparse


def register_all(sub: argparse._SubParsersAction) -> None:
    from textseg import ablate, evaluation, quickstart, segment_cli
    from textseg.train import cli as train_cli
    from textseg.workbench import cli as workbench_cli

    segment_cli.register_cli(sub)
    evaluation.register_cli(sub)
    workbench_cli.register_cli(sub)
    train_cli.register_cli(sub)
    quickstart.register_cli(sub)
    ablate.register_cli(sub)

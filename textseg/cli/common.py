"""Options shared by several commands: which model, which weights, which device; class lists."""

from __future__ import annotations

import argparse
from pathlib import Path

from textseg.errors import UserError


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add the options that select a model and its weights."""
    from textseg.factory import DEFAULT_MODEL

    g = parser.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"model name or JSON config (default {DEFAULT_MODEL}; see `textseg models`)")
    g.add_argument("--no-pretrained", action="store_true", help="random weights (for testing the pipeline)")
    g.add_argument("--clip-pretrained", help="open_clip pretrained tag or local weight file for the CLIP")
    g.add_argument("--backbone-pretrained", help="local weight file for the grouping backbone (timm)")
    g.add_argument("--checkpoint", help="a textseg training checkpoint")
    g.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")


def model_from_args(args: argparse.Namespace):
    """Build the model that the options of :func:`add_model_args` describe."""
    import torch

    from textseg.factory import create_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return create_model(args.model, pretrained=not args.no_pretrained, clip_pretrained=args.clip_pretrained,
                        backbone_pretrained=args.backbone_pretrained, checkpoint=args.checkpoint, device=device)


def parse_names(text: str, option: str) -> list[str]:
    """Names separated by commas, or a .txt file with one name per line; empty → UserError naming the option."""
    path = Path(text)
    if path.suffix == ".txt" and path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [c.strip() for c in text.split(",")]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"{option} is empty: give names separated by commas or a .txt file with one name per line")
    return names

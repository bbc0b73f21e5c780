"""Options shared by several commands: which model, which weights, which device; class lists."""

from __future__ import annotations

import argparse
from pathlib import Path

from textseg.errors import UserError


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Add the options that select a model and its weights."""
    from textseg.factory import DEFAULT_MODEL

    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help=f"model name or JSON config (default: the --checkpoint's model, else {DEFAULT_MODEL}; "
                        "see `textseg models`)")
    g.add_argument("--no-pretrained", action="store_true",
                   help="random weights, the same in every run (for testing the pipeline)")
    g.add_argument("--clip-pretrained", help="open_clip pretrained tag or local weight file for the CLIP")
    g.add_argument("--backbone-pretrained", help="local weight file for the grouping backbone (timm)")
    g.add_argument("--checkpoint", help="a textseg training checkpoint")
    g.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")


def model_from_args(args: argparse.Namespace):
    """Build the model that the options of :func:`add_model_args` describe."""
    import torch

    from textseg.factory import create_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r} is not a device (cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {device}: no such CUDA device here ({torch.cuda.device_count()} visible)")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise UserError(f"--device {device}: textseg runs on cpu, cuda, mps or xpu devices")
    if dev.type in ("mps", "xpu"):
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError, NotImplementedError) as err:
            raise UserError(f"--device {device} is not available here ({str(err).splitlines()[0]})") from None
    return create_model(args.model, pretrained=not args.no_pretrained, clip_pretrained=args.clip_pretrained,
                        backbone_pretrained=args.backbone_pretrained, checkpoint=args.checkpoint, device=device,
                        seed=0)  # --no-pretrained gives the same random weights in every run and process


def parse_names(text: str, option: str) -> list[str]:
    """Names separated by commas, or a .txt file with one name per line.

    Raises:
        UserError: naming the option: the list is empty, or the .txt file is missing, unreadable or not UTF-8.
    """
    path = Path(text)
    if path.suffix.lower() == ".txt" and "," not in text:
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except FileNotFoundError:
            raise UserError(f"{option}: class list file {path} not found (to name a class, leave out '.txt')") from None
        except UnicodeDecodeError as err:
            line = path.read_bytes()[: err.start].count(b"\n") + 1
            raise UserError(f"{option}: {path} line {line} is not UTF-8 text") from None
        except OSError as err:
            raise UserError(f"{option}: cannot read {path}: {err.strerror or err}") from None
        names = [line.strip() for line in lines]
    else:
        names = [c.strip() for c in text.split(",")]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"{option} is empty: give names separated by commas or a .txt file with one name per line")
    return names

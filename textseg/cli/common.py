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
    g.add_argument("--dense-mode", choices=["sclip", "naclip", "proxyclip"],
                   help="label pixels with this training-free dense mode of the model's CLIP (its last block as "
                        "SCLIP, NACLIP or ProxyCLIP computes it; ProxyCLIP's proxy: the grouping backbone)")
    g.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")


def model_from_args(args: argparse.Namespace):
    """Build the model that the options of :func:`add_model_args` describe."""
    from textseg.factory import create_model

    device = check_device(args.device)
    return create_model(args.model, pretrained=not args.no_pretrained, clip_pretrained=args.clip_pretrained,
                        backbone_pretrained=args.backbone_pretrained, checkpoint=args.checkpoint, device=device,
                        seed=0,  # --no-pretrained gives the same random weights in every run and process
                        overrides={"dense": {"mode": args.dense_mode}} if getattr(args, "dense_mode", None) else None)


def check_device(device: str | None) -> str:
    """``--device`` checked (default: cuda when available, else cpu)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
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
    return device


NAME_HINT = " (to name a class, leave out '.txt')"


def parse_names(text: str, option: str) -> list[str]:
    """Names separated by commas, or a .txt file with one name per line.

    Raises:
        UserError: naming the option: the list is empty, or the .txt file is missing, unreadable or not UTF-8.
    """
    from textseg.vocab import read_text_lines

    path = Path(text)
    if path.suffix.lower() == ".txt" and "," not in text:
        lines = read_text_lines(path, f"{option}: class list file", NAME_HINT)
        names = [line.strip() for line in lines]
    else:
        names = [c.strip() for c in text.split(",")]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"{option} is empty: give names separated by commas or a .txt file with one name per line")
    return names

def parse_classes(text: str, option: str) -> tuple[list[list[str]], bool]:
    """The classes of ``--classes``: names separated by commas (one class each), or a .txt class file (one class a
    line, synonyms separated by ", " or "; "; :func:`~textseg.vocab.read_class_file`). Also whether they came from
    a file (whose first line may name the background, per the protocol).

    Raises:
        UserError: naming the option: the list is empty, or the file is missing, unreadable or not UTF-8.
    """
    from textseg.vocab import read_text_lines, split_synonyms

    path = Path(text)
    if not (path.suffix.lower() == ".txt" and "," not in text):
        return [[n] for n in parse_names(text, option)], False
    lines = read_text_lines(path, f"{option}: class list file", NAME_HINT)
    classes = [names for names in (split_synonyms(line) for line in lines) if names]
    if not classes:
        raise UserError(f"{option} is empty: give names separated by commas or a .txt file with one class a line")
    return classes, True


def group_counts(text: str) -> list[int]:
    """``--group-counts``: k-means group counts separated by commas (``12,16,24``), each at least 1."""
    try:
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected group counts separated by commas (e.g. 12,16,24), got {text!r}")
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"group counts must be at least 1, got {text!r}")
    return counts


GROUP_COUNTS_HELP = ("k-means group counts, comma-separated (e.g. 12,16,24): one grouping each, pixel probabilities "
                     "averaged over them (default: the protocol's, else the model's own k)")
GRID_SHIFTS_HELP = ("embed the regions on N x N CLIP patch grids moved by patch/N pixels and average the probabilities "
                    "(N^2 region passes; 1: the plain grid; default: the protocol's)")


def add_spatial_args(p: argparse.ArgumentParser) -> None:
    """Options of the spatial reading of referring sentences and of the proposals' support prior."""
    g = p.add_argument_group("spatial language and proposal support")
    g.add_argument("--spatial", action="store_true",
                   help="read where the sentence puts its target (left, bigger, second from the top, left of the "
                        "bus, ...) and let the proposals' geometry choose among those of the right kind (points: "
                        "move the positive map onto that proposal)")
    g.add_argument("--spatial-margin", type=float,
                   help="candidates: proposals whose appearance score is within this of the best (default 2.0, "
                        "points 1.0 standard deviations of the positive map; chosen on the workbench's testA + "
                        "testB)")
    g.add_argument("--spatial-weight", type=float,
                   help="weight of the geometric score, in the same units (default 2.0, points 8.0)")
    g.add_argument("--support-weight", type=float,
                   help="multiscale proposals: add this x log(support) to each proposal's appearance score, support "
                        "being how many candidates agree on its region, so whole objects beat their parts "
                        "(default 2.0, points 0.5; 0: off)")
    g.add_argument("--area-weight", type=float,
                   help="multiscale proposals: add this x log(area share) too (default -0.5: an object beats the "
                        "larger regions around it; points 0.0)")


def spatial_options(args: argparse.Namespace) -> dict:
    """``Referrer`` / ``PointReferrer`` options from :func:`add_spatial_args`' options (those given; the margin and
    weight only with ``--spatial``)."""
    for name in ("spatial_margin", "spatial_weight", "support_weight"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    out = {name: getattr(args, name) for name in ("support_weight", "area_weight") if getattr(args, name) is not None}
    if not args.spatial:
        if args.spatial_margin is not None or args.spatial_weight is not None:
            raise UserError("--spatial-margin and --spatial-weight need --spatial")
        return out
    out["spatial"] = True
    out.update({name: getattr(args, name) for name in ("spatial_margin", "spatial_weight")
                if getattr(args, name) is not None})
    return out


def add_promptable_args(p: argparse.ArgumentParser, *, with_sam: bool = True) -> None:
    """Options choosing the promptable segmenter of point prompting (``--method points``); ``with_sam=False``
    when the parser has ``--sam-checkpoint`` and ``--sam-model-type`` already."""
    g = p.add_argument_group("point prompting (--method points)")
    g.add_argument("--promptable", metavar="CKPT",
                   help="workbench-promptable-segmenter checkpoint (from `textseg train-promptable`; a stand-in for "
                        "SAM)")
    if with_sam:
        g.add_argument("--sam-checkpoint", help="SAM checkpoint file (sam_vit_h_4b8939.pth, ...)")
        g.add_argument("--sam-model-type", default="vit_h", choices=["vit_h", "vit_l", "vit_b"])
    g.add_argument("--point-generator", metavar="CKPT",
                   help="trained point generator (from `textseg train-points`); without it: the baseline, one "
                        "positive point at the peak of the text-patch similarity")
    g.add_argument("--points", type=int, default=1, metavar="K", help="positive points (default 1)")
    g.add_argument("--negative-points", type=int, default=None, metavar="K",
                   help="negative points (default 1 with --point-generator; the baseline has none)")
    g.add_argument("--generator-weight", type=float, metavar="W",
                   help="positive map: W x the generator's + (1 - W) x the text-patch cosine, both standardised "
                        "(default 1: the generator's alone)")


def points_options(args: argparse.Namespace) -> dict:
    """``Segmenter.refer(method="points")`` options from :func:`add_promptable_args`' options."""
    from textseg.ris.points import load_point_generator

    if args.points < 1:
        raise UserError(f"--points must be >= 1, got {args.points}")
    if args.negative_points is not None and args.negative_points < 0:
        raise UserError(f"--negative-points must be >= 0, got {args.negative_points}")
    if args.negative_points and not args.point_generator:
        raise UserError("--negative-points needs --point-generator (the baseline has no negative map)")
    generator = load_point_generator(args.point_generator)[0] if args.point_generator else None
    out = {"promptable": promptable_from_args(args), "generator": generator, "n_positive": args.points,
           "n_negative": 1 if args.negative_points is None else args.negative_points, **spatial_options(args)}
    if args.generator_weight is not None:
        if not args.point_generator:
            raise UserError("--generator-weight needs --point-generator")
        if not 0.0 <= args.generator_weight <= 1.0:
            raise UserError(f"--generator-weight must be in [0, 1], got {args.generator_weight}")
        out["generator_weight"] = args.generator_weight
    return out


def promptable_from_args(args: argparse.Namespace):
    """The promptable segmenter that ``--promptable`` or ``--sam-checkpoint`` names."""
    from textseg.ris.promptable import PromptableSegmenter

    if bool(args.promptable) == bool(args.sam_checkpoint):
        raise UserError("--method points needs a promptable segmenter: give --promptable CKPT (the workbench "
                        "stand-in) or --sam-checkpoint FILE, one of them")
    device = args.device or None
    if args.promptable:
        return PromptableSegmenter.from_workbench(args.promptable, device=device)
    return PromptableSegmenter.from_sam(args.sam_checkpoint, args.sam_model_type, device=device)

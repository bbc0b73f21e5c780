"""`textseg segment` and `textseg models`.

``textseg segment`` takes image files and folders (searched recursively), decodes them in DataLoader workers and
segments them in batches (:meth:`textseg.Segmenter.predict_batch`). Under ``torchrun --nproc_per_node=N`` each
process segments a disjoint share of the inputs on its own GPU (:func:`rank_slice`); no process group is needed.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence, TypeVar

from textseg.cli.common import (GRID_SHIFTS_HELP, GROUP_COUNTS_HELP, add_model_args, group_counts, model_from_args,
                                parse_classes, parse_names)
from textseg.errors import UserError

# --option -> Protocol field; an option left out keeps the value of --protocol (or the defaults).
_PROTOCOL_OPTIONS = ("templates", "background", "bg_threshold", "bg_score", "short_side", "max_long_side", "window",
                     "stride", "group_counts", "grid_shifts", "group_vote", "smooth_sigma",
                     "pamr_steps")
# Files a folder argument contributes (suffix compared case-insensitively); a file named directly is taken as it is.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
OUTPUT_SUFFIXES = ("_labels.png", "_overlay.png", ".json")
T = TypeVar("T")


def _protocol(args: argparse.Namespace, model_protocol: str | None = None):
    """The protocol the options describe: --protocol (else the model's own, else the defaults) with single fields
    changed."""
    from textseg.config import Protocol, load_protocol

    name = args.protocol or model_protocol
    base = load_protocol(name) if name else Protocol()
    changes = {k: getattr(args, k) for k in _PROTOCOL_OPTIONS if getattr(args, k) is not None}
    if changes.get("background") == "none":
        changes["background"] = None
    for name in ("short_side", "max_long_side"):
        if changes.get(name) == 0:
            changes[name] = None
    if args.background_classes:
        changes["background_classes"] = parse_names(args.background_classes, "--background-classes")
    return base.replace(**changes) if changes else base


@dataclass(frozen=True)
class Input:
    """One image to segment.

    Attributes:
        path: the image file.
        root: the IMAGE argument it came from (a folder), or the file's own folder.
        key: where its outputs go under --out, without suffix: ``sub/a`` → ``sub/a_labels.png``, ``sub/a.json``, ...
    """

    path: Path
    root: Path
    key: PurePosixPath

    def outputs(self, out: Path) -> list[Path]:
        """Its label PNG, overlay PNG and JSON summary under ``out``."""
        return [out / f"{self.key}{suffix}" for suffix in OUTPUT_SUFFIXES]


def _folder_images(folder: Path, out: Path | None) -> list[Path]:
    """The image files below ``folder``, sorted; hidden names and anything under ``out`` left out."""
    skip = out.resolve() if out is not None else None
    return sorted(f for f in folder.rglob("*")
                  if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(folder).parts)
                  and not (skip is not None and skip in f.resolve().parents))


def collect_inputs(args: Sequence[str | Path], out: Path | None = None) -> list[Input]:
    """The images of the IMAGE arguments, in order, each with an output key unique among them all.

    A file is keyed by its stem. A folder gives every image below it (:data:`IMAGE_SUFFIXES`), keyed by its path
    relative to the folder, so that --out mirrors the tree. A file reached twice is segmented once. Keys that
    still collide (``d1/same.jpg`` and ``d2/same.jpg``; ``a.jpg`` and ``a.png``) are made unique by
    :func:`unique_keys`, so no output is written twice.

    Raises:
        UserError: an argument is neither a file nor a folder, or a folder holds no image.
    """
    found: list[Input] = []
    for arg in map(Path, args):
        if arg.is_file():
            found.append(Input(arg, arg.parent, PurePosixPath(arg.stem)))
        elif arg.is_dir():
            files = _folder_images(arg, out)
            if not files:
                raise UserError(f"folder {arg} holds no image ({' '.join(IMAGE_SUFFIXES)})")
            found += [Input(f, arg, PurePosixPath(f.relative_to(arg).with_suffix("").as_posix())) for f in files]
        else:
            raise UserError(f"image {arg} does not exist")
    seen: set[Path] = set()
    inputs = []
    for item in found:
        if item.path.resolve() not in seen:
            seen.add(item.path.resolve())
            inputs.append(item)
    keys = unique_keys([(i.path, i.root, i.key) for i in inputs])
    return [Input(i.path, i.root, k) for i, k in zip(inputs, keys)]


def _clashes(keys: Sequence[PurePosixPath]) -> list[list[int]]:
    """Indices of keys that name the same outputs, compared case-insensitively as some file systems do."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(str(k).casefold(), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def unique_keys(items: Sequence[tuple[Path, Path, PurePosixPath]]) -> list[PurePosixPath]:
    """Unique output keys for (path, root, key) items, changing only keys that collide.

    Colliding keys from different roots go under the fewest last folder names that tell those roots apart
    (``d1/same.jpg``, ``d2/same.jpg`` → ``d1/same``, ``d2/same``); those that still collide (one root) get their
    file suffix (``a_jpg``, ``a_png``); anything left then gets ``_2``, ``_3``, ... in input order.
    """
    keys = [k for _, _, k in items]
    for group in _clashes(keys):
        roots = {i: items[i][1].resolve().parts[1:] for i in group}  # parts[0] is the anchor
        distinct = set(roots.values())
        for depth in range(1, max(map(len, distinct)) + 1):
            if len(distinct) > 1 and len({r[-depth:] for r in distinct}) == len(distinct):
                for i in group:
                    keys[i] = PurePosixPath(*roots[i][-depth:], keys[i])
                break
    for group in _clashes(keys):
        for i in group:
            if items[i][0].suffix:
                keys[i] = keys[i].with_name(f"{keys[i].name}_{items[i][0].suffix.lstrip('.')}")
    taken = {str(k).casefold() for k in keys}
    for group in _clashes(keys):
        for i in group[1:]:
            n = 2
            while str(keys[i].with_name(f"{keys[i].name}_{n}")).casefold() in taken:
                n += 1
            keys[i] = keys[i].with_name(f"{keys[i].name}_{n}")
            taken.add(str(keys[i]).casefold())
    return keys


def rank_and_world(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """This process's ``RANK`` of ``WORLD_SIZE``, as torchrun sets them (0 of 1 without torchrun)."""
    env = os.environ if env is None else env
    rank, world = int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK {rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
    return rank, world


def rank_slice(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The share of ``items`` that process ``rank`` of ``world`` segments: every ``world``-th item from ``rank``.
    The shares are disjoint, together hold every item once, and differ in size by at most one."""
    return list(items[rank::world])


class ImageFiles:
    """The images of a list of :class:`Input` as a map-style dataset, decoded where the DataLoader runs it (its
    workers). An unreadable file gives its one-line error instead of an array, so one bad file stops no other."""

    def __init__(self, inputs: Sequence[Input], max_pixels: int | None = None):
        self.inputs = list(inputs)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[Input, Any, str | None]:
        from textseg.io import load_image

        try:
            return self.inputs[i], load_image(self.inputs[i].path, self.max_pixels), None
        except UserError as err:
            return self.inputs[i], None, str(err)


def as_list(batch: list) -> list:
    """DataLoader collate function that keeps a batch of differently sized images as a list."""
    return batch


def cmd_segment(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from textseg.io import (atomic_write_text, check_writable_folder, label_png_bits, labels_to_rles, save_png,
                            write_label_png)
    from textseg.segmenter import Segmenter
    from textseg.visualize import overlay
    from textseg.vocab import Vocabulary

    if args.batch_size < 1 or args.num_workers < 0:
        raise UserError("--batch-size must be at least 1 and --num-workers at least 0")
    if args.max_pixels is not None and args.max_pixels <= 0:
        raise UserError(f"--max-pixels must be positive, got {args.max_pixels}")
    classes, from_file = parse_classes(args.classes, "--classes")
    out = Path(args.out)
    rank, world = rank_and_world()
    inputs = rank_slice(collect_inputs(args.images, out), rank, world)  # every rank keys all inputs the same way
    existing = [o for item in inputs for o in item.outputs(out) if o.exists()]
    if existing and not args.overwrite:
        raise UserError(f"{existing[0]} exists ({len(existing)} output file(s) would be replaced); "
                        "pass --overwrite to replace them, or choose another --out")
    check_writable_folder(out, "--out")
    if world > 1 and args.device is None and torch.cuda.is_available():
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # torchrun: one GPU per process
    model = model_from_args(args)
    protocol = _protocol(args, model.config.protocol)
    if from_file and protocol.class_file_background:  # their class files: the first line names the background
        if len(classes) < 2:
            raise UserError(f"--classes {args.classes}: under protocol {protocol.name} the first line names the "
                            "background and the classes follow; the file has one line")
        if not args.background_classes:
            protocol = protocol.replace(background_classes=classes[0])
        classes = classes[1:]
    Vocabulary.make(classes, protocol.background_classes)
    bits = label_png_bits(len(classes) + 1)
    segmenter = Segmenter(model, protocol, text_cache_dir=False if args.no_text_cache else None)
    workers = min(args.num_workers, -(-len(inputs) // args.batch_size))  # no more workers than batches
    # one batch ahead per worker: decoded full-size images are what fills host memory
    loader = torch.utils.data.DataLoader(ImageFiles(inputs, args.max_pixels), batch_size=args.batch_size,
                                         num_workers=workers, collate_fn=as_list,
                                         prefetch_factor=1 if workers else None)
    failed: list[str] = []
    desc = "segment" if world == 1 else f"segment rank {rank}/{world}"
    with tqdm(total=len(inputs), desc=desc, unit="img", disable=args.no_progress or len(inputs) < 2) as bar:
        for batch in loader:
            failed += [err for _, _, err in batch if err is not None]
            good = [(item, arr) for item, arr, err in batch if err is None]
            results = segmenter.predict_batch([arr for _, arr in good], classes, batch_size=args.batch_size)
            for (item, arr), res in zip(good, results):
                labels_png, overlay_png, summary_json = item.outputs(out)
                summary_json.parent.mkdir(parents=True, exist_ok=True)
                write_label_png(res.labels, labels_png, bits)
                save_png(overlay(arr, res.labels, names=res.classes), overlay_png)
                shares = res.pixel_share()
                summary = {"image": str(item.path), "size": list(res.labels.shape),
                           "model": segmenter.model.config.name, "checkpoint": args.checkpoint,
                           "classes": res.classes, "pixel_share": shares,
                           "labels_png": labels_png.name, "labels_png_bits": bits, "overlay_png": overlay_png.name}
                if args.rle:
                    summary["rle"] = labels_to_rles(res.labels, res.classes)
                atomic_write_text(summary_json, json.dumps(summary, indent=2))
                bar.write(f"{item.path}: " + ", ".join(f"{k} {v:.1%}" for k, v in sorted(shares.items(),
                                                                                      key=lambda kv: -kv[1])))
            bar.update(len(batch))
    done = len(inputs) - len(failed)
    if failed:
        more = f" (and {len(failed) - 1} more unreadable)" if len(failed) > 1 else ""
        raise UserError(f"{failed[0]}{more}; the other {done} image(s) were segmented into {out}")
    print(f"wrote label maps, overlays and JSON summaries of {done} image(s) to {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from textseg.factory import get_model_config, list_models

    for name in list_models():
        print(f"{name:28s} {get_model_config(name).description}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from textseg.io import MAX_PIXELS

    p = sub.add_parser("segment", help="open-vocabulary semantic segmentation of images")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files and folders (searched recursively; --out mirrors a folder's tree)")
    p.add_argument("--classes", required=True,
                   help="comma-separated class names, or a .txt file: one class a line, synonyms separated by ', ' or "
                        "'; '; under the dense methods' protocols (sclip-voc21, naclip-voc21, proxyclip-voc21) the "
                        "first line names the background, as in their class files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--protocol", help="start from a protocol preset (groupvit, sclip, workbench, sclip-voc21, "
                                      "naclip-voc21, proxyclip-voc21) or YAML file (default: the model's own, e.g. "
                                      "naclip-voc21 for naclip-b16); the options below change single fields")
    p.add_argument("--templates", choices=["single", "imagenet80"], help="prompt templates (default imagenet80)")
    p.add_argument("--background", choices=["threshold", "classes", "none"], help="background rule (default threshold)")
    p.add_argument("--bg-threshold", type=float, help="probability threshold of --background threshold (default 0.5)")
    p.add_argument("--background-classes", help="names scored as background (comma-separated or .txt)")
    p.add_argument("--bg-score", type=float, help="constant background similarity (TCL-style background score)")
    p.add_argument("--short-side", type=int, help="resize the short side to this (default 448; 0 keeps the size)")
    p.add_argument("--max-long-side", type=int,
                   help="shrink further so that the long side is at most this (default 2048; 0: no cap)")
    p.add_argument("--window", type=int, help="sliding window size (e.g. 448)")
    p.add_argument("--stride", type=int, help="sliding window stride (e.g. 224)")
    p.add_argument("--group-counts", type=group_counts, help=GROUP_COUNTS_HELP)
    p.add_argument("--grid-shifts", type=int, metavar="N", help=GRID_SHIFTS_HELP)
    p.add_argument("--smooth-sigma", type=float, metavar="PX",
                   help="smooth the class probabilities by a Gaussian of this many pixels (resized scale) before "
                        "labelling groups (default 0: none)")
    p.add_argument("--pamr-steps", type=int, metavar="N",
                   help="then refine them along the image's colour edges by N steps of PAMR (resized scale; "
                        "dense modes: their logits at the input size; default 0: none)")
    p.add_argument("--group-vote", action="store_true", default=None,
                   help="(dense modes) average the class scores over each group of the model's grouping")
    p.add_argument("--rle", action="store_true", help="add each class's mask as COCO RLE to the JSON summary")
    p.add_argument("--no-text-cache", action="store_true", help="do not read or write the on-disk text cache")
    p.add_argument("--batch-size", type=int, default=32,
                   help="images decoded per batch and crops (whole images or windows) per model call (default 32)")
    p.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader processes that decode images (default min(4, CPUs); 0 decodes in this one)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse image files with more pixels than this, before decoding (default {MAX_PIXELS:,})")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist (else an error)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    p.set_defaults(func=cmd_segment)

    m = sub.add_parser("models", help="list model names")
    m.set_defaults(func=cmd_models)

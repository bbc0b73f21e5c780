"""`textseg bench segment|train|memory|refer|peers`: speed and memory as JSON plus Markdown (see :mod:`textseg.bench`)."""

from __future__ import annotations

import argparse

from textseg.errors import UserError


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _count(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    return parse


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in ("whole", "window") for m in modes):
        raise argparse.ArgumentTypeError(f"expected 'whole', 'window' or 'whole,window', got {text!r}")
    return modes


def _emit(report: dict, markdown: str, out: str | None, name: str) -> None:
    from textseg.bench import write_report

    print(markdown, end="")
    if out:
        json_path, md_path = write_report(report, out, name, markdown)
        print(f"wrote {json_path} and {md_path}")


def cmd_segment(args: argparse.Namespace) -> int:
    from textseg.assets import voc_sample_image
    from textseg.bench import bench_segment_cold_warm, bench_segment_stages, segment_markdown

    if (args.window is None) != (args.stride is None) and "window" in args.modes:
        raise UserError("give --window and --stride together")
    window = args.window if args.window is not None else 448
    stride = args.stride if args.stride is not None else 224
    image = args.image or str(voc_sample_image())
    short_side = args.short_side or None
    report = bench_segment_stages(
        args.model, image=image, pretrained=args.pretrained, device=args.device, amp=args.amp,
        batch_sizes=args.batch_sizes, modes=args.modes, window=window, stride=stride, short_side=short_side,
        templates=args.templates, repeats=args.repeats, warmup=args.warmup, flops=not args.no_flops)
    if args.cache != "none":  # the text cache cold and warm, each in a fresh process
        report["processes"] = bench_segment_cold_warm(
            args.cache, args.cache_dir, image=image, model=args.model, pretrained=args.pretrained,
            templates=args.templates, repeats=args.repeats, short_side=short_side, window=None, stride=None,
            device=report["device"])
    _emit(report, segment_markdown(report), args.out, "bench_segment")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from textseg.bench import bench_train, train_markdown

    report = bench_train(args.model, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size,
                         image_size=args.image_size, device=args.device, amp=args.amp, seed=args.seed)
    _emit(report, train_markdown(report), args.out, "bench_train")
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from textseg.bench import bench_segment_memory, memory_markdown, parse_memory_case

    cases = [parse_memory_case(c) for c in args.cases]
    report = bench_segment_memory(cases, model=args.model, templates=args.templates, num_workers=args.num_workers,
                                  device=args.device)
    _emit(report, memory_markdown(report), args.out, "bench_memory")
    return 0


def cmd_refer(args: argparse.Namespace) -> int:
    from textseg.bench import bench_refer, refer_markdown

    report = bench_refer(args.model, image=args.image, counts=args.proposals, methods=args.methods,
                         device=args.device, repeats=args.repeats, short_side=args.short_side or None,
                         spatial=args.spatial)
    _emit(report, refer_markdown(report), args.out, "bench_refer")
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    from pathlib import Path

    from textseg.assets import voc_sample_image
    from textseg.bench.peers import PEER_MODELS, compare_with_peers, peers_markdown

    if not (Path(args.peerbench) / "run.py").is_file():
        raise UserError(f"--peerbench {args.peerbench}: no run.py there (copy ../shared/peerbench to a writable "
                        "folder first)")
    peers = tuple(PEER_MODELS) if args.peers == "all" else tuple(p.strip() for p in args.peers.split(","))
    unknown = [p for p in peers if p not in PEER_MODELS]
    if unknown:
        raise UserError(f"--peers: unknown method {unknown[0]!r} (known: {', '.join(PEER_MODELS)})")
    report = compare_with_peers(args.peerbench, image=args.image or str(voc_sample_image()), peers=peers,
                                repeats=args.repeats, warmup=args.warmup, threads=args.threads, seed=args.seed)
    _emit(report, peers_markdown(report), args.out, "bench_peers")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="speed and memory benchmarks (JSON + Markdown)")
    bsub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)

    s = bsub.add_parser("segment", help="Segmenter.predict_batch per stage: batch sizes, whole image and sliding "
                                        "window, text cache cold and warm")
    s.add_argument("--image", help="image to segment (default: the bundled VOC 2012 image 2007_000033)")
    s.add_argument("--model", default="dino-s16-clip-b16",
                   help="model config name or JSON file (default %(default)s)")
    s.add_argument("--pretrained", action="store_true", help="load real weights (default: random weights, real size)")
    s.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    s.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16 autocast (CUDA only; ignored with a message on the CPU)")
    s.add_argument("--batch-sizes", type=_ints, default=[1, 32], metavar="N,N",
                   help="images per predict_batch call (= crops per model call), default 1,32")
    s.add_argument("--modes", type=_modes, default=["whole", "window"], metavar="MODES",
                   help="whole, window or whole,window (default both)")
    s.add_argument("--window", type=int, help="sliding-window side at the resized scale (default 448)")
    s.add_argument("--stride", type=int, help="sliding-window stride (default 224)")
    s.add_argument("--templates", default="imagenet80", choices=["single", "imagenet80"])
    s.add_argument("--short-side", type=int, default=448, help="0 keeps the image size")
    s.add_argument("--repeats", type=_count(1), default=3, help="timed calls per batch size and mode")
    s.add_argument("--warmup", type=_count(0), default=1, help="untimed calls before them")
    s.add_argument("--no-flops", action="store_true", help="skip counting FLOPs (one extra batch-1 call per mode)")
    s.add_argument("--cache", choices=["cold", "warm", "both", "none"], default="both",
                   help="also time a fresh process with an empty text cache (cold), then one with the cache it "
                        "filled (warm); none skips them")
    s.add_argument("--cache-dir", help="text cache folder of those processes (default: a fresh temporary one)")
    s.add_argument("--out", metavar="DIR", help="write bench_segment.json and bench_segment.md here")
    s.set_defaults(func=cmd_segment)

    m = bsub.add_parser("memory", help="peak memory of `textseg segment` on large images and long class lists, each "
                                       "case in a fresh process")
    m.add_argument("cases", nargs="*", default=["12000x12000:21", "500x366:500"], metavar="WxH:CLASSES",
                   help="image size and class count per case (default: 12000x12000:21 500x366:500)")
    m.add_argument("--model", default="dino-s16-clip-b16", help="model (random weights at real size)")
    m.add_argument("--templates", default="imagenet80", choices=["single", "imagenet80"])
    m.add_argument("--num-workers", type=_count(0), default=0, help="--num-workers of the runs (default 0)")
    m.add_argument("--device", default="cpu")
    m.add_argument("--out", metavar="DIR", help="write bench_memory.json and bench_memory.md here")
    m.set_defaults(func=cmd_memory)

    r = bsub.add_parser("refer", help="referring segmentation per image for N proposals: Global-Local CLIP crops "
                                      "against region tokens")
    r.add_argument("--model", default="dino-s16-clip-b16", help="model (random weights at real size)")
    r.add_argument("--image", help="image (default: the bundled VOC 2012 image 2007_000033)")
    r.add_argument("--proposals", type=_ints, default=[10, 50, 100], metavar="N,N", help="proposal counts")
    r.add_argument("--methods", type=lambda t: [m.strip() for m in t.split(",") if m.strip()],
                   default=["global-local", "region"], metavar="M,M", help="global-local and/or region")
    r.add_argument("--repeats", type=_count(1), default=1, help="timed calls per figure (the best is kept)")
    r.add_argument("--short-side", type=int, default=448, help="resize for the region tokens (0 keeps the size)")
    r.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    r.add_argument("--spatial", action="store_true",
                   help="also time whole refer calls without and with the spatial reading (its overhead)")
    r.add_argument("--out", metavar="DIR", help="write bench_refer.json and bench_refer.md here")
    r.set_defaults(func=cmd_refer)

    t = bsub.add_parser("train", help="training samples/s: textseg step (grouping + region tokens) against a plain "
                                      "open_clip image-text step on the same synthetic batch")
    t.add_argument("--model", default="labxy-small-workbench",
                   help="model config name or JSON file (default %(default)s)")
    t.add_argument("--steps", type=_count(1), default=10, help="timed steps per variant")
    t.add_argument("--warmup", type=_count(0), default=2, help="untimed steps before them")
    t.add_argument("--batch-size", type=_count(1), help="samples per step (default 64 on CUDA, 8 on the CPU)")
    t.add_argument("--image-size", type=int, help="square image side (default: the CLIP's input size)")
    t.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when available)")
    t.add_argument("--amp", choices=["auto", "bf16", "none"], default="auto",
                   help="bf16 autocast: auto = on CUDA, as training does (ignored with a message on the CPU)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", metavar="DIR", help="write bench_train.json and bench_train.md here")
    t.set_defaults(func=cmd_train)

    q = bsub.add_parser("peers", help="sclip-b16, naclip-b16 and proxyclip-b16 against SCLIP's, NACLIP's and "
                                      "ProxyCLIP's own code (a peerbench folder) on the same random weights: time, "
                                      "text time, peak memory, output differences")
    q.add_argument("--peerbench", required=True, help="a writable copy of peerbench (its run.py runs the peers)")
    q.add_argument("--peers", default="all", help="sclip, naclip, proxyclip, comma-separated, or all (default)")
    q.add_argument("--image", help="image (default: the bundled VOC 2012 image; resized to short side 336 first)")
    q.add_argument("--repeats", type=_count(1), default=3, help="timed images per system (median reported)")
    q.add_argument("--warmup", type=_count(0), default=1, help="untimed images before them")
    q.add_argument("--threads", type=_count(1), default=2, help="torch threads of both systems (default 2)")
    q.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    q.add_argument("--out", metavar="DIR", help="write bench_peers.json and bench_peers.md here")
    q.set_defaults(func=cmd_peers)

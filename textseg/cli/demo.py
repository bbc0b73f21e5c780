"""`textseg demo`: a local page to try a model (the ``textseg[demo]`` extra)."""

from __future__ import annotations

import argparse

from textseg.cli.common import add_promptable_args, check_device, points_options
from textseg.errors import UserError


def cmd_demo(args: argparse.Namespace) -> int:
    from textseg.demo import load_demo_model, serve

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.model is None and args.no_pretrained:
        raise UserError("--no-pretrained needs --model NAME")
    device = check_device(args.device)
    wants_points = bool(args.promptable or args.sam_checkpoint or args.point_generator)
    demo = load_demo_model(args.model, args.checkpoint, runs=args.runs, pretrained=not args.no_pretrained,
                           device=device, points=(lambda: points_options(args)) if wants_points else None)
    print(f"textseg demo: {demo.source}")
    for line in demo.warnings:
        print(f"  warning: {line}")
    if demo.error:
        print(f"  error (shown on the page): {demo.error}")
    print(f"  open http://{args.host}:{args.port}/ (Ctrl-C stops the server)", flush=True)
    serve(demo, host=args.host, port=args.port)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="a local page: upload an image, type classes or a sentence, see the result "
                                    "(pip install 'textseg[demo]')")
    p.add_argument("--model", help="model name or JSON config (default: the --checkpoint's model; with neither, "
                                   "the newest workbench checkpoint under --runs, else random weights)")
    p.add_argument("--checkpoint", help="a textseg training checkpoint")
    p.add_argument("--no-pretrained", action="store_true", help="--model with random weights (a pipeline check)")
    p.add_argument("--runs", default="runs", help="where to look for a workbench checkpoint (default runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    add_promptable_args(p)
    p.set_defaults(func=cmd_demo)

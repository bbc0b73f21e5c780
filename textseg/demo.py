"""``textseg demo``: a local page to try a model — upload an image, type classes or a sentence, look at the result.

A small Starlette app (the ``textseg[demo]`` extra: starlette, uvicorn, python-multipart) serving one static HTML
page (package data ``assets/demo.html``) and the JSON API the page calls:

- ``GET /``: the page; ``GET /api/info``: the model, where its weights came from, warnings, defaults and limits;
  ``GET /api/example``: the bundled Pascal VOC sample;
- ``POST /api/segment`` (multipart: ``image`` or ``example=1``, ``classes``, ``background``, ``bg_threshold``,
  ``background_classes``, ``bg_score``, ``templates``, ``rle``): overlay, colour label map, label PNG, legend with
  pixel shares, a JSON summary and optional COCO RLE;
- ``POST /api/refer`` (``image`` or ``example=1``, ``sentence``, ``method``, ``no_target_threshold``, ``rle``): the
  mask, its overlay, the chosen proposal's score (the points of the point method), or "no target".

Nothing is written to disk: uploads are decoded in memory (python-multipart spools a large one to the system's
temporary folder) and results go back as data URLs. A user mistake (not an image, too large, no classes, too many)
is a 400 answer with one line the page shows; any other failure is logged and answered with a 500 line: the server
keeps serving. Requests are served one model call at a time.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from textseg.assets import demo_page, voc_sample_image
from textseg.config import Protocol
from textseg.errors import UserError
from textseg.io import decode_image

_log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 40 * 1024 * 1024
MAX_PIXELS = 40_000_000  # 40 MP, e.g. 7,700 x 5,200: a bigger upload is refused from its header
MAX_CLASSES = 150
MAX_SENTENCE = 500
EXAMPLE_CLASSES = "aeroplane, person, car"
EXAMPLE_SENTENCE = "the large airplane in the middle"
RANDOM_NOTE = ("the output is meaningless (it shows that the pipeline runs, not what a model sees). Pass "
               "--checkpoint FILE, or train one with `textseg quickstart`.")
RANDOM_WARNING = f"random weights: no trained model was found, so {RANDOM_NOTE}"


@dataclass
class DemoModel:
    """What the page serves: a model (None when it could not be loaded) and what to say about it.

    Attributes:
        model: the model, or None: then ``error`` says why and every request is answered with it.
        source: where its weights came from, in words (shown on the page).
        protocol: the default protocol of the page's requests (``workbench`` for a workbench-trained model).
        warnings: lines the page shows in a warning box (random weights, a checkpoint found under ``runs/``).
        error: why no model could be loaded (e.g. a missing weight file: what to download and where to put it).
        points: the point method's options for :meth:`Segmenter.refer <textseg.segmenter.Segmenter.refer>`
            (``promptable``, ``generator``, ``n_positive``, ``n_negative``), or None: the method is not offered.
    """

    model: Any
    source: str
    protocol: Protocol = field(default_factory=Protocol)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    points: dict[str, Any] | None = None


def _workbench_model(name: Any) -> bool:
    return isinstance(name, str) and name.endswith("-workbench")


def find_workbench_checkpoint(runs: str | Path = "runs", limit: int = 200) -> Path | None:
    """The newest textseg checkpoint under ``runs`` (recursively) of a workbench model (a model config named
    ``*-workbench``; a run's step checkpoints count), or None. Other files (grouping backbones, point generators,
    unreadable files) are passed over; at most the ``limit`` newest ``*.pt`` files are opened."""
    from textseg.artifacts import read_checkpoint

    root = Path(runs)
    if not root.is_dir():
        return None
    files = sorted(root.rglob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files[:limit]:
        try:
            config = read_checkpoint(path).get("model_config")
        except UserError:
            continue
        if _workbench_model((config or {}).get("name")):
            return path
    return None


def load_demo_model(model: str | None = None, checkpoint: str | Path | None = None, *, runs: str | Path = "runs",
                    pretrained: bool = True, device: str = "cpu",
                    points: Callable[[], dict[str, Any]] | None = None) -> DemoModel:
    """The model the page serves.

    ``checkpoint`` (with or without ``model``) loads that checkpoint; ``model`` alone loads the model with its
    pretrained weights (or random ones with ``pretrained=False``, with a warning); with neither, the newest
    workbench checkpoint under ``runs`` is used, else the default model with random weights and a warning that
    its output is meaningless. A model that cannot be loaded (a missing weight file, an unreadable checkpoint) is
    not raised: the returned :class:`DemoModel` has ``model=None`` and the one-line reason in ``error``, which the
    page shows. ``points`` builds the point method's options (its errors go to ``error`` too).
    """
    from textseg.config import load_protocol
    from textseg.factory import DEFAULT_MODEL, create_model

    warnings: list[str] = []
    if checkpoint is None and model is None:
        found = find_workbench_checkpoint(runs)
        if found is not None:
            checkpoint = found
            warnings.append(f"no model was named: using the newest workbench checkpoint under {runs}/, {found}")
    try:
        if checkpoint is not None:
            net = create_model(model, checkpoint=checkpoint, device=device)
            source = f"checkpoint {checkpoint}"
        elif model is None:
            net = create_model(DEFAULT_MODEL, pretrained=False, device=device, seed=0)
            source = f"{DEFAULT_MODEL} with random weights"
            warnings.append(RANDOM_WARNING)
        else:
            net = create_model(model, pretrained=pretrained, device=device, seed=0)
            source = f"{model} ({'pretrained weights' if pretrained else 'random weights'})"
            if not pretrained:
                warnings.append(f"random weights: {RANDOM_NOTE}")
        point_options = points() if points is not None else None
    except UserError as err:  # MissingWeightsError and ConfigError are UserErrors
        what = f"checkpoint {checkpoint}" if checkpoint is not None else f"model {model or DEFAULT_MODEL}"
        return DemoModel(None, what, warnings=warnings, error=str(err))
    if _workbench_model(net.config.name):
        protocol = load_protocol("workbench")
    else:
        protocol = load_protocol(net.config.protocol) if net.config.protocol else Protocol()
    if net.config.dense.mode is not None:  # say which published method, and which numbers, the page gives
        source = f"{source}: {net.config.description}"
    return DemoModel(net.eval(), source, protocol, warnings, points=point_options)


# ---------------------------------------------------------------------------------------------------- requests
def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _checked(form: Mapping[str, Any], name: str) -> bool:
    return str(form.get(name, "")).lower() in ("1", "true", "on", "yes")


def _hex(colour: np.ndarray) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in colour[:3])


def parse_class_list(text: str, what: str = "classes") -> list[str]:
    """Comma-separated (or one per line) names, trimmed, empties dropped; at most :data:`MAX_CLASSES`."""
    names = [n.strip() for n in text.replace("\n", ",").split(",") if n.strip()]
    if len(names) > MAX_CLASSES:
        raise UserError(f"{len(names)} {what}: the demo takes at most {MAX_CLASSES} (`textseg segment` takes more)")
    return names


def _float(form: Mapping[str, Any], name: str, default: float | None, lo: float, hi: float) -> float | None:
    raw = str(form.get(name, "") or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{name} must be a number, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise UserError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
    return value


def class_protocol(base: Protocol, form: Mapping[str, Any]) -> Protocol:
    """The page's class-mode options applied to ``base``: ``background`` (threshold, classes, score, none),
    ``bg_threshold``, ``background_classes``, ``bg_score``, ``templates``."""
    background = str(form.get("background") or "threshold")
    templates = str(form.get("templates") or base.templates)
    if templates not in ("single", "imagenet80"):
        raise UserError(f"templates must be single or imagenet80, got {templates[:40]!r}")
    bg_classes = parse_class_list(str(form.get("background_classes", "")), "background classes")
    changes: dict[str, Any] = {"templates": templates}
    if background == "threshold":
        changes.update(background="threshold", bg_score=None,
                       bg_threshold=_float(form, "bg_threshold", base.bg_threshold, 0.0, 1.0),
                       background_classes=bg_classes)
    elif background == "classes":
        if not bg_classes:
            raise UserError("background 'classes' needs at least one background class (e.g. sky, wall)")
        changes.update(background="classes", bg_score=None, background_classes=bg_classes)
    elif background == "score":
        score = _float(form, "bg_score", None, -1.0, 1.0)
        if score is None:
            raise UserError("background 'score' needs a constant background score (a cosine, e.g. 0.6)")
        changes.update(background="classes", bg_score=score, background_classes=bg_classes)
    elif background == "none":
        changes.update(background=None, bg_score=None, background_classes=[])
    else:
        raise UserError(f"background must be threshold, classes, score or none, got {background[:40]!r}")
    return base.replace(**changes)


class DemoService:
    """The page's work, without the web server: decode, segment, and build the JSON answers.

    Args:
        demo: the model and what to say about it (:func:`load_demo_model`).
    """

    def __init__(self, demo: DemoModel) -> None:
        from textseg.segmenter import Segmenter

        self.demo = demo
        self.segmenter = None if demo.model is None else Segmenter(demo.model, demo.protocol, text_cache_dir=False)
        self._lock = threading.Lock()
        self.example = voc_sample_image().read_bytes()
        self._example_image = decode_image(self.example, "the example")

    def methods(self) -> list[str]:
        return ["global-local", "region"] + (["points"] if self.demo.points is not None else [])

    def info(self) -> dict[str, Any]:
        p = self.demo.protocol
        return {"model": None if self.demo.model is None else self.demo.model.config.name,
                "source": self.demo.source, "warnings": self.demo.warnings, "error": self.demo.error,
                "methods": self.methods(),
                "defaults": {"classes": EXAMPLE_CLASSES, "sentence": EXAMPLE_SENTENCE, "templates": p.templates,
                             "background": "score" if p.bg_score is not None else (p.background or "none"),
                             "bg_threshold": p.bg_threshold, "bg_score": p.bg_score,
                             "background_classes": ", ".join(p.background_classes), "protocol": p.name},
                "limits": {"upload_mb": MAX_UPLOAD_BYTES // 2 ** 20, "megapixels": MAX_PIXELS / 1e6,
                           "classes": MAX_CLASSES, "sentence_chars": MAX_SENTENCE}}

    def _image(self, upload: bytes | None, name: str, example: bool) -> tuple[np.ndarray, str]:
        if self.segmenter is None:
            raise UserError(f"no model is loaded: {self.demo.error}")
        if example:
            return self._example_image, voc_sample_image().name
        if not upload:
            raise UserError("no image: choose a file (or use the example)")
        if len(upload) > MAX_UPLOAD_BYTES:
            raise UserError(f"{name} is {len(upload) / 2 ** 20:.0f} MB; the demo takes at most "
                            f"{MAX_UPLOAD_BYTES // 2 ** 20} MB")
        return decode_image(upload, f"{name!r} (the upload)", MAX_PIXELS), name

    def segment(self, form: Mapping[str, Any], upload: bytes | None = None, name: str = "upload",
                example: bool = False) -> dict[str, Any]:
        """Class mode: the image's label map for the form's classes, as the page shows it."""
        from textseg.io import encode_jpeg, encode_label_png, labels_to_rles
        from textseg.segmenter import check_class_names
        from textseg.visualize import overlay, voc_palette

        image, name = self._image(upload, name, example)
        classes = check_class_names(parse_class_list(str(form.get("classes", ""))))
        protocol = class_protocol(self.demo.protocol, form)
        start = time.perf_counter()
        with self._lock:
            result = self.segmenter.predict(image, classes, protocol)
        seconds = time.perf_counter() - start
        labels = result.labels
        counts = result.pixel_counts()
        shares = counts / max(1, labels.size)
        palette = voc_palette()  # at most MAX_CLASSES + 1 labels: the label PNG is a palette PNG in these colours
        legend = [{"label": i, "name": n, "colour": _hex(palette[i]),
                   "pixels": int(counts[i]), "share": float(shares[i])} for i, n in enumerate(result.classes)]
        summary = {"image": name, "size": [int(labels.shape[0]), int(labels.shape[1])], "classes": result.classes,
                   "shares": {e["name"]: round(e["share"], 6) for e in legend}, "model": self.demo.source,
                   "protocol": dataclasses.asdict(protocol), "seconds": round(seconds, 3)}
        out = {"summary": summary, "legend": legend, "size": summary["size"],
               "overlay": _data_url(encode_jpeg(overlay(image, labels), quality=90), "image/jpeg"),
               "labels_png": _data_url(encode_label_png(labels, 8), "image/png")}
        if _checked(form, "rle"):
            out["rle"] = labels_to_rles(labels, result.classes)
        return out

    def refer(self, form: Mapping[str, Any], upload: bytes | None = None, name: str = "upload",
              example: bool = False) -> dict[str, Any]:
        """Sentence mode: the mask a referring expression picks (or no target)."""
        from textseg.io import encode_jpeg, encode_png, mask_to_rle
        from textseg.visualize import referring_overlay

        image, name = self._image(upload, name, example)
        sentence = str(form.get("sentence", "")).strip()
        if not sentence:
            raise UserError("the sentence is empty: type what to find, e.g. 'the dog on the left'")
        if len(sentence) > MAX_SENTENCE:
            raise UserError(f"the sentence has {len(sentence)} characters; the demo takes at most {MAX_SENTENCE}")
        method = str(form.get("method") or "global-local")
        if method not in self.methods():
            raise UserError(f"method must be one of {', '.join(self.methods())}, got {method[:40]!r}"
                            + ("" if method != "points" else " (points needs `textseg demo --promptable CKPT`)"))
        threshold = _float(form, "no_target_threshold", None, -1e4, 1e4)
        start = time.perf_counter()
        with self._lock:
            if method == "points":
                if threshold is not None:
                    raise UserError("the point method has no no-target threshold")
                res = self.segmenter.refer(image, sentence, method="points", **self.demo.points)
            else:
                res = self.segmenter.refer(image, sentence, method=method, no_target_threshold=threshold,
                                           spatial=True)
        seconds = time.perf_counter() - start
        mask = np.asarray(res.mask, dtype=bool)
        points = []
        if method == "points":
            points = [{"x": float(x), "y": float(y), "label": int(lab)} for (x, y), lab in zip(res.points, res.labels)]
            no_target, index = not mask.any(), None
        else:
            no_target, index = res.no_target, res.index
        score = float(res.score) if np.isfinite(res.score) else None
        summary = {"image": name, "size": [int(mask.shape[0]), int(mask.shape[1])], "sentence": sentence,
                   "method": method, "no_target": bool(no_target), "score": score, "proposal": index,
                   "mask_share": float(mask.mean()) if mask.size else 0.0, "points": points,
                   "reading": getattr(res, "reading", None), "model": self.demo.source, "seconds": round(seconds, 3)}
        over = referring_overlay(image, None if no_target else mask, sentence, score=score,
                                 points=np.array([[p["x"], p["y"]] for p in points]) if points else None,
                                 labels=np.array([p["label"] for p in points]) if points else None)
        out = {"summary": summary, "size": summary["size"], "no_target": bool(no_target), "score": score,
               "points": points, "overlay": _data_url(encode_jpeg(over, quality=90), "image/jpeg"),
               "mask_png": _data_url(encode_png((mask * 255).astype(np.uint8)), "image/png")}
        if _checked(form, "rle"):
            out["rle"] = mask_to_rle(mask)
        return out


# ---------------------------------------------------------------------------------------------------- the app
def create_app(demo: DemoModel | DemoService):
    """The Starlette app of the page and its API (serve it with uvicorn, or :func:`serve`).

    Raises:
        UserError: the ``demo`` extra is not installed.
    """
    try:
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse, Response
        from starlette.routing import Route
    except ImportError:
        raise UserError("the demo page needs its extra: pip install 'textseg[demo]' (starlette, uvicorn, "
                        "python-multipart)") from None
    service = demo if isinstance(demo, DemoService) else DemoService(demo)

    async def index(_: Request) -> Response:
        return HTMLResponse(demo_page())

    async def info(_: Request) -> Response:
        return JSONResponse(service.info())

    async def example(_: Request) -> Response:
        return Response(service.example, media_type="image/jpeg")

    def handler(work: Callable[..., dict[str, Any]]):
        async def endpoint(request: Request) -> Response:
            try:
                size = int(request.headers.get("content-length") or 0)
            except ValueError:
                size = 0
            if size > MAX_UPLOAD_BYTES + 2 ** 20:
                return JSONResponse({"error": f"the request is {size / 2 ** 20:.0f} MB; the demo takes images of at "
                                              f"most {MAX_UPLOAD_BYTES // 2 ** 20} MB"}, status_code=413)
            try:
                async with request.form(max_files=1, max_fields=32) as form:
                    upload, name = None, "upload"
                    item = form.get("image")
                    if item is not None and not isinstance(item, str):
                        upload, name = await item.read(MAX_UPLOAD_BYTES + 1), item.filename or "upload"
                    fields = {k: v for k, v in form.items() if isinstance(v, str)}
                example_flag = fields.get("example", "") in ("1", "true", "on")
                answer = await run_in_threadpool(work, fields, upload, name, example_flag)
                return JSONResponse(answer)
            except UserError as err:
                return JSONResponse({"error": str(err)}, status_code=400)
            except HTTPException as err:  # a malformed form (Starlette's parser): the client's mistake
                return JSONResponse({"error": f"the form was refused: {err.detail}"}, status_code=err.status_code)
            except Exception as err:  # the server must keep serving: log it, answer one line
                _log.exception("demo request failed")
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
                return JSONResponse({"error": f"internal error ({type(err).__name__}{': ' + first if first else ''}); "
                                              "the server log has the details"}, status_code=500)
        return endpoint

    routes = [Route("/", index), Route("/api/info", info), Route("/api/example", example),
              Route("/api/segment", handler(service.segment), methods=["POST"]),
              Route("/api/refer", handler(service.refer), methods=["POST"])]
    app = Starlette(routes=routes)
    app.state.service = service
    return app


def serve(demo: DemoModel, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serve the page until interrupted (uvicorn)."""
    try:
        import uvicorn
    except ImportError:
        raise UserError("the demo page needs its extra: pip install 'textseg[demo]' (starlette, uvicorn, "
                        "python-multipart)") from None
    app = create_app(demo)
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["DemoModel", "DemoService", "create_app", "find_workbench_checkpoint", "load_demo_model", "serve"]


"""Textseg's files of weights (checkpoints, grouping backbones, the SAM stand-in, point generators): the only code
that writes or reads them.

Every file is a ``torch.save`` of a dict of tensors and plain values, written atomically by :func:`write_artifact`
and read by :func:`read_artifact` with ``weights_only=True``; a bad file is a one-line :class:`UserError`.

A checkpoint is a ``torch.save`` of a dict that holds tensors and plain Python values only, so it is read with
``torch.load(weights_only=True)`` and loading a file can never run code. Entries:

* ``format`` (:data:`FORMAT`), ``version``, ``step``;
* ``model``: the model's state dict; ``model_config``: its :class:`~textseg.config.ModelConfig` as a plain dict;
* step checkpoints (``out/checkpoints/step-0000200.pt``) also hold ``optimizer`` and ``scheduler`` state dicts,
  ``rng`` (one :func:`rng_state` per rank), ``data`` (one data position per rank,
  :meth:`textseg.train.data.BatchStream.state_dict`) and ``config`` (the training config as a plain dict).

A grouping-backbone file (``textseg pretrain-grouping``: ``out/final.pt`` and its step checkpoints) is another
format (:data:`BACKBONE_FORMAT`): ``backbone`` (the timm architecture: ``name`` and ``kwargs``), ``model`` (the
teacher ViT's timm state dict), ``step``, ``config`` and, in step checkpoints, the training state to resume.

Files are written atomically (temporary file + ``os.replace``): a run killed mid-write leaves the previous
checkpoint intact and no partial file under a checkpoint's name.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textseg.errors import UserError
from textseg.io import atomic_open

_log = logging.getLogger(__name__)

FORMAT = "textseg-checkpoint"
BACKBONE_FORMAT = "textseg-grouping-backbone"
VERSION = 1
STEP_GLOB = "step-*.pt"


# ----------------------------------------------------------------------------------------------------- writing
def write_artifact(path: str | Path, entries: Mapping[str, Any]) -> Path:
    """Write ``entries`` (tensors and plain values only) atomically to ``path`` (its folder is made); returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        torch.save(dict(entries), f)
    return path


def save_checkpoint(path: str | Path, model_state: Mapping[str, torch.Tensor], *, step: int,
                    model_config: Mapping[str, Any] | None = None, **extra: Any) -> Path:
    """Write a checkpoint atomically; ``extra`` entries (optimizer, scheduler, rng, config) must be plain values."""
    return write_artifact(path, {"format": FORMAT, "version": VERSION, "step": int(step), "model": dict(model_state),
                                 "model_config": None if model_config is None else dict(model_config), **extra})


def save_backbone_weights(path: str | Path, backbone_state: Mapping[str, torch.Tensor], *, name: str,
                          kwargs: Mapping[str, Any], step: int, **extra: Any) -> Path:
    """Write a grouping-backbone file atomically: the timm state dict of a ViT built as
    ``timm.create_model(name, num_classes=0, **kwargs)``; ``extra`` entries must be plain values and tensors."""
    return write_artifact(path, {"format": BACKBONE_FORMAT, "version": VERSION, "step": int(step),
                                 "backbone": {"type": "timm", "name": name, "kwargs": dict(kwargs)},
                                 "model": {k: v.detach().cpu() for k, v in backbone_state.items()}, **extra})


def read_backbone_weights(path: str | Path) -> dict[str, Any] | None:
    """The contents of a grouping-backbone file (see :func:`save_backbone_weights`), or None when ``path`` holds
    something else (e.g. a timm or DINO state dict, which timm's own loader reads).

    Raises:
        UserError: the file is unreadable, holds objects other than tensors and plain values, or is a
            grouping-backbone file with a malformed ``model`` or ``backbone`` entry.
    """
    path = Path(path)
    data = load_weights_only(path, f"backbone weight file {path} is refused", "unreadable: ")
    if not (isinstance(data, Mapping) and data.get("format") == BACKBONE_FORMAT):
        return None
    model, arch = data.get("model"), data.get("backbone")
    if not (isinstance(model, Mapping) and all(isinstance(v, torch.Tensor) for v in model.values())
            and isinstance(arch, Mapping) and isinstance(arch.get("name"), str)
            and isinstance(arch.get("kwargs"), Mapping)):
        raise UserError(f"backbone weight file {path} is damaged (malformed 'model' or 'backbone' entry)")
    return dict(data)


def step_checkpoint_path(out: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` of the run in ``out`` goes."""
    return Path(out) / "checkpoints" / f"step-{step:07d}.pt"


def step_checkpoints(out: str | Path) -> list[Path]:
    """The step checkpoints of the run in ``out``, oldest first."""
    return sorted((Path(out) / "checkpoints").glob(STEP_GLOB))


def prune_step_checkpoints(out: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints; returns the deleted paths."""
    old = step_checkpoints(out)[:-keep_last] if keep_last > 0 else step_checkpoints(out)
    for path in old:
        path.unlink()
    return old


# ----------------------------------------------------------------------------------------------------- reading
def load_weights_only(path: Path, prefix: str, unreadable: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (never unpickling code). A file torch cannot read is a
    one-line UserError ``"{prefix}: it holds objects ..."`` (refused objects) or ``"{prefix} ({unreadable}<why>)"``.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise UserError(f"{prefix}: it holds objects other than tensors and plain values, which are refused "
                            "because loading them could run code") from None
        raise UserError(f"{prefix} ({unreadable}{_first_line(err)})") from None
    except Exception as err:  # truncated zip, random bytes, empty file: torch raises several types
        raise UserError(f"{prefix} ({unreadable}{_first_line(err)})") from None


def read_artifact(path: str | Path, what: str, *, kind: str | None = None, hint: str = "") -> dict[str, Any]:
    """The dict saved by :func:`write_artifact` at ``path``.

    Args:
        path: the file.
        what: how errors name the file's role, e.g. ``"point generator"``.
        kind: when given, the file's ``kind`` entry must equal it.
        hint: appended to the error when the file is of another kind (what to use instead).

    Raises:
        UserError: one line naming the file: missing, unreadable, holding objects other than tensors and plain
            values, not a dict, or of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file" if path.exists() else f"{what} {path} does not exist")
    data = load_weights_only(path, f"{what} {path} cannot be read")
    if not isinstance(data, Mapping) or (kind is not None and data.get("kind") != kind):
        raise UserError(f"{path} is not a {kind or what} file{hint}")
    return dict(data)


def load_state_strict(model: torch.nn.Module, state: Any, message: str) -> None:
    """``model.load_state_dict(state, strict=True)``; anything else than a matching state dict of tensors is a
    one-line UserError ``"{message} (<why>)"``."""
    if not (isinstance(state, Mapping) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise UserError(f"{message} (no state dict of tensors)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UserError(f"{message} ({mismatch_detail(err)})") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check that it is a textseg checkpoint.

    Raises:
        UserError: one line naming the file: missing, unreadable, holding objects other than tensors and plain
            values, or not a textseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file" if path.exists() else f"checkpoint {path} does not exist")
    data = load_weights_only(path, f"{path} is not a textseg checkpoint", "unreadable: ")
    model = data.get("model") if isinstance(data, dict) else None
    if not (isinstance(model, Mapping) and all(isinstance(v, torch.Tensor) for v in model.values())):
        raise UserError(f"{path} is not a textseg checkpoint (no 'model' state dict)")
    if not isinstance(data.get("model_config"), (Mapping, type(None))):
        raise UserError(f"{path} is not a textseg checkpoint ('model_config' is not a mapping)")
    return data


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def mismatch_detail(err: Exception) -> str:
    """The informative line of a ``load_state_dict`` error (its first line is generic; the second names the first
    mismatching keys), at most 300 characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[min(1, len(lines) - 1)][:300] if lines else type(err).__name__


def load_model_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The model state dict of a checkpoint and the model config it was trained with (None if not recorded)."""
    data = read_checkpoint(path)
    config = data.get("model_config")
    return dict(data["model"]), None if config is None else dict(config)


# Model config fields that decide which weights a model has (the grouping and region settings do not).
ARCHITECTURE_FIELDS = ("backbone", "clip.arch", "clip.quick_gelu")


def _field(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _architecture(config: Mapping[str, Any], dotted: str) -> Any:
    value = _field(config, dotted)
    if dotted == "backbone" and isinstance(value, Mapping):  # where the weights came from, and the input's
        value = {k: v for k, v in value.items() if k not in ("weights", "upsample")}  # scale, are not what they are
    return value


def check_same_architecture(saved: Mapping[str, Any], wanted: Mapping[str, Any], source: str | Path) -> None:
    """Raise a one-line :class:`UserError` naming ``source`` and both models when a checkpoint's model config
    (``saved``) has other weights than the model ``wanted`` (its backbone or its CLIP architecture differ)."""
    diff = [f for f in ARCHITECTURE_FIELDS if _architecture(saved, f) != _architecture(wanted, f)]
    if diff:
        raise UserError(f"{source} holds the weights of model {saved.get('name')!r}, not of model "
                        f"{wanted.get('name')!r} ({diff[0]} differs: {_architecture(saved, diff[0])!r} vs "
                        f"{_architecture(wanted, diff[0])!r})")


def check_same_model(saved: Mapping[str, Any] | None, wanted: Mapping[str, Any], source: str | Path) -> None:
    """Like :func:`check_same_architecture`, but every field counts but the name and description (a resumed run
    must continue the very model it saved)."""
    if saved is None:
        return
    check_same_architecture(saved, wanted, source)
    for key in sorted(set(saved) | set(wanted)):
        if key not in ("name", "description") and saved.get(key) != wanted.get(key):
            raise UserError(f"{source} was saved by a run of model {saved.get('name')!r} with {key} "
                            f"{saved.get(key)!r}, but this run's model {wanted.get('name')!r} has {key} "
                            f"{wanted.get(key)!r}: use another out folder, or resume=false")


@dataclass
class ResumeState:
    """What a step checkpoint holds to continue a run exactly."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: list[dict[str, Any]]
    config: dict[str, Any] | None
    data: list[dict[str, Any]] | None = None

    def rng_for(self, rank: int) -> dict[str, Any]:
        """The RNG state saved by ``rank`` (rank 0's when the run had fewer ranks)."""
        return self.rng[rank] if rank < len(self.rng) else self.rng[0]

    def data_for(self, rank: int, world: int) -> dict[str, Any] | None:
        """The data position saved by ``rank``; None when the checkpoint has none or another world size saved it
        (each rank's position is in its own part of the shards)."""
        if not self.data:
            return None
        if len(self.data) != world:
            if rank == 0:
                _log.warning("%s was saved by %d rank(s), this run has %d: the data restarts at the next epoch, "
                             "so the run does not continue exactly", self.path, len(self.data), world)
            return {"epoch": max(int(d["epoch"]) for d in self.data), "readers": -1,
                    "skipped": self.data[rank]["skipped"] if rank < len(self.data) else {}}
        return self.data[rank]


def _check_step_entries(path: Path, data: Mapping[str, Any]) -> None:
    """Raise a UserError when a step checkpoint lacks what a resume needs or holds it malformed."""
    missing = [k for k in ("step", "optimizer", "scheduler", "rng") if k not in data]
    if missing:
        raise UserError(f"{path} is not a step checkpoint (no {', '.join(missing)})")
    ok = (isinstance(data["step"], int) and data["step"] >= 0 and isinstance(data["optimizer"], Mapping)
          and isinstance(data["scheduler"], Mapping) and isinstance(data["rng"], list) and data["rng"]
          and all(isinstance(r, Mapping) and {"torch", "cuda", "numpy", "python"} <= set(r) for r in data["rng"]))
    positions = data.get("data")
    if positions is not None:
        ok = ok and isinstance(positions, list) and all(_valid_position(d) for d in positions)
    if not ok:
        raise UserError(f"{path} is not a usable step checkpoint (malformed step, optimizer, rng or data entry)")


def _valid_position(d: Any) -> bool:
    if not isinstance(d, Mapping) or not {"epoch", "next", "pos", "ended", "readers", "skipped"} <= set(d):
        return False
    ints = [d["epoch"], d["next"], d["readers"], *d["pos"]] if isinstance(d["pos"], list) else None
    return (ints is not None and all(isinstance(v, int) and v >= 0 for v in ints) and isinstance(d["ended"], list)
            and len(d["pos"]) == len(d["ended"]) == d["readers"] and d["next"] < max(1, d["readers"])
            and isinstance(d["skipped"], Mapping)
            and all(isinstance(k, str) and isinstance(v, int) for k, v in d["skipped"].items()))


def latest_resume_state(out: str | Path, model_config: Mapping[str, Any] | None = None) -> ResumeState | None:
    """The newest usable step checkpoint of the run in ``out``, or None when there is none.

    An unusable newest checkpoint (e.g. a file damaged on disk) is skipped with a warning naming the one resumed
    from instead.

    Args:
        out: the run folder (checkpoints in ``out/checkpoints``).
        model_config: the model the run trains, as a plain dict; a checkpoint of another model is an error.

    Raises:
        UserError: checkpoints exist but none is usable, or they were saved for another model.
    """
    paths = step_checkpoints(out)
    failed: list[tuple[Path, UserError]] = []
    for path in reversed(paths):
        try:
            data = read_checkpoint(path)
            _check_step_entries(path, data)
        except UserError as err:
            failed.append((path, err))
            continue
        if model_config is not None:
            check_same_model(data.get("model_config"), model_config, path)
        for bad, err in failed:
            _log.warning("cannot resume from %s (%s); resuming from the previous checkpoint %s instead", bad, err,
                         path.name)
        return ResumeState(path=path, step=int(data["step"]), model=data["model"], optimizer=data["optimizer"],
                           scheduler=data["scheduler"], rng=list(data["rng"]), config=data.get("config"),
                           data=data.get("data"))
    if failed:
        raise UserError(f"no usable checkpoint to resume from in {Path(out) / 'checkpoints'}: {failed[0][1]} "
                        f"({len(failed)} checkpoint(s) tried); delete them to start afresh, or set resume=false")
    return None


# ----------------------------------------------------------------------------------------------------- rng, checksum
def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states as tensors and plain values."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
            "python": {"version": int(py_version), "state": [int(v) for v in py_state], "gauss": py_gauss}}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore a state from :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def weights_checksum(state: Mapping[str, torch.Tensor] | torch.nn.Module) -> str:
    """SHA1 over the names and bytes of a state dict (or a module's): equal weights, equal checksum."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    h = hashlib.sha1()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

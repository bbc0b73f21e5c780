"""The released weight formats of OpenAI CLIP and DINO, read and written without ever running code from a file.

OpenAI's CLIP releases (``ViT-B-16.pt`` ...) are TorchScript archives: a zip holding ``<root>/data.pkl`` (the pickled
module tree), ``<root>/code/`` (the TorchScript source of the module classes) and ``<root>/data/<key>`` (the raw
bytes of one tensor storage each). :func:`read_torchscript_tensors` reads them with an unpickler that knows only
tensors, storages, ``OrderedDict`` and TorchScript classes, the last turned into inert records; any other global
in the pickle is refused. The class sources are read as text, never run, for which attributes are parameters and
buffers (their ``__parameters__`` and ``__buffers__`` lists) and how a ``__setstate__`` names its state's entries.

DINO's released backbones (``dino_vitbase8_pretrain.pth``) are plain state dicts whose key names are those of
timm's ``VisionTransformer``; its training checkpoints hold the ``teacher`` and ``student`` with ``module.`` and
``backbone.`` prefixes and a projection ``head``. State-dict files are read with ``torch.load(weights_only=True)``
(or as safetensors); written ones are plain state dicts, saved atomically.
"""

from __future__ import annotations

import argparse
import ast
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from textseg.artifacts import write_artifact
from textseg.errors import UserError

# Non-weight entries of OpenAI's TorchScript CLIP; open_clip keeps its causal mask as a non-persistent buffer.
CLIP_NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")
# Keys every OpenAI-format CLIP state dict has (ViT and ResNet image towers alike).
OPENAI_CLIP_KEYS = ("positional_embedding", "text_projection", "logit_scale", "token_embedding.weight",
                    "ln_final.weight", "visual.conv1.weight")
DINO_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight")

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
_LIST_BUILDERS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")
_MAX_NODES = 1_000_000  # module records visited while naming tensors; a pickle may share records to blow up paths
_SETSTATE_ASSIGN = re.compile(r"^\s+self\.(\w+) = \(?(\w+)\)?\[([^\]]+)\]\s*$")


# ------------------------------------------------------------------------------------------- TorchScript archives
class _StorageType:
    """The stand-in for a ``torch.<Type>Storage`` global: only its element type is used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Record:
    """An inert stand-in for a TorchScript object: it keeps the state the pickle gives it and does nothing else."""

    torch_class = ""
    state: Any = None
    args: tuple = ()

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ClassInfo:
    """What a TorchScript class's source declares: its ``__parameters__`` and ``__buffers__`` names (None when it
    does not declare them) and the attribute each ``__setstate__`` state entry goes to."""

    def __init__(self) -> None:
        self.declared: dict[str, set[str]] = {}
        self.setstate: dict[Any, str] = {}

    @property
    def tensors(self) -> set[str] | None:
        """The names of the parameters and buffers, or None (any tensor attribute) unless both lists are given."""
        if len(self.declared) < 2:
            return None
        return self.declared["__parameters__"] | self.declared["__buffers__"]


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Iterable[int], stride: Iterable[int],
                    *_: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise TypeError("a tensor without a storage record")
    return storage.as_strided(tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset))


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _first_argument(value: Any, *_: Any) -> Any:
    return value


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: storages come from the archive's records, and every global other than
    the tensor rebuilders, the storage types, ``OrderedDict`` and TorchScript classes raises a UserError."""

    def __init__(self, file: IO[bytes], archive: zipfile.ZipFile, root: str, path: Path) -> None:
        super().__init__(file)
        self._archive, self._root, self._path = archive, root, path
        order = f"{root}/byteorder"
        self._big_endian = order in archive.namelist() and archive.read(order).strip() == b"big"
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name in (*_LIST_BUILDERS, "restore_type_tag"):
            return _first_argument
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (_Record,), {"torch_class": qualname})
            return self._classes[qualname]
        raise UserError(f"{self._path}: refused to load the global {module}.{name} (a TorchScript archive is read "
                        "for its tensors only)")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise UserError(f"{self._path}: damaged TorchScript archive (a storage record is malformed)")
        return self._storage(pid[1].dtype, pid[2], pid[4])

    def _storage(self, dtype: torch.dtype, key: str, numel: int) -> torch.Tensor:
        """The storage ``key`` as a flat tensor of ``numel`` elements (read once; later views share it)."""
        if key in self._storages:
            flat = self._storages[key]
            if flat.dtype != dtype or flat.numel() != numel:
                raise UserError(f"{self._path}: damaged TorchScript archive (storage {key} is read as two types)")
            return flat
        name = f"{self._root}/data/{key}"
        itemsize = torch.empty((), dtype=dtype).element_size()
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise UserError(f"{self._path}: damaged TorchScript archive (no record {name})") from None
        if info.file_size != numel * itemsize:
            raise UserError(f"{self._path}: damaged TorchScript archive (record {name} holds {info.file_size} "
                            f"bytes, not {numel} × {itemsize})")
        data = bytearray(self._archive.read(info))
        flat = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        if self._big_endian and itemsize > 1:
            flat = flat.view(-1, itemsize).flip(1).reshape(-1)
        flat = flat.view(dtype)
        self._storages[key] = flat
        return flat


def _archive_root(archive: zipfile.ZipFile) -> str | None:
    """The top folder of a TorchScript archive (it holds ``data.pkl`` and ``code/``), or None for other zips."""
    names = archive.namelist()
    roots = sorted(n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
    return next((r for r in roots if any(n.startswith(f"{r}/code/") for n in names)), None)


def is_torchscript_archive(path: str | Path) -> bool:
    """True when ``path`` is a TorchScript archive (a zip with ``<root>/data.pkl`` and ``<root>/code/``)."""
    try:
        if not Path(path).is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return _archive_root(archive) is not None
    except (OSError, zipfile.BadZipFile):
        return False


def _class_infos(archive: zipfile.ZipFile, root: str) -> dict[str, _ClassInfo]:
    """``{"__torch__.pkg.Class": info}`` from the archive's TorchScript sources, read as text only."""
    infos: dict[str, _ClassInfo] = {}
    prefix = f"{root}/code/"
    for name in archive.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        module = name[len(prefix): -len(".py")].replace("/", ".")
        info, in_setstate = None, False
        for line in archive.read(name).decode("utf-8", "replace").splitlines():
            if found := re.match(r"class (\w+)\(", line):
                info, in_setstate = infos.setdefault(f"{module}.{found.group(1)}", _ClassInfo()), False
            elif info is None:
                continue
            elif found := re.match(r"  (__parameters__|__buffers__) = (\[.*\])\s*$", line):
                try:
                    names = ast.literal_eval(found.group(2))
                except (ValueError, SyntaxError):
                    continue
                info.declared[found.group(1)] = {str(n) for n in names}
            elif line.startswith("  def "):
                in_setstate = line.startswith("  def __setstate__(")
            elif in_setstate and (found := _SETSTATE_ASSIGN.match(line)) and found.group(2) != "self":
                try:
                    info.setstate[ast.literal_eval(found.group(3))] = found.group(1)
                except (ValueError, SyntaxError):
                    pass
    return infos


def _attributes(record: _Record, info: _ClassInfo | None) -> dict[str, Any]:
    """A record's attributes by name: its state dict, or its ``__setstate__`` tuple/dict named as the class's
    ``__setstate__`` assigns the entries (entries it does not name keep their index or key)."""
    state = record.state
    if isinstance(state, Mapping):
        entries = list(state.items())
    elif isinstance(state, (tuple, list)):
        entries = list(enumerate(state))
    else:
        return {}
    names = info.setstate if info is not None else {}
    return {names.get(key, str(key)): value for key, value in entries}


def _collect(top: _Record, infos: dict[str, _ClassInfo], path: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    stack: list[tuple[_Record, str, frozenset[int]]] = [(top, "", frozenset())]
    visited = 0
    while stack:
        record, prefix, ancestors = stack.pop()
        visited += 1
        if visited > _MAX_NODES:
            raise UserError(f"{path}: damaged TorchScript archive (more than {_MAX_NODES} modules)")
        info = infos.get(record.torch_class)
        declared = info.tensors if info is not None else None
        children, here = [], ancestors | {id(record)}
        for name, value in _attributes(record, info).items():
            if isinstance(value, torch.Tensor) and (declared is None or name in declared):
                out[prefix + name] = value.detach()
            elif isinstance(value, _Record):
                if id(value) in here:
                    raise UserError(f"{path}: damaged TorchScript archive (a module contains itself)")
                children.append((value, f"{prefix}{name}.", here))
        stack.extend(reversed(children))
    return out


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive by attribute path (``{"visual.conv1.weight": ...}``),
    as stored (fp16 stays fp16); equal to the ``state_dict()`` of the saved module. Nothing in the file is run.

    Raises:
        UserError: one line naming the file: missing, not a TorchScript archive, damaged, or its pickle names a
            global other than tensors, storages, ``OrderedDict`` and TorchScript classes.
    """
    path = _existing_file(path, "TorchScript archive")
    try:
        with zipfile.ZipFile(path) as archive:
            root = _archive_root(archive)
            if root is None:
                raise UserError(f"{path}: not a TorchScript archive (no <root>/data.pkl beside <root>/code/)")
            infos = _class_infos(archive, root)
            with archive.open(f"{root}/data.pkl") as f:
                top = _ArchiveUnpickler(f, archive, root, path).load()
    except UserError:
        raise
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a TorchScript archive (not a zip file)") from None
    except Exception as err:  # truncated records, bad opcodes, wrong arguments to a rebuilder: many types
        raise UserError(f"{path}: damaged TorchScript archive ({_first_line(err)})") from None
    if not isinstance(top, _Record):
        raise UserError(f"{path}: damaged TorchScript archive (its data.pkl holds no module)")
    return _collect(top, infos, path)


# ------------------------------------------------------------------------------------------- state-dict files
def _existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file" if path.exists() else f"{what} {path} does not exist")
    return path


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}"[:300] if text else type(err).__name__


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and the header's ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_pickled_or_safetensors(path: Path, what: str) -> Any:
    """The contents of a safetensors file or a ``torch.load(weights_only=True)`` file on the CPU (training
    checkpoints may also hold an ``argparse.Namespace`` of their arguments, which is read as plain values)."""
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise UserError(f"{path} is not a {what} (unreadable safetensors: {_first_line(err)})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if refused := re.search(r"Unsupported global: GLOBAL (\S+)", text):
            raise UserError(f"{path} is not a {what}: it holds objects other than tensors and plain values "
                            f"({refused.group(1)}), which are refused because loading them could run code") from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        raise UserError(f"{path} is not a {what} (unreadable: "
                        f"{detail.group(1)[:200] if detail else _first_line(err)})") from None
    except Exception as err:  # truncated zip, random bytes, empty file: torch raises several types
        raise UserError(f"{path} is not a {what} (unreadable: {_first_line(err)})") from None


def _unwrap(data: Any, path: Path, what: str, wrappers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict inside ``data`` (under the first of ``wrappers`` it has, else ``data`` itself)."""
    if isinstance(data, Mapping):
        data = next((data[k] for k in wrappers if isinstance(data.get(k), Mapping)), data)
    if not (isinstance(data, Mapping) and data):
        raise UserError(f"{path} is not a {what} (no state dict)")
    bad = next((k for k, v in data.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
    if bad is not None:
        raise UserError(f"{path} is not a {what} (entry {str(bad)[:80]!r} is not a named tensor)")
    return dict(data)


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if key.startswith(prefix) else key


# ------------------------------------------------------------------------------------------------------ CLIP
def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A CLIP's state dict with OpenAI's key names, as stored (fp16 stays fp16), from an OpenAI TorchScript release,
    a state-dict file (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and a ``module.`` prefix are
    removed) or a safetensors file. OpenAI's non-weight entries (:data:`CLIP_NON_WEIGHT_KEYS`) and attention masks
    are dropped.

    Raises:
        UserError: one line naming the file: missing, unreadable, holding objects other than tensors and plain
            values, or not a CLIP's weights.
    """
    what = "CLIP weight file (a TorchScript archive, a state dict or a safetensors file)"
    path = _existing_file(path, "CLIP weight file")
    if is_torchscript_archive(path):
        state = read_torchscript_tensors(path)
    else:
        state = _unwrap(_read_pickled_or_safetensors(path, what), path, what, ("state_dict", "model"))
        state = {_strip(k, "module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items()
             if k not in CLIP_NON_WEIGHT_KEYS and k != "attn_mask" and not k.endswith(".attn_mask")}
    if not any(k.startswith("visual.") for k in state):
        raise UserError(f"{path} is not a {what}: it has no 'visual.*' weights")
    return state


def write_openai_clip_state_dict(clip: torch.nn.Module, path: str | Path, fp16: bool = True) -> Path:
    """Write an open_clip CLIP built with OpenAI's layout (e.g. ``open_clip.create_model("ViT-B-16",
    force_quick_gelu=True)``) as an OpenAI-format state dict, its float tensors cast to fp16 like OpenAI's release
    when ``fp16``, atomically; returns ``path``. Non-persistent buffers, attention masks and a ``logit_bias``
    (which OpenAI's format lacks) are left out.

    Raises:
        UserError: the model does not have OpenAI's key names (e.g. a timm image tower or an HF text tower).
    """
    state = {k: v.detach().cpu() for k, v in clip.state_dict().items()
             if k != "attn_mask" and not k.endswith(".attn_mask") and k != "logit_bias"}
    missing = [k for k in OPENAI_CLIP_KEYS if k not in state]
    if missing:
        raise UserError(f"{type(clip).__name__} has not OpenAI CLIP's key names (no {', '.join(missing[:3])}); "
                        "cannot write it in OpenAI's format")
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return write_artifact(path, state)


def _some(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_clip_state_dict(clip: torch.nn.Module, state: Mapping[str, torch.Tensor], *,
                         what: str = "CLIP weights") -> None:
    """Load an OpenAI-format state dict (any float dtype; each tensor cast to the dtype of the model's tensor it
    replaces) into an open_clip CLIP strictly. Nothing is loaded when the keys or shapes do not match.

    Raises:
        UserError: one line naming ``what`` and the first few missing or unexpected keys and shape mismatches.
    """
    expected = clip.state_dict()
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in expected if k not in state]
    unexpected = [str(k) for k in state if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} vs the model's {tuple(expected[k].shape)}" for k, v in state.items()
              if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape]
    problems = [f"{label}: {_some(keys)}" for label, keys in (("not tensors", bad), ("missing keys", missing),
                                                                ("unexpected keys", unexpected),
                                                                ("shape mismatches", shapes)) if keys]
    if problems:
        raise UserError(f"{what} do not fit the CLIP model ({'; '.join(problems)})")
    cast = {k: v.to(expected[k].dtype) if v.is_floating_point() and expected[k].is_floating_point() else v
            for k, v in state.items()}
    clip.load_state_dict(cast, strict=True)


# ------------------------------------------------------------------------------------------------------ DINO
def read_dino_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A DINO ViT backbone's state dict with timm's ``VisionTransformer`` key names, as stored: from a released
    backbone file, a training checkpoint (the ``teacher``, else the ``student``; ``module.`` and ``backbone.``
    prefixes removed, ``head.*`` dropped), a ``{"state_dict"|"model": ...}`` wrapper or a safetensors file.
    It loads strictly into ``timm.create_model(<DINO's ViT>, num_classes=0)``.

    Raises:
        UserError: one line naming the file: missing, unreadable, holding objects other than tensors and plain
            values, or not a ViT's weights.
    """
    what = "DINO weight file (a ViT state dict or a DINO checkpoint)"
    path = _existing_file(path, "DINO weight file")
    data = _read_pickled_or_safetensors(path, what)
    state = _unwrap(data, path, what, ("teacher", "student", "state_dict", "model"))
    out = {}
    for key, value in state.items():
        key = _strip(_strip(key, "module."), "backbone.")
        if not key.startswith("head."):
            out[key] = value
    missing = [k for k in DINO_KEYS if k not in out]
    if missing:
        raise UserError(f"{path} is not a {what}: it has no {missing[0]!r}")
    return out


def write_dino_state_dict(vit: torch.nn.Module, path: str | Path) -> Path:
    """Write a timm ``VisionTransformer`` in DINO's released format (its state dict without ``head.*``, float
    tensors in fp32), atomically; returns ``path``.

    Raises:
        UserError: the model has not a ViT's key names (:data:`DINO_KEYS`).
    """
    state = {k: v.detach().cpu() for k, v in vit.state_dict().items() if not k.startswith("head.")}
    missing = [k for k in DINO_KEYS if k not in state]
    if missing:
        raise UserError(f"{type(vit).__name__} has not a ViT's key names (no {missing[0]!r}); cannot write it in "
                        "DINO's format")
    return write_artifact(path, {k: v.float() if v.is_floating_point() else v for k, v in state.items()})

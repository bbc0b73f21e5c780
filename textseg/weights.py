"""Where pretrained weights come from: explicit files, textseg's weights folder, the Hugging Face cache, or a download.

Every failure to find a weight ends in one :class:`MissingWeightsError` that names the weight, the places that were
searched and the file to download, never in a network traceback.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Callable

from textseg.errors import MissingWeightsError

_log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weights_dir() -> Path:
    """Folder searched for weight files: ``$TEXTSEG_WEIGHTS_DIR`` or ``~/.cache/textseg/weights``."""
    return Path(os.environ.get("TEXTSEG_WEIGHTS_DIR", Path.home() / ".cache" / "textseg" / "weights")).expanduser()


def is_offline() -> bool:
    """True when downloads must not be attempted (``TEXTSEG_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``)."""
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("TEXTSEG_OFFLINE", "HF_HUB_OFFLINE"))


def _host_resolves(host: str) -> bool:
    # Hub clients retry for ~45 s when DNS fails; a failed lookup answers at once, so check first.
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _first_existing(stem: Path) -> Path | None:
    for suffix in WEIGHT_SUFFIXES:
        if stem.with_name(stem.name + suffix).is_file():
            return stem.with_name(stem.name + suffix)
    return None


def _from_hf_cache(repo_id: str | None, filenames: list[str]) -> Path | None:
    if not repo_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def _download(what: str, host: str, fetch: Callable[[], str], searched: list[str], hint: str) -> Path:
    if is_offline():
        reason = "downloads are disabled (TEXTSEG_OFFLINE/HF_HUB_OFFLINE)"
    elif not _host_resolves(host):
        reason = f"{host} cannot be reached"
    else:
        try:
            return Path(fetch())
        except Exception as err:  # any transport or hub error means the same thing to the user
            reason = f"download failed ({type(err).__name__})"
    raise MissingWeightsError(f"{what} not found: looked in {', '.join(searched)}; {reason}. {hint}")


def resolve_clip_weights(arch: str, pretrained: str) -> Path:
    """Find the file of an open_clip model's pretrained weights.

    Args:
        arch: open_clip architecture name, e.g. ``"ViT-B-16"``.
        pretrained: an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``) or a path to a file.

    Returns:
        Path of a local weight file.

    Raises:
        MissingWeightsError: the file is not on disk and cannot be downloaded.
    """
    if Path(pretrained).expanduser().is_file():
        return Path(pretrained).expanduser()
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        if any(sep in pretrained for sep in "/\\") or pretrained.endswith(WEIGHT_SUFFIXES):
            raise MissingWeightsError(f"CLIP weight file {pretrained} does not exist")
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise MissingWeightsError(f"open_clip has no pretrained tag {pretrained!r} for {arch} (known tags: {tags})")
    stem = weights_dir() / "open_clip" / arch / pretrained
    local = _first_existing(stem)
    if local:
        return local
    repo = (cfg.get("hf_hub") or "").strip("/") or None
    hf_names = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    cached = _from_hf_cache(repo, hf_names)
    if cached:
        return cached
    searched = [f"{stem}{{{','.join(WEIGHT_SUFFIXES)}}}", "the Hugging Face cache"]
    url = f"https://huggingface.co/{repo}/resolve/main/open_clip_pytorch_model.bin" if repo else cfg.get("url", "")
    hint = (f"Download {url} and save it as {stem}.bin (or .safetensors/.pt), "
            f"or pass the file with --clip-pretrained PATH.")

    def fetch() -> str:
        return open_clip.download_pretrained(cfg, cache_dir=None)

    return _download(f"CLIP weights {arch}/{pretrained}", "huggingface.co", fetch, searched, hint)


def resolve_timm_weights(name: str, path: str | None = None) -> Path:
    """Find the file of a timm model's pretrained weights (``name`` like ``"vit_small_patch16_224.dino"``).

    Raises:
        MissingWeightsError: the file is not on disk and cannot be downloaded.
    """
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise MissingWeightsError(f"backbone weight file {p} does not exist")
        return p
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None:
        raise MissingWeightsError(f"timm has no pretrained weights named {name!r}")
    stem = weights_dir() / "timm" / name
    local = _first_existing(stem)
    if local:
        return local
    repo = getattr(cfg, "hf_hub_id", None)
    cached = _from_hf_cache(repo, ["model.safetensors", "pytorch_model.bin"])
    if cached:
        return cached
    searched = [f"{stem}{{{','.join(WEIGHT_SUFFIXES)}}}", "the Hugging Face cache"]
    url = f"https://huggingface.co/{repo}/resolve/main/model.safetensors" if repo else getattr(cfg, "url", "")
    hint = (f"Download {url} and save it as {stem}.safetensors (or .pth), "
            f"or pass the file with --backbone-pretrained PATH.")

    def fetch() -> str:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo, "model.safetensors")

    return _download(f"backbone weights {name}", "huggingface.co", fetch, searched, hint)

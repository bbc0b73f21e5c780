"""Text side: prompt templates and a class-embedding encoder cached in memory and on disk."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from textseg.errors import ConfigError

_log = logging.getLogger(__name__)

SINGLE_TEMPLATE = ("a photo of a {}.",)


def imagenet_templates() -> tuple[str, ...]:
    """The 80 ImageNet prompt templates of CLIP, as shipped with open_clip."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def get_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """Resolve ``"single"``, ``"imagenet80"`` or an explicit list of ``{}``-templates."""
    if isinstance(templates, str):
        if templates == "single":
            return SINGLE_TEMPLATE
        if templates == "imagenet80":
            return imagenet_templates()
        raise ConfigError(f"unknown template set {templates!r} (use 'single', 'imagenet80' or a list)")
    out = tuple(templates)
    if not out or any("{}" not in t for t in out):
        raise ConfigError("every prompt template must contain '{}'")
    return out


def default_cache_dir() -> Path:
    """``$TEXTSEG_CACHE_DIR/text`` or ``~/.cache/textseg/text``."""
    root = os.environ.get("TEXTSEG_CACHE_DIR", Path.home() / ".cache" / "textseg")
    return Path(root).expanduser() / "text"


def trim_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Token ids (B, L) cut after the longest end-of-text token (open_clip's EOT has the largest id).

    Trim on the host, before the tokens go to a device: the length is read back from the tensor.
    """
    return tokens[:, : int(tokens.argmax(-1).max()) + 1] if tokens.numel() else tokens


def encode_text_trimmed(clip: torch.nn.Module, tokens: torch.Tensor, trimmed: bool = False) -> torch.Tensor:
    """``clip.encode_text`` run on tokens cut after the longest end-of-text token.

    With causal attention and end-of-text pooling the padding after the EOT token cannot change the output, so
    the result is the same as the full 77-token pass at a fraction of the cost. Models without that structure
    fall back to ``encode_text``. ``trimmed``: the tokens already went through :func:`trim_tokens` (the training
    step passes them so, to keep the length read-back off the device).
    """
    causal = getattr(clip, "attn_mask", None)
    if getattr(clip, "text_pool_type", None) != "argmax" or causal is None or not hasattr(clip, "token_embedding"):
        return clip.encode_text(tokens)
    t = tokens if trimmed else trim_tokens(tokens)
    length = t.shape[1]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(t).to(cast) + clip.positional_embedding[:length].to(cast)
    x = clip.transformer(x, attn_mask=causal[:length, :length])
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0]), t.argmax(-1)]
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def text_tower_fingerprint(clip: torch.nn.Module) -> str:
    """A short hash of the text tower's weights: the disk cache stays valid exactly as long as they do."""
    h = hashlib.sha1()
    named = dict(clip.named_parameters())
    for name in sorted(named):
        if name.startswith(("visual.", "logit_")):
            continue
        p = named[name].detach().float().flatten()
        h.update(name.encode())
        h.update(p[:: max(1, p.numel() // 4096)].cpu().numpy().tobytes())  # a strided sample is enough
    return h.hexdigest()[:16]


class TextEncoder:
    """Encodes class names into averaged, L2-normalised prompt embeddings, cached in memory and on disk.

    The cache key is (text-tower fingerprint, template set, class name), so the same classes with the same model
    and templates are never encoded twice, in this process or the next one.

    Args:
        clip: an open_clip model (its text tower is used).
        tokenizer: the matching open_clip tokenizer.
        cache_dir: disk cache folder; ``None`` uses :func:`default_cache_dir`, ``False`` disables the disk cache.
        batch_size: prompts per forward pass.
    """

    def __init__(self, clip: torch.nn.Module, tokenizer: Callable, cache_dir: str | Path | None | bool = None,
                 batch_size: int = 256):
        self.clip = clip
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.cache_dir = None if cache_dir is False else Path(cache_dir) if cache_dir else default_cache_dir()
        self._memory: dict[tuple[str, str, str], np.ndarray] = {}
        self._fingerprint: str | None = None
        self.num_encoded_prompts = 0  # prompts actually run through the text tower (cache misses)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = text_tower_fingerprint(self.clip)
        return self._fingerprint

    def reset_fingerprint(self) -> None:
        """Call after changing the text tower's weights (training)."""
        self._fingerprint = None
        self._memory.clear()

    def _disk_path(self, tkey: str, name: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / self.fingerprint / tkey / (hashlib.sha1(name.encode()).hexdigest()[:24] + ".npy")

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings (P, E) of raw prompts, no caching."""
        device = next(self.clip.parameters()).device
        out = []
        for i in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(list(prompts[i: i + self.batch_size])).to(device)
            out.append(F.normalize(encode_text_trimmed(self.clip, tokens).float(), dim=-1))
        self.num_encoded_prompts += len(prompts)
        return torch.cat(out) if out else torch.empty(0)

    def encode_classes(self, names: Sequence[str], templates: str | Sequence[str] = "single") -> torch.Tensor:
        """(C, E) normalised class embeddings, each the renormalised mean over the templates."""
        temps = get_templates(templates)
        tkey = hashlib.sha1("\n".join(temps).encode()).hexdigest()[:16]
        result: dict[str, np.ndarray] = {}
        missing = []
        for name in dict.fromkeys(names):
            key = (self.fingerprint, tkey, name)
            if key in self._memory:
                result[name] = self._memory[key]
                continue
            path = self._disk_path(tkey, name)
            if path is not None and path.is_file():
                try:
                    result[name] = self._memory[key] = np.load(path)
                    continue
                except (OSError, ValueError):
                    _log.warning("ignoring unreadable text cache file %s", path)
            missing.append(name)
        if missing:
            emb = self.encode_prompts([t.format(n) for n in missing for t in temps]).reshape(len(missing), len(temps), -1)
            emb = F.normalize(emb.mean(1), dim=-1).cpu().numpy().astype(np.float32)
            for name, e in zip(missing, emb):
                self._memory[(self.fingerprint, tkey, name)] = result[name] = e
                path = self._disk_path(tkey, name)
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".{os.getpid()}.tmp")
                    with open(tmp, "wb") as fh:
                        np.save(fh, e)
                    tmp.replace(path)
        return torch.from_numpy(np.stack([result[n] for n in names]))

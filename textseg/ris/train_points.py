"""Training the point generator from image-text pairs alone (no mask is ever read).

Objective (per batch of B image-sentence pairs; frozen CLIP, frozen promptable segmenter):

* **Localisation** (TRIS style): the generator scores every patch of image i for sentence j; the pooled score
  ``S[i, j] = τ · logsumexp_p(positive[i, j, p] / τ)`` must be highest for the sentence's own image: a cross-entropy
  over the sentence's own image and ``loc_images - 1`` other images of the batch (images whose sentence is the same
  text count as correct). This is the term that carries the sentence.
* **Segmenter confidence** (the frozen segmenter's own judgement of a prompt): ``candidates`` patches per pair (half
  the current top of the positive map, half drawn at random) are each given to the segmenter as one positive point;
  its predicted IoU of the mask it returns (SAM's score) ranks them, and the positive map restricted to the
  candidates is trained towards ``softmax(predicted IoU / confidence_temperature)`` (a listwise cross-entropy). The
  negative map is trained the same way on negative candidates, each added to the pair's top positive point, ranked by
  the predicted IoU of the two-point mask. A point on the background or on an object's edge gives the segmenter an
  ambiguous prompt and a low predicted IoU; a point inside an object, a confident mask. No mask of the data is read:
  the segmenter was pretrained with masks of its own, as SAM was.
* **Mask alignment** (optional, ``mask_alignment > 0``): for each pair, ``samples`` point sets are drawn from the
  generator's maps, the segmenter turns each into a mask, and the mask's region embedding (the dense CLIP features
  pooled over the mask) must match its own sentence better than the batch's other sentences: reward = log-softmax
  over sentences, trained by the policy gradient (REINFORCE, the mean reward of the pair's samples as baseline).
  Off by default: on the workbench its reward prefers small fragments (the README's ablation).

Curriculum: ``stages`` run in order, each with its own data (the workbench: object-centric images first, then
referring scenes); ``curriculum: false`` trains on the union of all stages' data for the same total steps.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from textseg.errors import ConfigError, UserError
from textseg.ris.points import PointGenerator, dense_and_text, near_patches, patch_centres, save_point_generator

logger = logging.getLogger(__name__)


@dataclass
class Stage:
    """One curriculum stage: a name, its number of steps, and its image-text shards (brace notation; relative
    paths are taken from the data root)."""

    name: str
    steps: int
    data: list[str]


@dataclass
class PointTrainConfig:
    """Settings of :func:`train_point_generator` (the YAML file ``configs/points/default.yaml`` holds the defaults).

    Attributes:
        stages: the curriculum, in order.
        curriculum: False: one stage over the union of the stages' data, for their total steps (the ablation).
        batch_size: pairs per step; lr, weight_decay, warmup_steps: AdamW with linear warm-up, cosine decay.
        localization, confidence, mask_alignment: loss weights (0 switches a term off).
        pool_temperature: τ of the localisation pooling.
        loc_images: images each sentence is compared on (its own and loc_images - 1 others of the batch).
        candidates: patches per pair (and per map) the segmenter is prompted with for the confidence term.
        confidence_temperature: temperature of the predicted-IoU target distribution.
        samples: point sets drawn per pair for the mask-alignment reward.
        n_positive, n_negative: points per drawn set.
        image_size: side the images are resized to (a multiple of the CLIP patch size).
        seed: seeds the generator's initialisation, the data order and the point sampling.
        width, depth, heads: :class:`~textseg.ris.points.PointGenerator` size.
    """

    stages: list[Stage] = field(default_factory=list)
    curriculum: bool = True
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    localization: float = 1.0
    confidence: float = 1.0
    mask_alignment: float = 0.0
    pool_temperature: float = 1.0
    loc_images: int = 8
    candidates: int = 12
    confidence_temperature: float = 0.1
    samples: int = 4
    n_positive: int = 1
    n_negative: int = 1
    image_size: int = 96
    seed: int = 0
    width: int = 128
    depth: int = 2
    heads: int = 4

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


def load_point_config(path: str | Path | None = None, **overrides: Any) -> PointTrainConfig:
    """The training config of a YAML file (default: the packaged ``points/default.yaml``), with ``overrides``."""
    import yaml

    if path is None:
        from importlib.resources import files

        text = files("textseg").joinpath("configs/points/default.yaml").read_text(encoding="utf-8")
        where = "configs/points/default.yaml"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"point training config {p} does not exist")
        text, where = p.read_text(encoding="utf-8"), str(p)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must hold a mapping of settings")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = set(PointTrainConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    stages = []
    for i, st in enumerate(raw.pop("stages", []) or []):
        if not isinstance(st, dict) or not {"name", "steps", "data"} <= set(st):
            raise ConfigError(f"{where}: stages[{i}] needs name, steps and data")
        data = st["data"] if isinstance(st["data"], list) else [st["data"]]
        if not isinstance(st["steps"], int) or st["steps"] < 0:
            raise ConfigError(f"{where}: stages[{i}].steps must be a whole number >= 0, got {st['steps']!r}")
        stages.append(Stage(str(st["name"]), int(st["steps"]), [str(d) for d in data]))
    cfg = PointTrainConfig(stages=stages, **raw)
    _check(cfg, where)
    return cfg


def _check(cfg: PointTrainConfig, where: str) -> None:
    if not cfg.stages or cfg.total_steps < 1:
        raise ConfigError(f"{where}: stages must hold at least one step")
    for name in ("batch_size", "loc_images", "samples", "candidates", "n_positive", "image_size", "width", "depth",
                 "heads"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise ConfigError(f"{where}: {name} must be a whole number >= 1, got {getattr(cfg, name)!r}")
    if cfg.batch_size < 2:
        raise ConfigError(f"{where}: batch_size must be >= 2 (the losses compare pairs), got {cfg.batch_size}")
    if not isinstance(cfg.n_negative, int) or cfg.n_negative < 0:
        raise ConfigError(f"{where}: n_negative must be a whole number >= 0, got {cfg.n_negative!r}")
    for name in ("lr", "pool_temperature", "confidence_temperature"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ConfigError(f"{where}: {name} must be a positive number, got {v!r}")
    for name in ("weight_decay", "localization", "confidence", "mask_alignment"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{where}: {name} must be a number >= 0, got {v!r}")
    if cfg.candidates < 2:
        raise ConfigError(f"{where}: candidates must be >= 2 (the confidence term ranks them), got {cfg.candidates}")
    if cfg.localization == 0 and cfg.confidence == 0 and cfg.mask_alignment == 0:
        raise ConfigError(f"{where}: localization, confidence and mask_alignment are all 0: nothing to train")


# -- data ----------------------------------------------------------------------------------------------------------


def _resolve(patterns: Sequence[str], root: Path | None) -> list[str]:
    from textseg.train.data import expand_urls

    urls: list[str] = []
    for pattern in patterns:
        full = pattern if root is None or Path(pattern).is_absolute() or "://" in pattern else str(root / pattern)
        found = expand_urls(full)
        missing = [u for u in found if "://" not in u and not Path(u).is_file()]
        if missing:
            raise UserError(f"training shard {missing[0]} does not exist (from {pattern!r}"
                            f"{f', data root {root}' if root else ''})")
        urls += found
    return urls


def pair_batches(urls: list[str], batch_size: int, image_size: int, seed: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless ``(images (B, S, S, 3) uint8, sentences)`` batches from image-text shards, reshuffled each epoch;
    only the image and the text of a sample are decoded (corrupt samples are counted and skipped)."""
    from PIL import Image

    from textseg.train.data import caption_pipeline

    def resize(img: Image.Image) -> np.ndarray:
        return np.asarray(img.resize((image_size, image_size), Image.BILINEAR) if img.size != (image_size,) * 2
                          else img)

    pipe = caption_pipeline(urls, shuffle_buffer=1000, seed=seed, split_by_node=False, split_by_worker=False,
                            image_transform=resize)
    epoch, images, texts = 0, [], []
    while True:
        pipe.set_epoch(epoch)
        n = 0
        for image, text in pipe:
            n += 1
            images.append(image)
            texts.append(text)
            if len(images) == batch_size:
                yield np.stack(images), texts
                images, texts = [], []
        if n == 0:
            raise UserError(f"no readable image-text sample in {len(urls)} shard(s) ({urls[0]} ...)")
        epoch += 1


# -- losses ----------------------------------------------------------------------------------------------------------


def localization_loss(positive: torch.Tensor, same: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """TRIS-style localisation loss.

    Args:
        positive: (B, M, gh, gw) positive logits of each sentence (dim 0) on M candidate images, its own first.
        same: (B, M) bool, candidates whose own sentence is the same text (these count as correct too; column 0
            is always True).
        temperature: τ of the logsumexp pooling over patches.
    """
    b, m = positive.shape[:2]
    pooled = temperature * torch.logsumexp(positive.reshape(b, m, -1) / temperature, -1)
    log_p = F.log_softmax(pooled, dim=1)
    return -(torch.logsumexp(log_p.masked_fill(~same, float("-inf")), 1)).mean()


def candidate_images(b: int, m: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, M) image indices per sentence: its own image first, then M - 1 others of the batch drawn at random
    (all others when M >= B)."""
    m = min(m, b)
    others = torch.stack([torch.randperm(b - 1, generator=generator)[: m - 1] for _ in range(b)])
    others = others + (others >= torch.arange(b)[:, None]).long()  # skip the own index
    return torch.cat([torch.arange(b)[:, None], others], 1)


def region_features(masks: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """(B, S, E) normalised mean dense features over (B, S, H, W) masks (each mask's area share per patch as its
    weight; an empty mask gives zeros)."""
    b, s, h, w = masks.shape
    gh, gw, e = dense.shape[1:]
    weights = F.adaptive_avg_pool2d(masks.float().reshape(b * s, 1, h, w), (gh, gw)).reshape(b, s, gh * gw)
    pooled = weights @ dense.reshape(b, gh * gw, e)
    return F.normalize(pooled / weights.sum(-1, keepdim=True).clamp_min(1e-6), dim=-1)


def alignment_reward(regions: torch.Tensor, text: torch.Tensor, sentences: Sequence[str], scale: float
                     ) -> torch.Tensor:
    """(B, S) log-probability that each mask's region embedding picks its own sentence among the batch's.

    Args:
        regions: (B, S, E) normalised region embeddings (S masks per pair).
        text: (B, E) sentence embeddings.
        sentences: the B sentences (equal sentences count as the own one).
        scale: CLIP's logit scale.
    """
    logits = scale * regions @ F.normalize(text, dim=-1).T  # (B, S, B)
    same = torch.tensor([[a == c for c in sentences] for a in sentences], device=regions.device)
    log_p = F.log_softmax(logits, -1)
    return torch.logsumexp(log_p.masked_fill(~same[:, None, :], float("-inf")), -1)


def confidence_candidates(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The patches the segmenter is prompted with for the confidence term: the ``k - k // 2`` best of each score
    map, then ``k // 2`` others drawn uniformly (so that patches the map ranks low can climb).

    Args:
        scores: (B, N) flat score maps (detached here).
        k: candidates per map.
        exclude: (B, N) bool patches never taken (e.g. around the positive point, for negatives).
        generator: for the random draw (on the CPU, so that runs repeat on any device).

    Returns:
        ``(index (B, k), valid (B, k))``: flat patch indices, distinct within a row; ``valid`` is False where
        fewer than ``k`` patches were allowed.
    """
    b, n = scores.shape
    k = min(k, n)
    blocked = torch.zeros(b, n, dtype=torch.bool, device=scores.device) if exclude is None else exclude.clone()
    s = scores.detach().float().masked_fill(blocked, float("-inf"))
    top_score, top = s.topk(k - k // 2, -1)
    blocked.scatter_(1, top, True)
    keys = torch.rand((b, n), generator=generator).to(scores.device).masked_fill(blocked, -1.0)
    key, drawn = keys.topk(k // 2, -1)
    return torch.cat([top, drawn], 1), torch.cat([torch.isfinite(top_score), key >= 0], 1)


def listwise_loss(logits: torch.Tensor, reward: torch.Tensor, valid: torch.Tensor, temperature: float
                  ) -> torch.Tensor:
    """Cross-entropy from ``softmax(reward / temperature)`` to ``softmax(logits)`` over each row's valid candidates
    (rows with fewer than two valid candidates are left out; none left gives 0).

    Args:
        logits: (B, K) the map's logits at the candidates.
        reward: (B, K) their rewards (the segmenter's predicted IoU).
        valid: (B, K) bool.
        temperature: > 0; smaller makes the target peakier.
    """
    target = F.softmax((reward.float() / temperature).masked_fill(~valid, float("-inf")), -1)
    log_p = F.log_softmax(logits.float().masked_fill(~valid, float("-inf")), -1).masked_fill(~valid, 0.0)
    rows = valid.sum(-1) >= 2
    if not bool(rows.any()):
        return logits.sum() * 0.0
    return -(target * log_p).sum(-1)[rows].mean()


def sample_points(positive: torch.Tensor, negative: torch.Tensor, samples: int, n_positive: int, n_negative: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``samples`` point sets per map pair, without replacement within a set (Gumbel top-k).

    Returns:
        ``(index (B, S, K), labels (B, S, K), log_prob (B, S))``: flat patch indices (positives first), 1/0
        labels, and the sum of each point's log-probability under its map's softmax (negatives: over the patches
        that are not positives of the set).
    """
    b = positive.shape[0]
    pos = positive.reshape(b, 1, -1).expand(b, samples, -1)
    neg = negative.reshape(b, 1, -1).expand(b, samples, -1)

    def gumbel(shape: torch.Size) -> torch.Tensor:
        u = torch.rand(shape, generator=generator, device="cpu").to(positive.device)
        return -torch.log(-torch.log(u.clamp(1e-9, 1 - 1e-9)))

    lp_pos = F.log_softmax(pos, -1)
    p_idx = (lp_pos.detach() + gumbel(pos.shape)).topk(n_positive, -1).indices
    log_prob = lp_pos.gather(-1, p_idx).sum(-1)
    index, labels = p_idx, torch.ones_like(p_idx)
    if n_negative:
        taken = torch.zeros_like(neg, dtype=torch.bool).scatter(-1, p_idx, True)
        lp_neg = F.log_softmax(neg.masked_fill(taken, float("-inf")), -1)
        n_idx = (lp_neg.detach() + gumbel(neg.shape)).topk(n_negative, -1).indices
        log_prob = log_prob + lp_neg.gather(-1, n_idx).sum(-1)
        index = torch.cat([p_idx, n_idx], -1)
        labels = torch.cat([labels, torch.zeros_like(n_idx)], -1)
    return index, labels, log_prob


# -- training --------------------------------------------------------------------------------------------------------


def _lr_at(step: int, cfg: PointTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def confidence_loss(positive: torch.Tensor, negative: torch.Tensor, core: Any, encoded: Any,
                    image_size: tuple[int, int], cfg: PointTrainConfig, rng: torch.Generator
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """The segmenter-confidence term (module docstring) of (B, gh, gw) positive and negative maps, and its parts.

    Positive candidates are prompted alone; negative candidates (none within one patch of the pair's top positive)
    together with that positive, as at inference. The negative part is skipped when ``cfg.n_negative`` is 0.
    """
    b, gh, gw = positive.shape
    device = positive.device
    flat_pos = positive.reshape(b, -1)
    idx, ok = confidence_candidates(flat_pos, cfg.candidates, None, rng)
    k = idx.shape[1]
    coords = patch_centres(idx, (gh, gw), image_size)[:, :, None]
    with torch.no_grad():
        _, q_pos, _ = core.decode(encoded, coords, torch.ones(b, k, 1, dtype=torch.int, device=device))
    loss = listwise_loss(flat_pos.gather(1, idx), q_pos, ok, cfg.confidence_temperature)
    stats = {"confidence_pos": float(loss.detach()), "iou_pred_top": float(q_pos[:, 0].mean())}
    if cfg.n_negative:
        top = flat_pos.detach().argmax(1)
        flat_neg = negative.reshape(b, -1)
        n_idx, n_ok = confidence_candidates(flat_neg, cfg.candidates, near_patches(top, (gh, gw), 1), rng)
        k = n_idx.shape[1]
        both = torch.cat([patch_centres(top, (gh, gw), image_size)[:, None, None].expand(b, k, 1, 2),
                          patch_centres(n_idx, (gh, gw), image_size)[:, :, None]], 2)
        labels = torch.tensor([1, 0], dtype=torch.int, device=device).expand(b, k, 2)
        with torch.no_grad():
            _, q_neg, _ = core.decode(encoded, both, labels)
        neg_loss = listwise_loss(flat_neg.gather(1, n_idx), q_neg, n_ok, cfg.confidence_temperature)
        loss = loss + neg_loss
        stats.update(confidence_neg=float(neg_loss.detach()), iou_pred_top_neg=float(q_neg[:, 0].mean()))
    return loss, stats


def train_step(generator: PointGenerator, model: Any, core: Any, images: np.ndarray, sentences: list[str],
               cfg: PointTrainConfig, rng: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch (module docstring) and its parts. ``images`` (B, S, S, 3) uint8; ``core`` the
    frozen promptable segmenter's tensor core (``encode`` / ``decode``)."""
    device = next(generator.parameters()).device
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div(255)
    dense, text = dense_and_text(model, x, sentences)
    b, gh, gw, e = dense.shape
    stats: dict[str, float] = {}
    loss = torch.zeros((), device=device)
    pos, neg = generator(dense, text)
    if cfg.localization > 0:
        cand = candidate_images(b, cfg.loc_images, rng)[:, 1:].to(device)  # (B, M - 1): the others
        m = cand.shape[1]
        pos_other, _ = generator(dense[cand].reshape(b * m, gh, gw, e), text[:, None].expand(b, m, e).reshape(-1, e))
        candidates = torch.cat([pos[:, None], pos_other.reshape(b, m, gh, gw)], 1)
        same = torch.tensor([[True] + [sentences[int(i)] == sentences[j] for i in row] for j, row in
                             enumerate(cand.tolist())], device=device)
        loc = localization_loss(candidates, same, cfg.pool_temperature)
        loss = loss + cfg.localization * loc
        stats["localization"] = float(loc.detach())
    if cfg.confidence > 0 or cfg.mask_alignment > 0:
        with torch.no_grad():
            enc = core.encode(torch.from_numpy(images).to(device))
    if cfg.confidence > 0:
        conf, conf_stats = confidence_loss(pos, neg, core, enc, images.shape[1:3], cfg, rng)
        loss = loss + cfg.confidence * conf
        stats.update(conf_stats)
    if cfg.mask_alignment > 0:
        index, labels, log_prob = sample_points(pos, neg, cfg.samples, cfg.n_positive, cfg.n_negative, rng)
        coords = patch_centres(index, (gh, gw), images.shape[1:3])
        with torch.no_grad():
            masks, _, _ = core.decode(enc, coords, labels)
            reward = alignment_reward(region_features(masks, dense), text, sentences,
                                      float(model.clip.logit_scale.exp()))
        advantage = reward - reward.mean(1, keepdim=True)
        pg = -(advantage * log_prob).mean()
        loss = loss + cfg.mask_alignment * pg
        stats["reward"] = float(reward.mean())
        stats["policy"] = float(pg.detach())
        stats["mask_area"] = float(masks.float().mean())
    stats["loss"] = float(loss.detach())
    return loss, stats


def train_point_generator(model: Any, core: Any, cfg: PointTrainConfig, out: str | Path, *,
                          data_root: str | Path | None = None, progress: bool = True,
                          meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a :class:`~textseg.ris.points.PointGenerator` (module docstring) and write ``out/final.pt``,
    ``out/metrics.jsonl`` and ``out/config.json``.

    Args:
        model: the frozen textseg model (its CLIP gives dense and text features).
        core: the frozen promptable segmenter's tensor core.
        cfg: the settings (:func:`load_point_config`).
        out: output folder.
        data_root: folder that relative shard patterns are taken from.
        progress: show a tqdm bar.
        meta: saved with the checkpoint (e.g. the model and segmenter checkpoints used).

    Returns:
        A summary: steps per stage, seconds, final loss parts.
    """
    from tqdm import tqdm

    from textseg.io import atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(data_root) if data_root is not None else None
    stages = [(s.name, s.steps, _resolve(s.data, root)) for s in cfg.stages]
    if not cfg.curriculum:
        stages = [("mixed", cfg.total_steps, [u for _, _, urls in stages for u in urls])]
    device = next(model.parameters()).device
    model.eval().requires_grad_(False)
    torch.manual_seed(cfg.seed)
    embed_dim = int(model.clip.text_projection.shape[1]) if getattr(model.clip, "text_projection", None) is not None \
        else int(model.clip.visual.output_dim)
    generator = PointGenerator(embed_dim, cfg.width, cfg.depth, cfg.heads).to(device)
    opt = torch.optim.AdamW(generator.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = torch.Generator().manual_seed(cfg.seed)
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    start, step, summary = time.perf_counter(), 0, {"stages": []}
    bar = tqdm(total=cfg.total_steps, desc="point generator", unit="step", disable=not progress)
    last: dict[str, float] = {}
    with metrics_path.open("a", encoding="utf-8") as metrics:
        for si, (name, steps, urls) in enumerate(stages):
            batches = pair_batches(urls, cfg.batch_size, cfg.image_size, cfg.seed * 1000 + si)
            for _ in range(steps):
                images, sentences = next(batches)
                for group in opt.param_groups:
                    group["lr"] = _lr_at(step, cfg)
                loss, last = train_step(generator, model, core, images, sentences, cfg, rng)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(generator.parameters(), 1.0)
                opt.step()
                step += 1
                metrics.write(json.dumps({"step": step, "stage": name, **{k: round(v, 5) for k, v in last.items()}})
                              + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(stage=name, loss=f"{last['loss']:.3f}")
            summary["stages"].append({"name": name, "steps": steps, "shards": len(urls)})
    bar.close()
    summary.update(steps=step, seconds=round(time.perf_counter() - start, 1), final=last,
                   curriculum=cfg.curriculum)
    save_point_generator(generator.cpu(), out / "final.pt", {**(meta or {}), "config": asdict(cfg),
                                                              "summary": summary})
    return summary


__all__ = ["PointTrainConfig", "Stage", "alignment_reward", "confidence_candidates", "confidence_loss",
           "listwise_loss", "load_point_config", "localization_loss", "pair_batches", "region_features", "sample_points", "train_point_generator", "train_step"]

"""Global-batch contrastive losses under DDP: 2 gloo ranks on CPU against one process on the concatenated batch.

A tiny shared "model" (two linear towers and a learnable temperature) embeds each rank's images, regions, captions
and nouns; :func:`gather_features` gives every rank the global batch. Each rank's loss and DDP's averaged gradients
must equal those of one process on the concatenated batch.
"""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from textseg.losses import image_text_loss, noun_region_loss, same_noun_positives
from textseg.train.distributed import ContrastiveFeatures, gather_features, noun_keys

D_IN, D = 6, 4
WORDS = ["dog", "bus", "cat", "sheep", "chair"]
MODES = ("one_way", "region_batch", "two_way")


class Towers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.visual = nn.Linear(D_IN, D).double()
        self.text = nn.Linear(D_IN, D).double()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0), dtype=torch.float64))

    def forward(self, images, regions, captions, nouns):
        return (F.normalize(self.visual(images), dim=-1), F.normalize(self.visual(regions), dim=-1),
                F.normalize(self.text(captions), dim=-1), F.normalize(self.text(nouns), dim=-1))


def shards(rank1_nouns: bool) -> list[dict]:
    """Two ranks' inputs: 3 images with K = 2 on rank 0, 4 with K = 3 on rank 1; padding regions, an image with no
    valid region (its nouns are dropped), nouns shared within and across ranks; optionally none on rank 1."""
    g = torch.Generator().manual_seed(1)
    table = torch.randn(len(WORDS), D_IN, generator=g, dtype=torch.float64)  # the same noun, the same input
    pairs = [[("dog", 0), ("bus", 0), ("dog", 2), ("cat", 1), ("chair", 2)],
             [("dog", 1), ("sheep", 3), ("bus", 2), ("cat", 0), ("dog", 3)] if rank1_nouns else []]
    out = []
    for b, k, p in ((3, 2, pairs[0]), (4, 3, pairs[1])):
        valid = torch.ones(b, k, dtype=torch.bool)
        valid[0, -1] = False
        out.append({"images": torch.randn(b, D_IN, generator=g, dtype=torch.float64),
                    "regions": torch.randn(b, k, D_IN, generator=g, dtype=torch.float64), "valid": valid,
                    "captions": torch.randn(b, D_IN, generator=g, dtype=torch.float64),
                    "nouns": table[[WORDS.index(w) for w, _ in p]].reshape(len(p), D_IN),
                    "words": [w for w, _ in p], "noun_image": torch.tensor([i for _, i in p], dtype=torch.long)})
    out[1]["valid"][2] = False  # rank 1's image 2 has no valid region: its "bus" is dropped
    return out


def losses(model: nn.Module, f: ContrastiveFeatures, mode: str) -> torch.Tensor:
    scale = model.logit_scale.exp()
    nr, _ = noun_region_loss(f.nouns, f.noun_image, f.regions, f.valid, scale, mode=mode, positives=f.positives())
    return image_text_loss(f.image, f.text, scale) + nr


def local_features(model: nn.Module, s: dict) -> ContrastiveFeatures:
    image, regions, text, nouns = model(s["images"], s["regions"], s["captions"], s["nouns"])
    return ContrastiveFeatures(image=image, text=text, regions=regions, valid=s["valid"], nouns=nouns,
                               noun_image=s["noun_image"], noun_keys=noun_keys(s["words"]))


def single_process(rank1_nouns: bool, mode: str) -> tuple[float, dict[str, torch.Tensor]]:
    """The reference: one process, the two shards concatenated (regions padded to K = 3)."""
    s0, s1 = shards(rank1_nouns)
    k = s1["regions"].shape[1]
    pad = lambda t: torch.cat([t, t.new_zeros(t.shape[0], k - t.shape[1], *t.shape[2:])], 1)  # noqa: E731
    s = {"images": torch.cat([s0["images"], s1["images"]]), "captions": torch.cat([s0["captions"], s1["captions"]]),
         "regions": torch.cat([pad(s0["regions"]), s1["regions"]]), "valid": torch.cat([pad(s0["valid"]), s1["valid"]]),
         "nouns": torch.cat([s0["nouns"], s1["nouns"]]), "words": s0["words"] + s1["words"],
         "noun_image": torch.cat([s0["noun_image"], s1["noun_image"] + 3])}
    model = Towers()
    loss = losses(model, local_features(model, s), mode)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _rank_main(rank: int, init_file: str, rank1_nouns: bool, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = Towers()
        ddp = nn.parallel.DistributedDataParallel(model)
        shard = shards(rank1_nouns)[rank]
        out = {}
        for mode in MODES:
            image, regions, text, nouns = ddp(shard["images"], shard["regions"], shard["captions"], shard["nouns"])
            local = ContrastiveFeatures(image=image, text=text, regions=regions, valid=shard["valid"], nouns=nouns,
                                        noun_image=shard["noun_image"], noun_keys=noun_keys(shard["words"]))
            glob = gather_features(local)
            loss = losses(model, glob, mode)
            loss.backward()  # DDP averages the gradients over the ranks
            out[mode] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()},
                         glob.noun_image.tolist(), glob.positives().tolist())
            model.zero_grad(set_to_none=True)
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("rank1_nouns", [True, False], ids=["nouns-on-both", "no-noun-on-rank-1"])
def test_two_gloo_ranks_equal_one_process_on_the_concatenated_batch(tmp_path, rank1_nouns):
    with mp.Manager() as manager:
        shared = manager.dict()
        mp.spawn(_rank_main, args=(str(tmp_path / "pg"), rank1_nouns, shared), nprocs=2, join=True)
        results = dict(shared)
    s0, s1 = shards(rank1_nouns)
    words = s0["words"] + s1["words"]
    images = [set() for _ in range(7)]
    for w, i in zip(words, s0["noun_image"].tolist() + (s1["noun_image"] + 3).tolist()):
        images[i].add(w)
    for mode in MODES:
        ref_loss, ref_grads = single_process(rank1_nouns, mode)
        for rank in (0, 1):
            loss, grads, noun_image, positives = results[rank][mode]
            assert loss == pytest.approx(ref_loss, abs=1e-9), (mode, rank)
            # DDP's mean over ranks of the per-rank gradients is the one-process gradient, for the towers (only
            # the own features carry gradient, times the world size) and for the temperature (used after the gather)
            for name, g in grads.items():
                torch.testing.assert_close(g, ref_grads[name], atol=1e-9, rtol=1e-9, msg=f"{mode} {name}")
            assert noun_image == s0["noun_image"].tolist() + (s1["noun_image"] + 3).tolist()
            # same-noun positives across ranks: "dog" of rank 0 has rank 1's images with a dog as positives
            assert positives == [[w in images[j] for j in range(7)] for w in words]


def test_noun_keys_are_stable_and_positives_follow_them():
    keys = noun_keys(["a photo of a dog.", "a photo of a bus.", "a photo of a dog."])
    assert keys.dtype == torch.long and keys[0] == keys[2] != keys[1] and bool((keys >= 0).all())
    assert keys[0].item() == 0x37A0F64DA35B4804  # a fixed hash, not Python's per-process salted one
    pos = same_noun_positives(keys, torch.tensor([0, 0, 2]), 3)
    assert pos.tolist() == [[True, False, True], [True, False, False], [True, False, True]]
    assert same_noun_positives(keys[:0], torch.zeros(0, dtype=torch.long), 3).shape == (0, 3)


def test_gather_features_is_the_identity_on_one_process():
    f = ContrastiveFeatures(image=torch.randn(2, 3), text=torch.randn(2, 3))
    assert gather_features(f) is f


def _counts_rank_main(rank: int, init_file: str, results) -> None:
    from textseg.train.distributed import gather_objects, sum_counts

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        mine = [{"decode_error": 3, "empty_caption": 1}, {"decode_error": 2, "read_error": 1}][rank]
        results[rank] = (sum_counts(mine), gather_objects({"rank": rank, "pos": [rank, 7]}))
    finally:
        dist.destroy_process_group()


def test_skip_counts_are_summed_over_ranks(tmp_path):
    from textseg.train.distributed import gather_objects, sum_counts

    with mp.Manager() as manager:
        shared = manager.dict()
        mp.spawn(_counts_rank_main, args=(str(tmp_path / "pg"), shared), nprocs=2, join=True)
        results = dict(shared)
    for rank in (0, 1):
        total, objs = results[rank]
        assert total == {"decode_error": 5, "empty_caption": 1, "read_error": 1}
        assert objs == [{"rank": 0, "pos": [0, 7]}, {"rank": 1, "pos": [1, 7]}]
    assert sum_counts({"b": 2, "a": 0, "c": 1}) == {"b": 2, "c": 1} and gather_objects(5) == [5]

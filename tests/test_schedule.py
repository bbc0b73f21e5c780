"""The one training toolkit: warm-up + cosine schedule and the AdamW builder, hand-computed."""

import math

import pytest
import torch

from textseg.train.schedule import build_optimizer, lr_scheduler, no_decay_by_shape, warmup_cosine


def test_warmup_cosine_values():
    # warm-up reaches start on its last step (offset 0) or one step later (offset 1, DINO's)
    assert warmup_cosine(0, 10, warmup=4) == pytest.approx(0.25)
    assert warmup_cosine(3, 10, warmup=4) == pytest.approx(1.0)
    assert warmup_cosine(0, 10, warmup=4, warmup_offset=1) == pytest.approx(0.2)
    assert warmup_cosine(3, 10, warmup=4, warmup_offset=1) == pytest.approx(0.8)
    # cosine from start at step `warmup` to end at `steps`: a quarter of the way is (1 + cos(pi/4)) / 2
    assert warmup_cosine(4, 12, start=2.0, end=0.5, warmup=4) == pytest.approx(2.0)
    quarter = 0.5 + 1.5 * (1 + math.cos(math.pi / 4)) / 2
    assert warmup_cosine(6, 12, start=2.0, end=0.5, warmup=4) == pytest.approx(quarter)
    assert warmup_cosine(8, 12, start=2.0, end=0.5, warmup=4) == pytest.approx(1.25)
    assert warmup_cosine(12, 12, start=2.0, end=0.5, warmup=4) == pytest.approx(0.5)
    assert warmup_cosine(50, 12, start=2.0, end=0.5, warmup=4) == pytest.approx(0.5)  # stays at the end
    assert warmup_cosine(5, 5) == pytest.approx(0.0) and warmup_cosine(0, 0) == pytest.approx(1.0)  # no warm-up


def test_build_optimizer_groups_and_scheduler():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    net[2].bias.requires_grad_(False)  # frozen: in no group
    opt = build_optimizer(net.named_parameters(), lr=0.1, weight_decay=0.05, betas=(0.8, 0.9))
    decay, plain = opt.param_groups
    assert decay["decay"] and decay["weight_decay"] == 0.05 and not plain["decay"] and plain["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[2].weight)}
    assert {id(p) for p in plain["params"]} == {id(net[0].bias), id(net[1].weight), id(net[1].bias)}
    assert decay["betas"] == (0.8, 0.9) and no_decay_by_shape("w", net[0].bias)
    everything = build_optimizer(net.named_parameters(), lr=0.1, weight_decay=0.05, no_decay=None)
    assert len(everything.param_groups) == 1 and len(everything.param_groups[0]["params"]) == 5
    sched = lr_scheduler(opt, 10, warmup=2, end=0.1)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1 * warmup_cosine(2, 10, end=0.1, warmup=2)])

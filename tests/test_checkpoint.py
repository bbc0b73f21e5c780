import os
import random

import numpy as np
import pytest
import torch

from textseg.errors import UserError
from textseg import artifacts as ckpt


def small_state(value: float = 1.0) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "b": torch.arange(3.0), "flag": torch.tensor(True)}


def save_step(out, step: int, keep_last: int = 2, **extra) -> None:
    ckpt.save_checkpoint(ckpt.step_checkpoint_path(out, step), small_state(step), step=step,
                         model_config={"name": "tiny"}, optimizer={"state": {}, "param_groups": [{"lr": 0.1}]},
                         scheduler={"last_epoch": step}, rng=[ckpt.rng_state()], config={"seed": 0}, **extra)
    ckpt.prune_step_checkpoints(out, keep_last)


def test_round_trip_prune_and_resume_state(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for step in (2, 4, 6):
        save_step(tmp_path, step)
    assert [p.name for p in ckpt.step_checkpoints(tmp_path)] == ["step-0000004.pt", "step-0000006.pt"]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-0000004.pt", "step-0000006.pt"]  # no temp file
    state, config = ckpt.load_model_weights(ckpt.step_checkpoint_path(tmp_path, 6))
    assert config == {"name": "tiny"} and all(torch.equal(state[k], v) for k, v in small_state(6).items())
    resume = ckpt.latest_resume_state(tmp_path)
    assert resume.step == 6 and resume.scheduler == {"last_epoch": 6} and resume.config == {"seed": 0}
    assert resume.path.name == "step-0000006.pt" and resume.rng_for(3) is resume.rng[0]
    final = ckpt.save_checkpoint(tmp_path / "final.pt", small_state(), step=6)
    assert ckpt.load_model_weights(final)[1] is None
    assert ckpt.latest_resume_state(tmp_path / "elsewhere") is None


def test_newest_unreadable_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    (tmp_path / "checkpoints").mkdir()
    for step in (2, 4):
        save_step(tmp_path, step)
    newest = ckpt.step_checkpoint_path(tmp_path, 4)
    newest.write_bytes(newest.read_bytes()[:1000])  # damaged on disk
    resume = ckpt.latest_resume_state(tmp_path)
    assert resume.step == 2 and "step-0000004.pt" in caplog.text


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("content", ["missing", "random", "empty", "pickle_with_code", "no_model", "list"])
def test_anything_but_a_textseg_checkpoint_is_a_one_line_error_naming_the_file(tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"{content}.pt"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "pickle_with_code":
        torch.save({"model": {"w": torch.zeros(1)}, "hook": RunsCode()}, path)
    elif content == "no_model":
        torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    elif content == "list":
        torch.save([torch.zeros(1)], path)
    with pytest.raises(UserError) as err:
        ckpt.load_model_weights(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "pwned").exists()  # loading never ran the file's code
    if content == "pickle_with_code":
        assert "could run code" in str(err.value)


def test_optimizer_and_scheduler_states_load_without_unpickling_code(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (step + 1))
    net(torch.ones(1, 3)).sum().backward()
    opt.step(), sched.step()
    ckpt.save_checkpoint(ckpt.step_checkpoint_path(tmp_path, 1), net.state_dict(), step=1, optimizer=opt.state_dict(),
                         scheduler=sched.state_dict(), rng=[ckpt.rng_state()])
    resume = ckpt.latest_resume_state(tmp_path)  # read with torch.load(weights_only=True)
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 1 / (step + 1))
    opt2.load_state_dict(resume.optimizer), sched2.load_state_dict(resume.scheduler)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert opt2.param_groups[0]["betas"] == (0.9, 0.98) and sched2.get_last_lr() == sched.get_last_lr() == [0.05]


def test_rng_state_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # a cached gaussian is part of numpy's state
    state = ckpt.rng_state()
    expected = (torch.rand(3), np.random.normal(size=3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(state)
    got = (torch.rand(3), np.random.normal(size=3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_weights_checksum_sees_every_byte():
    a = small_state()
    b = {k: v.clone() for k, v in a.items()}
    assert ckpt.weights_checksum(a) == ckpt.weights_checksum(b)
    b["w"][1, 2] = torch.nextafter(b["w"][1, 2], torch.tensor(2.0))
    assert ckpt.weights_checksum(a) != ckpt.weights_checksum(b)
    module = torch.nn.Linear(2, 2)
    assert ckpt.weights_checksum(module) == ckpt.weights_checksum(module.state_dict())


def test_fallback_warning_names_both_files_and_no_usable_checkpoint_is_one_line(tmp_path, caplog):
    (tmp_path / "checkpoints").mkdir()
    for step in (2, 4, 6):
        save_step(tmp_path, step, keep_last=3)
    ckpt.step_checkpoint_path(tmp_path, 6).write_bytes(b"")
    ckpt.step_checkpoint_path(tmp_path, 4).write_bytes(np.random.default_rng(0).bytes(2000))
    assert ckpt.latest_resume_state(tmp_path).step == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and all("resuming from the previous checkpoint step-0000002.pt" in w for w in warnings)
    assert "step-0000006.pt" in warnings[0] and "step-0000004.pt" in warnings[1]
    ckpt.step_checkpoint_path(tmp_path, 2).write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match="no usable checkpoint to resume from") as err:
        ckpt.latest_resume_state(tmp_path)
    assert "\n" not in str(err.value) and "3 checkpoint(s) tried" in str(err.value)


def test_a_malformed_data_position_makes_a_checkpoint_unusable(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    good = {"epoch": 1, "next": 0, "pos": [5, 3], "ended": [False, True], "readers": 2, "skipped": {"decode_error": 2}}
    save_step(tmp_path, 2, data=[good])
    save_step(tmp_path, 4, data=[{**good, "pos": [5]}])  # two readers, one position
    resume = ckpt.latest_resume_state(tmp_path)
    assert resume.step == 2 and resume.data_for(0, 1) == good
    assert resume.data_for(1, 2) == {"epoch": 1, "readers": -1, "skipped": {}}  # another world size: next epoch


TINY_CFG = {"name": "tiny", "description": "x", "backbone": {"type": "timm", "name": "vit_small_patch16_224",
                                                            "kwargs": {"embed_dim": 48}},
            "clip": {"arch": "textseg-tiny-vit16", "pretrained": None, "quick_gelu": False},
            "grouping": {"num_groups": 4}, "region": {"masked_blocks": 1, "mode": "tokens"}}


def test_same_architecture_and_same_model_checks():
    pooled = {**TINY_CFG, "name": "tiny2", "description": "y", "region": {"masked_blocks": 1, "mode": "pool"}}
    ckpt.check_same_architecture(TINY_CFG, pooled, "a.pt")  # region settings: the same weights
    ckpt.check_same_model(TINY_CFG, {**TINY_CFG, "name": "copy", "description": ""}, "a.pt")
    with pytest.raises(UserError, match=r"a.pt was saved by a run of model 'tiny' with region .*'pool'"):
        ckpt.check_same_model(TINY_CFG, pooled, "a.pt")
    wider = {**TINY_CFG, "name": "wide", "backbone": {**TINY_CFG["backbone"], "kwargs": {"embed_dim": 64}}}
    with pytest.raises(UserError, match="a.pt holds the weights of model 'tiny', not of model 'wide' "
                                        r"\(backbone differs"):
        ckpt.check_same_architecture(TINY_CFG, wider, "a.pt")
    other_clip = {**TINY_CFG, "clip": {**TINY_CFG["clip"], "quick_gelu": True}}
    with pytest.raises(UserError, match="clip.quick_gelu differs: False vs True"):
        ckpt.check_same_architecture(TINY_CFG, other_clip, "a.pt")


def test_create_model_refuses_a_checkpoint_of_another_model(tiny_model, tmp_path):
    from textseg.config import to_dict
    from textseg.factory import create_model

    path = ckpt.save_checkpoint(tmp_path / "tiny.pt", tiny_model.state_dict(), step=1,
                                model_config=to_dict(tiny_model.config))
    with pytest.raises(UserError, match=r"tiny.pt holds the weights of model 'tiny', not of model "
                                        r"'dino-s16-clip-b16'"):
        create_model("dino-s16-clip-b16", pretrained=False, checkpoint=path)
    for name in ("tiny", None):  # the model it was trained as, or the checkpoint's own
        model = create_model(name, pretrained=False, checkpoint=path)
        assert model.name == "tiny" and ckpt.weights_checksum(model) == ckpt.weights_checksum(tiny_model)
    bare = ckpt.save_checkpoint(tmp_path / "bare.pt", tiny_model.state_dict(), step=1)
    with pytest.raises(UserError, match="does not record its model"):
        create_model(None, checkpoint=bare)
    state = dict(tiny_model.state_dict())
    state["clip.logit_scale"] = torch.zeros(3)
    wrong = ckpt.save_checkpoint(tmp_path / "wrong.pt", state, step=1, model_config=to_dict(tiny_model.config))
    with pytest.raises(UserError, match="wrong.pt does not match model tiny: .*logit_scale") as err:
        create_model("tiny", pretrained=False, checkpoint=wrong)
    assert "\n" not in str(err.value)

"""Released weight formats: TorchScript archives read without running them, OpenAI CLIP and DINO state dicts."""

from __future__ import annotations

import argparse
import pickle
import re
import time
import zipfile
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
from torch import nn

from textseg.errors import UserError
from textseg.weight_formats import (
    is_torchscript_archive, load_clip_state_dict, read_clip_state_dict, read_dino_state_dict,
    read_torchscript_tensors, write_dino_state_dict, write_openai_clip_state_dict,
)

# torch.jit.trace/script are deprecated; tracing warns about shape checks turned into constants
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]


class Payload:
    """A class a weights-only load refuses to rebuild."""


# --------------------------------------------------------------------------------------------------- modules
class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.register_buffer("offset", torch.tensor([1.0, -2.0, 3.0, -4.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.lin(x)) + self.offset


class Net(nn.Module):
    """Nested submodules, attention, a 0-d top-level parameter, fp16 weights, two parameters viewing one storage
    and a plain tensor attribute (not a parameter nor a buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.5))
        self.blocks = nn.Sequential(Block(), Block())
        self.attn = nn.MultiheadAttention(4, 2)
        base = torch.arange(12.0)
        self.head_w = nn.Parameter(base[2:8].view(2, 3))
        self.head_b = nn.Parameter(base[8:10])
        self.low = nn.Linear(4, 3).half()
        self.extra = torch.ones(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, _ = self.attn(x, x, x)
        h = self.blocks(a) * self.scale
        y = self.low(h.half()).float()
        return y @ self.head_w.t() + self.head_b + self.extra.sum()


class TupleState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        self.register_buffer("shift", torch.tensor([0.5, -0.5]))

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, torch.Tensor, bool]:
        return (self.shift, self.weight, self.training)  # not in attribute order

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, torch.Tensor, bool]) -> None:
        self.shift = state[0]
        self.weight = state[1]
        self.training = state[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.shift


class DictState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([[-1.0, 0.0], [0.0, 7.0]]))
        self.register_buffer("shift", torch.tensor([9.0, 8.0]))

    @torch.jit.export
    def __getstate__(self) -> Dict[str, torch.Tensor]:
        return {"w": self.weight, "s": self.shift}

    @torch.jit.export
    def __setstate__(self, state: Dict[str, torch.Tensor]) -> None:
        self.weight = state["w"]
        self.shift = state["s"]
        self.training = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight - self.shift


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = TupleState()
        self.b = DictState()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def traced(net, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "net.pt"
    torch.jit.save(torch.jit.trace(net, torch.randn(3, 1, 4)), str(path))
    return path


@pytest.fixture(scope="module")
def scripted(net, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "net_script.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    return path


def rewrite(src: Path, dst: Path, replace: dict[str, bytes | None]) -> Path:
    """A copy of the zip ``src`` with entries replaced (or dropped when None); entries are found by suffix."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            hit = next((k for k in replace if info.filename.endswith(k)), None)
            if hit is None:
                zout.writestr(info, zin.read(info))
            elif replace[hit] is not None:
                zout.writestr(info, replace[hit])
    return dst


def assert_same_state(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


# ------------------------------------------------------------------------------------------------ TorchScript
@pytest.mark.parametrize("archive", ["traced", "scripted"])
def test_torchscript_tensors_equal_the_state_dict(net, archive, request):
    path = request.getfixturevalue(archive)
    assert is_torchscript_archive(path)
    got = read_torchscript_tensors(path)
    assert_same_state(got, net.state_dict())
    assert "extra" not in got  # a plain tensor attribute is not a parameter nor a buffer
    assert got["low.weight"].dtype == torch.float16 and got["scale"].shape == ()
    assert got["scale"].item() == 2.5
    assert torch.equal(got["blocks.1.offset"], torch.tensor([1.0, -2.0, 3.0, -4.0]))
    assert torch.equal(got["head_w"], torch.tensor([[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]))
    assert torch.equal(got["head_b"], torch.tensor([8.0, 9.0]))
    # one storage record read once: both parameters view it at their offsets
    assert got["head_w"].untyped_storage().data_ptr() == got["head_b"].untyped_storage().data_ptr()
    assert (got["head_w"].storage_offset(), got["head_b"].storage_offset()) == (2, 8)
    assert len(got["head_w"].untyped_storage()) == 12 * 4


def test_setstate_tuple_and_dict_states_are_named_by_the_setstate_source(tmp_path):
    torch.manual_seed(0)
    holder = Holder()
    path = tmp_path / "holder.pt"
    torch.jit.save(torch.jit.script(holder), str(path))
    got = read_torchscript_tensors(path)
    assert_same_state(got, holder.state_dict())
    assert torch.equal(got["a.shift"], torch.tensor([0.5, -0.5]))
    assert torch.equal(got["b.weight"], torch.tensor([[-1.0, 0.0], [0.0, 7.0]]))


def test_big_endian_records_are_swapped(tmp_path):
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.5, -2.0], [3.25, 0.0], [-7.0, 1e-3]]))
        lin.bias.copy_(torch.tensor([10.0, -20.0, 0.125]))
    src = tmp_path / "lin.pt"
    torch.jit.save(torch.jit.script(lin), str(src))
    with zipfile.ZipFile(src) as z:
        swapped = {n[n.index("/data/"):]: np.frombuffer(z.read(n), "<f4").astype(">f4").tobytes()
                   for n in z.namelist() if re.search(r"/data/\d+$", n)}
    dst = rewrite(src, tmp_path / "big.pt", {"/byteorder": b"big", **swapped})
    assert_same_state(read_torchscript_tensors(dst), lin.state_dict())


def call_global(module: str, name: str, arg: str) -> bytes:
    """Pickle opcodes calling ``module.name(arg)``."""
    data = arg.encode()
    return b"c" + f"{module}\n{name}\n".encode() + b"X" + len(data).to_bytes(4, "little") + data + b"\x85R"


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "exec")])
@pytest.mark.parametrize("nested", [False, True])
def test_a_forbidden_global_is_refused_and_never_runs(traced, tmp_path, module, name, nested):
    marker, control = tmp_path / "ran", tmp_path / "control"

    def payload(target: Path) -> bytes:
        arg = f"touch {target}" if name == "system" else f"open({str(target)!r}, 'w').close()"
        return call_global(module, name, arg)

    pickle.loads(b"\x80\x02" + payload(control) + b".")  # the payload is live when unpickled normally
    assert control.exists()
    body = (b"c__torch__\nNet\n)\x81}X\x04\x00\x00\x00evil" + payload(marker) + b"sb" if nested
            else payload(marker))
    bad = rewrite(traced, tmp_path / "evil.pt", {"/data.pkl": b"\x80\x02" + body + b"."})
    assert is_torchscript_archive(bad)
    with pytest.raises(UserError, match=re.escape(f"{bad}: refused to load the global {module}.{name}")) as err:
        read_torchscript_tensors(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="refused to load the global"):
        read_clip_state_dict(bad)
    assert not marker.exists()


def test_damaged_and_other_files_are_one_line_errors(traced, tmp_path):
    name = next(n for n in zipfile.ZipFile(traced).namelist() if n.endswith("/data/0"))
    missing = rewrite(traced, tmp_path / "missing.pt", {"/data/0": None})
    with pytest.raises(UserError, match=re.escape(f"{missing}: damaged TorchScript archive (no record {name})")):
        read_torchscript_tensors(missing)
    short = rewrite(traced, tmp_path / "short.pt", {"/data/0": b"\0\0"})
    with pytest.raises(UserError, match=r"short\.pt: damaged TorchScript archive \(record .* holds 2 bytes"):
        read_torchscript_tensors(short)
    truncated = rewrite(traced, tmp_path / "trunc.pt", {"/data.pkl": zipfile.ZipFile(traced).read(
        next(n for n in zipfile.ZipFile(traced).namelist() if n.endswith("/data.pkl")))[:40]})
    with pytest.raises(UserError, match=r"trunc\.pt: damaged TorchScript archive \("):
        read_torchscript_tensors(truncated)
    looped = rewrite(traced, tmp_path / "loop.pt",
                     {"/data.pkl": b"\x80\x02c__torch__\nNet\n)\x81q\x00}X\x02\x00\x00\x00meh\x00sb."})
    with pytest.raises(UserError, match=r"loop\.pt: damaged TorchScript archive \(a module contains itself\)"):
        read_torchscript_tensors(looped)
    number = rewrite(traced, tmp_path / "number.pt", {"/data.pkl": b"\x80\x02K\x07."})
    with pytest.raises(UserError, match=r"number\.pt: damaged TorchScript archive \(its data\.pkl holds no module"):
        read_torchscript_tensors(number)

    noise = tmp_path / "noise.pt"
    noise.write_bytes(b"not a zip at all")
    saved = tmp_path / "saved.pt"
    torch.save({"w": torch.ones(2)}, saved)  # a zip with data.pkl but no code/: not TorchScript
    for path in (noise, saved, tmp_path / "absent.pt", tmp_path):
        assert not is_torchscript_archive(path)
    with pytest.raises(UserError, match=r"noise\.pt: not a TorchScript archive \(not a zip file\)"):
        read_torchscript_tensors(noise)
    with pytest.raises(UserError, match=r"saved\.pt: not a TorchScript archive"):
        read_torchscript_tensors(saved)
    with pytest.raises(UserError, match=r"TorchScript archive .*absent\.pt does not exist"):
        read_torchscript_tensors(tmp_path / "absent.pt")


# ------------------------------------------------------------------------------------------------------ CLIP
def openai_clip_keys(vision_layers: int, text_layers: int) -> set[str]:
    """The keys of an OpenAI-format ViT CLIP state dict, written out from OpenAI's layout."""
    def blocks(prefix: str, n: int) -> set[str]:
        names = ["attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
                 "ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
        return {f"{prefix}transformer.resblocks.{i}.{name}" for i in range(n) for name in names}

    visual = {"visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1.weight",
              "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias"}
    text = {"positional_embedding", "text_projection", "logit_scale", "token_embedding.weight", "ln_final.weight",
            "ln_final.bias"}
    return visual | text | blocks("visual.", vision_layers) | blocks("", text_layers)


def tiny_clip(seed: int = 0) -> nn.Module:
    import open_clip

    from textseg.config import package_config_dir

    open_clip.add_model_config(package_config_dir("clip"))
    torch.manual_seed(seed)
    return open_clip.create_model("textseg-tiny-vit16", force_quick_gelu=True).eval()


def test_openai_torchscript_clip_reads_and_loads_into_open_clip(tmp_path):
    clip = tiny_clip(0)
    want = {k: v.clone() for k, v in clip.state_dict().items()}
    # OpenAI's archives carry these three non-weights beside the weights
    for name, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(clip, name):
            delattr(clip, name)
        clip.register_buffer(name, torch.tensor(value))
    path = tmp_path / "ViT-tiny.pt"
    traced = torch.jit.trace_module(clip, {"encode_image": torch.randn(1, 3, 224, 224)}, check_trace=False)
    torch.jit.save(traced, str(path))
    assert {"input_resolution", "attn_mask"} <= set(read_torchscript_tensors(path))  # both dropped below

    state = read_clip_state_dict(path)
    assert set(state) == set(want) == openai_clip_keys(2, 2)
    fresh = tiny_clip(1)
    assert not torch.equal(fresh.visual.proj, want["visual.proj"])
    load_clip_state_dict(fresh, state)
    assert_same_state(fresh.state_dict(), want)


def test_state_dict_and_safetensors_files(tmp_path):
    from safetensors.torch import save_file

    state = {"visual.proj": torch.tensor([[1.0, 2.0]]), "logit_scale": torch.tensor(4.5).half()}
    cases = {
        "plain.pt": state,
        "wrapped.pt": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3, "name": "run"},
        "model.pth": {"model": dict(state), "step": 7},
        "mask.pt": {**state, "attn_mask": torch.zeros(2, 2), "context_length": torch.tensor(77)},
    }
    for name, data in cases.items():
        torch.save(data, tmp_path / name)
    save_file({**state, "input_resolution": torch.tensor(224)}, str(tmp_path / "w.safetensors"))
    save_file(state, str(tmp_path / "w.bin"))  # found by its content, not its name
    for name in [*cases, "w.safetensors", "w.bin"]:
        got = read_clip_state_dict(tmp_path / name)
        assert_same_state(got, state)


def test_wrong_clip_files_are_user_errors(tmp_path):
    torch.save({"cls_token": torch.zeros(1, 1, 4)}, tmp_path / "dino.pth")
    with pytest.raises(UserError, match=r"dino\.pth is not a CLIP weight file .*: it has no 'visual\.\*' weights"):
        read_clip_state_dict(tmp_path / "dino.pth")
    (tmp_path / "noise.pt").write_bytes(b"\x00\x01 random bytes")
    with pytest.raises(UserError, match=r"noise\.pt is not a CLIP .*\(unreadable: Unsupported operand 0\)$"):
        read_clip_state_dict(tmp_path / "noise.pt")
    torch.save({"visual.proj": torch.ones(1), "why": Payload()}, tmp_path / "code.pt")
    with pytest.raises(UserError, match=r"code\.pt is not a CLIP weight file .*objects other than tensors and "
                       r"plain values \(test_weight_formats\.Payload\)"):
        read_clip_state_dict(tmp_path / "code.pt")
    torch.save({"visual.proj": torch.ones(1), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(UserError, match=r"mixed\.pt .*entry 'epoch' is not a named tensor"):
        read_clip_state_dict(tmp_path / "mixed.pt")
    with pytest.raises(UserError, match=r"CLIP weight file .*absent\.pt does not exist"):
        read_clip_state_dict(tmp_path / "absent.pt")


@pytest.mark.parametrize("fp16", [True, False])
def test_openai_clip_write_read_round_trip(tmp_path, fp16):
    clip = tiny_clip(0)
    path = write_openai_clip_state_dict(clip, tmp_path / "sub" / "clip.pt", fp16=fp16)
    assert path == tmp_path / "sub" / "clip.pt" and [p.name for p in path.parent.iterdir()] == ["clip.pt"]
    assert set(torch.load(path, weights_only=True)) == openai_clip_keys(2, 2)  # a plain state dict

    state = read_clip_state_dict(path)
    assert {v.dtype for v in state.values()} == {torch.float16 if fp16 else torch.float32}
    fresh = tiny_clip(1)
    load_clip_state_dict(fresh, state)
    for key, value in clip.state_dict().items():
        want = value.half().float() if fp16 else value  # fp16 rounding, then back to the model's fp32
        assert fresh.state_dict()[key].dtype == torch.float32
        assert torch.equal(fresh.state_dict()[key], want), key
    if fp16:
        assert not torch.equal(fresh.visual.proj, clip.visual.proj)  # the rounding is real


def test_load_clip_state_dict_mismatches_are_one_line_and_load_nothing():
    clip = tiny_clip(0)
    state = {k: v + 1 for k, v in clip.state_dict().items()}
    before = clip.visual.proj.detach().clone()
    cases = {
        "missing keys: visual.proj": {k: v for k, v in state.items() if k != "visual.proj"},
        "unexpected keys: visual.extra, visual.more": {**state, "visual.extra": torch.ones(1),
                                                       "visual.more": torch.ones(1)},
        "shape mismatches: logit_scale (2,) vs the model's ()": {**state, "logit_scale": torch.ones(2)},
    }
    for detail, bad in cases.items():
        with pytest.raises(UserError) as err:
            load_clip_state_dict(clip, bad, what="weights x.pt")
        assert str(err.value) == f"weights x.pt do not fit the CLIP model ({detail})"
        assert torch.equal(clip.visual.proj, before)
    many = {k: v for k, v in state.items() if not k.startswith("visual.transformer.resblocks.1.")}
    with pytest.raises(UserError, match=r"\(missing keys: .*, .*, .* \(\+9 more\)\)$"):
        load_clip_state_dict(clip, many)


def test_writing_a_non_openai_clip_is_refused(tmp_path):
    with pytest.raises(UserError, match="Linear has not OpenAI CLIP's key names .*no positional_embedding"):
        write_openai_clip_state_dict(nn.Linear(2, 2), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_real_size_vit_b_16_round_trip(tmp_path):
    import open_clip

    start = time.perf_counter()
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16", force_quick_gelu=True)
    if time.perf_counter() - start > 5:
        pytest.skip("building ViT-B-16 is too slow here")
    path = write_openai_clip_state_dict(clip, tmp_path / "ViT-B-16.pt")
    state = read_clip_state_dict(path)
    assert set(state) == openai_clip_keys(12, 12)
    assert state["visual.conv1.weight"].shape == (768, 3, 16, 16) and state["text_projection"].shape == (512, 512)
    assert state["visual.positional_embedding"].shape == (197, 768)
    load_clip_state_dict(clip, state)


# ------------------------------------------------------------------------------------------------------ DINO
def dino_keys(depth: int) -> list[str]:
    """The keys of DINO's released ViT backbones, written out from DINO's layout."""
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    return (["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
            + [f"blocks.{i}.{name}" for i in range(depth) for name in block] + ["norm.weight", "norm.bias"])


def tiny_vit(**kwargs):
    import timm

    return timm.create_model("vit_base_patch8_224", pretrained=False, num_classes=0, depth=1, embed_dim=64,
                             num_heads=2, dynamic_img_size=True, **kwargs)


def dino_state(seed: int) -> dict[str, torch.Tensor]:
    """Random weights of DINO's shapes for a 1-block, 64-wide ViT with 8-pixel patches on 224-pixel images."""
    shapes = {"cls_token": (1, 1, 64), "pos_embed": (1, 1 + 28 * 28, 64), "patch_embed.proj.weight": (64, 3, 8, 8),
              "blocks.0.attn.qkv.weight": (192, 64), "blocks.0.attn.qkv.bias": (192,),
              "blocks.0.attn.proj.weight": (64, 64), "blocks.0.mlp.fc1.weight": (256, 64),
              "blocks.0.mlp.fc1.bias": (256,), "blocks.0.mlp.fc2.weight": (64, 256)}
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shapes.get(k, (64,)), generator=g) for k in dino_keys(1)}


def test_timm_vit_has_dino_key_names():
    assert list(tiny_vit().state_dict()) == dino_keys(1)


def test_dino_checkpoint_teacher_loads_strictly_into_timm(tmp_path):
    teacher, student = dino_state(0), dino_state(1)
    checkpoint = {
        "student": {**{f"module.backbone.{k}": v for k, v in student.items()},
                    "module.head.mlp.0.weight": torch.ones(8, 64)},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, "head.last_layer.weight_g": torch.ones(8, 1)},
        "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=8, out_dim=65536),
        "dino_loss": {"center": torch.zeros(1, 8)},
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    state = read_dino_state_dict(tmp_path / "checkpoint.pth")
    assert_same_state(state, teacher)
    vit = tiny_vit()
    vit.load_state_dict(state, strict=True)
    assert torch.equal(vit.blocks[0].attn.qkv.weight, teacher["blocks.0.attn.qkv.weight"])

    torch.save({"student": checkpoint["student"]}, tmp_path / "student.pth")
    assert_same_state(read_dino_state_dict(tmp_path / "student.pth"), student)


def test_dino_release_write_read_round_trip(tmp_path):
    torch.manual_seed(0)
    vit = tiny_vit(global_pool="token").half()
    vit.reset_classifier(5)  # a head, which DINO's release does not have
    path = write_dino_state_dict(vit, tmp_path / "dino_tiny8_pretrain.pth")
    saved = torch.load(path, weights_only=True)
    assert list(saved) == dino_keys(1) and {v.dtype for v in saved.values()} == {torch.float32}
    state = read_dino_state_dict(path)
    fresh = tiny_vit()
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.pos_embed, vit.pos_embed.float())


def test_wrong_dino_files_are_user_errors(tmp_path):
    torch.save({"visual.proj": torch.ones(2)}, tmp_path / "clip.pt")
    with pytest.raises(UserError, match=r"clip\.pt is not a DINO weight file .*: it has no 'cls_token'"):
        read_dino_state_dict(tmp_path / "clip.pt")
    torch.save({"teacher": {"backbone.cls_token": torch.ones(1)}, "args": Payload()},
               tmp_path / "code.pth")
    with pytest.raises(UserError, match=r"code\.pth is not a DINO weight file.*objects other than tensors"):
        read_dino_state_dict(tmp_path / "code.pth")
    with pytest.raises(UserError, match="Linear has not a ViT's key names"):
        write_dino_state_dict(nn.Linear(2, 2), tmp_path / "x.pth")

import json

import pytest
import torch

import textseg
from textseg.config import ModelConfig, to_dict
from textseg.errors import ConfigError, MissingWeightsError, UserError


def test_list_models_and_configs():
    names = textseg.list_models()
    assert {"dino-s16-clip-b16", "dino-b16-clip-b16", "labxy-small-workbench", "tiny"} <= set(names)
    for name in names:
        cfg = textseg.get_model_config(name)
        assert isinstance(cfg, ModelConfig) and cfg.name == name and cfg.description
    dino = textseg.get_model_config("dino-s16-clip-b16")
    assert (dino.backbone.name, dino.backbone.feature, dino.clip.pretrained) == ("vit_small_patch16_224.dino", "keys", "openai")
    pooled = textseg.get_model_config("labxy-small-workbench", {"region": {"mode": "pool"}})
    assert pooled.region.mode == "pool" and pooled.grouping.xy_weight == 0.5


def test_bad_model_config_fields_name_the_field(tmp_path):
    cfg = to_dict(textseg.get_model_config("tiny"))
    for change, message in [({"grouping": {"num_grups": 3}}, "grouping.num_grups"),
                            ({"grouping": {"num_groups": "many"}}, "grouping.num_groups"),
                            ({"region": {"mode": "average"}}, "region.mode"),
                            ({"backbone": {"type": "resnet"}}, "backbone.type")]:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            textseg.get_model_config(cfg, change)
    path = tmp_path / "broken.json"
    path.write_text('{"grouping": {"num_groups": 4')
    with pytest.raises(ConfigError, match="broken.json: not valid YAML/JSON"):
        textseg.create_model(str(path), pretrained=False)
    path.write_text('{"backbone": {"type": "color"}}')
    with pytest.raises(ConfigError, match="missing mandatory value: clip"):
        textseg.create_model(str(path), pretrained=False)


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'nope'"):
        textseg.create_model("nope")


def test_missing_weights_error_names_weight_and_place():
    with pytest.raises(MissingWeightsError) as err:
        textseg.create_model("dino-s16-clip-b16")
    msg = str(err.value)
    assert "vit_small_patch16_224.dino" in msg and "--backbone-pretrained" in msg and "\n" not in msg


def test_missing_clip_weights_when_backbone_is_random(tmp_path):
    cfg = textseg.get_model_config("tiny", {"clip": {"arch": "ViT-B-16", "pretrained": "openai", "quick_gelu": True}})
    with pytest.raises(MissingWeightsError, match="CLIP weights ViT-B-16/openai"):
        textseg.create_model(cfg)
    with pytest.raises(MissingWeightsError, match="no pretrained tag 'nosuchtag'"):
        textseg.create_model("tiny", clip_pretrained="nosuchtag")


def test_weights_folder_is_searched_by_tag(tmp_path, monkeypatch):
    from textseg.weights import resolve_clip_weights, resolve_timm_weights

    monkeypatch.setenv("TEXTSEG_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "timm").mkdir()
    (tmp_path / "timm" / "vit_small_patch16_224.dino.safetensors").write_bytes(b"x")
    (tmp_path / "open_clip" / "ViT-B-16").mkdir(parents=True)
    (tmp_path / "open_clip" / "ViT-B-16" / "openai.bin").write_bytes(b"x")
    assert resolve_timm_weights("vit_small_patch16_224.dino") == tmp_path / "timm" / "vit_small_patch16_224.dino.safetensors"
    assert resolve_clip_weights("ViT-B-16", "openai") == tmp_path / "open_clip" / "ViT-B-16" / "openai.bin"


def test_local_weight_file_is_loaded(tmp_path, tiny_model):
    cfg = textseg.get_model_config("tiny")
    torch.save(tiny_model.clip.state_dict(), tmp_path / "clip.pt")
    model = textseg.create_model(cfg, pretrained=False, clip_pretrained=str(tmp_path / "clip.pt"))
    for (k, a), b in zip(model.clip.state_dict().items(), tiny_model.clip.state_dict().values()):
        assert torch.equal(a, b), k


def test_config_file_path(tmp_path):
    cfg = to_dict(textseg.get_model_config("tiny", {"grouping": {"num_groups": 3}}))
    del cfg["name"]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(cfg))
    model = textseg.create_model(str(path), pretrained=False)
    assert model.grouper.config.num_groups == 3 and model.name == "mine"


@torch.no_grad()
def test_real_size_architectures_run_at_448():
    """DINO ViT-S/16 and CLIP ViT-B/16 at real size, random weights, one 448x448 pass."""
    torch.manual_seed(0)
    model = textseg.create_model("dino-s16-clip-b16", pretrained=False)
    assert sum(p.numel() for p in model.clip.parameters()) > 149e6
    images = torch.rand(1, 3, 448, 448)
    feats = model.grouper.backbone(images)
    assert feats.shape == (1, 28, 28, 384)  # keys of the last block
    groups = model.group(images)
    assert groups.pixels.shape == (1, 448, 448) and 2 <= groups.pixels.max() + 1 <= 8
    assert groups.region_masks.shape[2:] == (28, 28)
    out = model(images, groups.region_masks)
    assert out.regions.shape[-1] == 512 and out.valid.all()
    assert torch.isfinite(out.regions).all()


def test_seeded_random_weights_are_reproducible_and_leave_the_global_rng_alone():
    import torch

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = textseg.create_model("tiny", pretrained=False, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG did not move
    b = textseg.create_model("tiny", pretrained=False, seed=0)
    c = textseg.create_model("tiny", pretrained=False, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)

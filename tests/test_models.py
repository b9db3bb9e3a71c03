"""Model specs build the network the weights were trained with, and the field's checkpoint formats
import exactly. Offline: random-init ViT-B-32 weights are placed in a temporary Hugging Face cache
under the hub ids that open_clip's tags and hub specs resolve to, with the hub in offline mode."""
from __future__ import annotations

import json

import huggingface_hub.constants
import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from robust_w2s import UserError, load_checkpoint, load_model
from robust_w2s.cli import main
from robust_w2s.models import network_config, parse_spec

OPENAI_HUB_ID = "timm/vit_base_patch32_clip_224.openai"  # open_clip's hub id of ViT-B-32@openai
FARE_HUB_ID = "rw2s-test/fare-vit-b-32"                  # an hf-hub: release, laid out as chs20's are
TEXTS = ["a photo of a dog.", "a drawing of a red car."]


def _place_in_hub_cache(cache, repo_id: str, files: dict) -> None:
    """The layout hf_hub_download reads offline: models--ORG--NAME/refs/main -> snapshots/SHA/FILE."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    sha = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for name, write in files.items():
        write(snapshot / name)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A random-init OpenAI-lineage (QuickGELU) ViT-B-32 and a hub cache holding its weights."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu").eval()
    with torch.no_grad():  # random init leaves biases at zero; the files must carry every tensor
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    cache = tmp_path_factory.mktemp("hf_cache")
    _place_in_hub_cache(cache, OPENAI_HUB_ID, {"open_clip_model.safetensors": lambda p: save_file(state, p)})
    hub_config = {"model_cfg": {**open_clip.get_model_config("ViT-B-32"), "quick_gelu": True},
                  "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    _place_in_hub_cache(cache, FARE_HUB_ID, {
        "open_clip_config.json": lambda p: p.write_text(json.dumps(hub_config)),
        "open_clip_pytorch_model.bin": lambda p: torch.save(state, p)})
    return model, cache


@pytest.fixture
def offline_hub(source, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(source[1]))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return source[0]


def _features(model, images=None):
    torch.manual_seed(1)
    images = torch.rand(2, 3, 224, 224) if images is None else images
    tokens = open_clip.get_tokenizer("ViT-B-32")(TEXTS)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _max_difference(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(_features(a), _features(b)))


def test_openai_tag_builds_quickgelu(offline_hub):
    model, _, _ = load_model("ViT-B-32@openai")
    assert _max_difference(model, offline_hub) <= 1e-6
    gelu = open_clip.create_model("ViT-B-32")
    gelu.load_state_dict(offline_hub.state_dict())
    assert _max_difference(gelu, offline_hub) > 1e-3, "GELU vs QuickGELU must be visible in the features"
    assert model.rw2s_model_cfg["quick_gelu"] is True and model.rw2s_lineage == "ViT-B-32@openai"


def test_lineage_fixes_activation_and_preprocessing_without_building():
    openai_cfg, openai_pre = network_config(parse_spec("ViT-L-14@openai"))
    laion_cfg, laion_pre = network_config(parse_spec("ViT-L-14@laion2b_s32b_b82k"))
    assert openai_cfg["quick_gelu"] and not laion_cfg["quick_gelu"]
    assert tuple(laion_pre["mean"]) == tuple(laion_pre["std"]) == (0.5, 0.5, 0.5)
    assert tuple(openai_pre["mean"]) == open_clip.OPENAI_DATASET_MEAN
    assert openai_pre["interpolation"] == "bicubic" and openai_pre["size"] == (224, 224)


def test_weight_file_inherits_its_lineage(offline_hub, tmp_path, monkeypatch):
    # A tag with non-default preprocessing on a small architecture, as LAION's ViT-L-14 has.
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED["ViT-B-32"], "rw2s_laion_like", open_clip.pretrained._pcfg(
        hf_hub="rw2s-test/none/", quick_gelu=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        interpolation="bilinear", resize_mode="squash"))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in offline_hub.state_dict().items()}, path)
    model, preprocess, _ = load_model(f"ViT-B-32@rw2s_laion_like:{path}")
    assert _max_difference(model, offline_hub) <= 1e-6
    cfg = open_clip.get_model_preprocess_cfg(model)
    assert tuple(cfg["mean"]) == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bilinear"
    assert cfg["resize_mode"] == "squash"
    assert preprocess.transforms[-1].mean == (0.5, 0.5, 0.5)  # the transform users get agrees


def test_weight_file_without_lineage_is_built_as_named_and_says_so(offline_hub, tmp_path, caplog):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in offline_hub.state_dict().items()}, path)
    with caplog.at_level("WARNING", logger="robust_w2s"):
        model, _, _ = load_model(f"ViT-B-32@{path}")
    assert caplog.text.count("no lineage named") == 1
    assert model.rw2s_model_cfg["quick_gelu"] is False and model.rw2s_lineage is None
    assert _max_difference(model, offline_hub) > 1e-3  # GELU: the user was told how to name the lineage
    assert f"ViT-B-32@TAG:{path}" in caplog.text and "openai" in caplog.text


def test_checkpoint_folder_reloads_as_the_same_network(offline_hub, tmp_path):
    model, _, _ = load_model("ViT-B-32@openai")
    assert main(["convert", "--model", "ViT-B-32@openai", "--output-dir", str(tmp_path / "ckpt")]) == 0
    plain = open_clip.create_model(f"local-dir:{tmp_path / 'ckpt'}").eval()
    ours, _, _ = load_checkpoint(tmp_path / "ckpt")
    for reloaded in (plain, ours):
        assert _max_difference(reloaded, model) <= 1e-6
        assert open_clip.get_model_preprocess_cfg(reloaded)["interpolation"] == "bicubic"
    config = json.loads((tmp_path / "ckpt" / "open_clip_config.json").read_text())
    assert config["model_cfg"]["quick_gelu"] is True
    assert config["robust_w2s"]["lineage"] == "ViT-B-32@openai"


def test_hf_hub_spec_loads_config_activation_and_preprocessing(offline_hub):
    model, _, _ = load_model(f"hf-hub:{FARE_HUB_ID}")
    assert _max_difference(model, offline_hub) <= 1e-6
    assert tuple(open_clip.get_model_preprocess_cfg(model)["mean"]) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("spec", ["hf-hub:rw2s-test/no-such-model", "ViT-B-16@openai"])
def test_uncached_hub_weights_offline_are_one_line_exit_2(offline_hub, tmp_path, capsys, spec):
    assert main(["convert", "--model", spec, "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and spec in error and "offline" in error.lower()


def _tecoa_payload(visual_state: dict, *, data_parallel: bool) -> dict:
    """finetuning.py's save_checkpoint dict (TeCoA; PMG-AFT the same, TGA-ZSR without DataParallel)."""
    prompt_key = "module.prompt" if data_parallel else "prompt"
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    return {"epoch": 10, "state_dict": {}, "add_prompter": {prompt_key: torch.zeros(1, 0, 768)},
            "vision_encoder_state_dict": visual_state, "best_acc1": np.float64(31.4),
            "optimizer": optimizer.state_dict()}


FORMATS = {
    # RobustVLM (FARE / TeCoA re-implementation): torch.save(model.visual.state_dict())
    "robustvlm_image_tower": lambda m: dict(m.visual.state_dict()),
    "tecoa_pmg_aft_pth_tar": lambda m: _tecoa_payload(dict(m.visual.state_dict()), data_parallel=True),
    "tga_zsr_pth_tar": lambda m: {**_tecoa_payload(dict(m.visual.state_dict()), data_parallel=False),
                                  "best_acc1": 0.0},
    # A full OpenAI-clip state dict saved from a DataParallel model under "state_dict"
    "clip_full_state_dict": lambda m: {"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()},
                                       "epoch": 3},
}


@pytest.mark.parametrize("layout", sorted(FORMATS))
def test_published_formats_import_exactly(offline_hub, tmp_path, layout):
    path = tmp_path / f"{layout}.pt"
    torch.save(FORMATS[layout](offline_hub), path)
    model, _, _ = load_model(f"ViT-B-32@openai:{path}")
    assert _max_difference(model, offline_hub) <= 1e-6
    assert model.rw2s_model_cfg["quick_gelu"] is True


def test_image_tower_file_replaces_the_tags_image_tower(offline_hub, tmp_path):
    """The text tower comes from the tag, the image tower from the file: not the tag's image tower."""
    fine_tuned = open_clip.create_model("ViT-B-32-quickgelu").eval()
    fine_tuned.load_state_dict(offline_hub.state_dict())
    with torch.no_grad():
        fine_tuned.visual.proj.mul_(-1.0)
    path = tmp_path / "fare.pt"
    torch.save(fine_tuned.visual.state_dict(), path)
    model, _, _ = load_model(f"ViT-B-32@openai:{path}")
    assert _max_difference(model, fine_tuned) <= 1e-6
    assert _max_difference(model, offline_hub) > 1e-3


def test_bad_specs_are_one_line_exit_2(offline_hub, tmp_path, capsys):
    torch.save(dict(offline_hub.visual.state_dict()), tmp_path / "fare.pt")
    torch.save({"args": __import__("argparse").Namespace(lr=1), "state_dict": {}}, tmp_path / "pickled.pt")
    cases = {
        f"ViT-B-16@openai:{tmp_path / 'fare.pt'}": "conv1.weight: (768, 3, 32, 32) in the file, (768, 3, 16, 16)",
        f"ViT-B-32@openai:{tmp_path / 'missing.pt'}": "not found",
        f"ViT-B-32@no-such-tag:{tmp_path / 'fare.pt'}": "unknown pretrained tag (lineage) of ViT-B-32 'no-such-tag'",
        f"ViT-B-32@openai:{tmp_path / 'pickled.pt'}": "argparse.Namespace",
        f"ViT-B-32@{tmp_path / 'fare.pt'}": "holds only the image tower",
    }
    for spec, named in cases.items():
        assert main(["convert", "--model", spec, "--output-dir", str(tmp_path / "out")]) == 2, spec
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and named in error, (spec, error)
    assert not (tmp_path / "out").exists()


def test_hub_model_whose_weights_are_not_cached_is_refused(source, tmp_path, monkeypatch, capsys):
    """open_clip builds such a model with random weights, warning only; that must not pass silently."""
    config = json.loads((next((source[1] / f"models--{FARE_HUB_ID.replace('/', '--')}").rglob(
        "open_clip_config.json"))).read_text())
    _place_in_hub_cache(source[1], "rw2s-test/config-only",
                        {"open_clip_config.json": lambda p: p.write_text(json.dumps(config))})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(source[1]))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["convert", "--model", "hf-hub:rw2s-test/config-only", "--output-dir", str(tmp_path / "o")]) == 2
    assert "config-only" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_open_clips_own_local_dir_layout_loads(offline_hub, tmp_path):
    """A hub release downloaded as files: open_clip_config.json + open_clip_pytorch_model.bin."""
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {**open_clip.get_model_config("ViT-B-32"), "quick_gelu": True}, "preprocess_cfg": {}}))
    torch.save(offline_hub.state_dict(), folder / "open_clip_pytorch_model.bin")
    model, _, _ = load_model(str(folder))
    assert _max_difference(model, offline_hub) <= 1e-6


def test_convert_never_overwrites_what_is_not_a_checkpoint(offline_hub, tmp_path, capsys, monkeypatch):
    work = tmp_path / "mywork"
    work.mkdir()
    (work / "notes.txt").write_text("precious")
    weights = tmp_path / "fare.pt"
    torch.save(dict(offline_hub.visual.state_dict()), weights)
    monkeypatch.chdir(tmp_path)
    for output in (str(work), str(weights), "."):
        assert main(["convert", "--model", f"ViT-B-32@openai:{weights}", "--output-dir", output]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "not a checkpoint folder" in error
    assert (work / "notes.txt").read_text() == "precious" and weights.is_file()
    assert main(["convert", "--model", f"ViT-B-32@openai:{weights}", "--output-dir", "ckpt"]) == 0
    config = json.loads((tmp_path / "ckpt" / "open_clip_config.json").read_text())["robust_w2s"]
    assert config["file"] == str(weights) and config["layout"].startswith("image tower")
    assert main(["convert", "--model", "local-dir:ckpt", "--output-dir", "ckpt"]) == 0  # a checkpoint is replaced


def test_text_head_cache_tells_gelu_from_quickgelu(offline_hub, tmp_path):
    from robust_w2s.zeroshot import build_text_head
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in offline_hub.state_dict().items()}, path)
    gelu, _, _ = load_model(f"ViT-B-32@{path}")
    quick, _, _ = load_model(f"ViT-B-32@openai:{path}")
    heads = [build_text_head(m, tokenizer, ["dog", "cat"], ["a {}."], cache_dir=tmp_path / "heads")
             for m in (gelu, quick)]
    assert len(list((tmp_path / "heads").iterdir())) == 2
    assert (heads[0] - heads[1]).abs().max() > 1e-4
    (cached,) = [p for p in (tmp_path / "heads").iterdir() if p.stat().st_mtime_ns == max(
        q.stat().st_mtime_ns for q in (tmp_path / "heads").iterdir())]
    cached.write_bytes(cached.read_bytes()[:20])  # a truncated cache file is rebuilt, not fatal
    assert torch.equal(build_text_head(quick, tokenizer, ["dog", "cat"], ["a {}."], cache_dir=tmp_path / "heads"),
                       heads[1])


def test_numpy_scalars_of_any_dtype_are_weights_only(offline_hub, tmp_path):
    path = tmp_path / "tecoa.pth.tar"
    torch.save({**_tecoa_payload(dict(offline_hub.visual.state_dict()), data_parallel=True),
                "epoch": np.int64(3), "best_acc1": np.float32(0.5)}, path)
    model, _, _ = load_model(f"ViT-B-32@openai:{path}")
    assert _max_difference(model, offline_hub) <= 1e-6


@pytest.mark.parametrize("spec, named", [
    ("ViT-B-32@", "nothing after '@'"),
    ("ViT-B-32@openai:", "no weight file after 'openai:'"),
    ("ViT-B-32@opneai", "did you mean openai"),
    ("/no/such/folder", "checkpoint folder not found"),
    ("", "empty model spec"),
])
def test_spec_typos_are_one_line(spec, named, tmp_path, capsys):
    assert main(["convert", "--model", spec, "--output-dir", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and named in error


def test_tags_match_as_open_clip_matches_them():
    assert parse_spec("ViT-B-32@OpenAI").tag == "openai"
    assert parse_spec("ViT-B-32@laion2b-s34b-b79k").tag == "laion2b_s34b_b79k"


def test_wrong_architecture_without_lineage_prints_only_the_error(offline_hub, tmp_path, capsys, caplog):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in offline_hub.state_dict().items()}, path)
    with caplog.at_level("WARNING", logger="robust_w2s"):
        assert main(["convert", "--model", f"ViT-B-16@{path}", "--output-dir", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "mis-shaped" in error
    assert "no lineage named" not in caplog.text  # the lineage hint is for weights that loaded

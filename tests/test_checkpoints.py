import json

import open_clip
import pytest
import torch

from robust_w2s import UserError, load_checkpoint, save_checkpoint
from robust_w2s.checkpoints import CONFIG_FILE, WEIGHTS_FILE


def _outputs(model, tokenizer):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokenizer(["a red circle.", "a star."]))


def test_round_trip_through_plain_open_clip(tmp_path, tiny_model):
    model, tokenizer = tiny_model
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # a non-default value must survive too
    save_checkpoint(model, tmp_path / "ckpt")
    plain, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'ckpt'}")
    plain.eval()
    for expected, got in zip(_outputs(model, tokenizer), _outputs(plain, open_clip.get_tokenizer(
            f"local-dir:{tmp_path / 'ckpt'}"))):
        assert torch.equal(expected, got)
    assert plain.logit_scale.item() == pytest.approx(2.5)
    ours, _, our_tokenizer = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(_outputs(ours, our_tokenizer)[0], _outputs(model, tokenizer)[0])
    same = lambda cfg: json.loads(json.dumps(cfg))  # tuples come back as lists
    assert same(open_clip.get_model_preprocess_cfg(ours)) == same(open_clip.get_model_preprocess_cfg(model))


def test_overwrite_is_atomic_when_the_write_fails(tmp_path, tiny_model, monkeypatch):
    model, _ = tiny_model
    folder = save_checkpoint(model, tmp_path / "ckpt")
    before = (folder / WEIGHTS_FILE).read_bytes()
    with torch.no_grad():
        model.visual.conv1.weight.add_(1.0)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a run killed in the middle of writing

    monkeypatch.setattr("robust_w2s.checkpoints.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, folder)
    assert (folder / WEIGHTS_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no staging folder left behind"


def test_wrong_architecture_is_a_one_line_error(tmp_path, tiny_model):
    model, _ = tiny_model
    folder = save_checkpoint(model, tmp_path / "ckpt")
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["model_cfg"]["vision_cfg"]["width"] = 64
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(UserError) as error:
        load_checkpoint(folder)
    message = str(error.value)
    assert "architecture" in message and "\n" not in message


def test_missing_and_corrupt_checkpoints_are_user_errors(tmp_path, tiny_model):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    folder = save_checkpoint(tiny_model[0], tmp_path / "ckpt")
    (folder / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="safetensors"):
        load_checkpoint(folder)

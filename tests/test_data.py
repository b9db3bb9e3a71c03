import pytest
import torch
from PIL import Image

from robust_w2s import UserError, load_image_dataset, load_model
from robust_w2s.data import class_names, iterate_batches, require_columns
from torchvision.transforms import ToTensor

CLASSES = {"apple": (255, 0, 0), "banana": (255, 255, 0), "cherry": (128, 0, 64)}


def _image_folder(root, per_class=3):
    for name, colour in CLASSES.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), colour).save(root / name / f"{i}.png")
    return root


def test_image_folder_loads_with_the_right_labels(tmp_path):
    dataset = load_image_dataset(f"local:{_image_folder(tmp_path / 'fruit')}")
    names = class_names(dataset)
    assert sorted(names) == sorted(CLASSES) and len(dataset) == 9
    for pixels, labels in iterate_batches(dataset, ToTensor(), batch_size=4):
        for image, label in zip(pixels, labels):
            expected = torch.tensor(CLASSES[names[label]]) / 255
            assert torch.allclose(image[:, 0, 0], expected, atol=1 / 255)


def test_save_to_disk_and_parquet_load_through_the_same_function(tmp_path):
    dataset = load_image_dataset(f"local:{_image_folder(tmp_path / 'fruit')}")
    dataset.save_to_disk(str(tmp_path / "saved"))
    dataset.to_parquet(str(tmp_path / "fruit.parquet"))
    for spec in (f"local:{tmp_path / 'saved'}", f"local:{tmp_path / 'fruit.parquet'}"):
        loaded = load_image_dataset(spec)
        assert loaded["label"] == dataset["label"]


def test_corrupt_image_is_a_one_line_error_naming_the_file(tmp_path):
    root = _image_folder(tmp_path / "fruit")
    (root / "banana" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    dataset = load_image_dataset(f"local:{root}")
    with pytest.raises(UserError) as error:
        for _ in iterate_batches(dataset, ToTensor()):
            pass
    assert "banana/1.png" in str(error.value) and "\n" not in str(error.value)


def test_missing_column_names_the_column(tmp_path):
    dataset = load_image_dataset(f"local:{_image_folder(tmp_path / 'fruit')}")
    with pytest.raises(UserError, match="'fine_label'.*columns: image, label"):
        require_columns(dataset, "image", "fine_label")


def test_unknown_model_spec_is_a_one_line_error_with_a_suggestion():
    with pytest.raises(UserError) as error:
        load_model("ViT-B-23")
    assert "ViT-B-32" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="valid: weak, weak-robust, strong"):
        load_model("embedded:medium")


def test_unknown_dataset_spec_and_missing_path(tmp_path):
    with pytest.raises(UserError, match="unknown dataset spec"):
        load_image_dataset("ftp:somewhere")
    with pytest.raises(UserError, match="not found"):
        load_image_dataset(f"local:{tmp_path / 'absent'}")

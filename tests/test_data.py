import pytest
import torch
from PIL import Image

from robust_w2s import UserError, load_image_dataset, load_model
from robust_w2s.data import infer_label_schema, iterate_batches, require_columns
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
    names = infer_label_schema(dataset)[1]
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


# --- Local data as users bring it, and bad data (issue 11) -------------------------------------

import io  # noqa: E402
import json  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402

from robust_w2s.cli import main  # noqa: E402
from robust_w2s.data import HUB_MIRROR_ENV, decode_image  # noqa: E402


def _zeroshot(world_home, tmp_path, dataset, *extra):
    out = tmp_path / "zs.json"
    code = main(["zeroshot", "--model", "embedded:strong", "--dataset", dataset, "--home", str(world_home),
                 "--output", str(out), *extra])
    return code, (json.loads(out.read_text()) if code == 0 else None)


def test_plain_image_folder_works_for_zeroshot(world_home, tmp_path):
    code, report = _zeroshot(world_home, tmp_path, f"local:{_image_folder(tmp_path / 'fruit')}")
    assert code == 0 and report["tasks"][f"local:{tmp_path / 'fruit'}"]["n"] == 9


def test_split_named_in_a_hub_spec_is_the_one_read(tmp_path, monkeypatch):
    repo = tmp_path / "org" / "shapes" / "data"
    repo.mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    for split, n in (("validation", 2), ("test", 5)):
        datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))] * n, "label": [0] * n}, features=features
                                   ).to_parquet(str(repo / f"{split}-00000-of-00001.parquet"))
    monkeypatch.setenv(HUB_MIRROR_ENV, str(tmp_path))
    assert len(load_image_dataset("hf:org/shapes:validation", split="test")) == 2
    from robust_w2s.eval.benchmarks import resolve
    (benchmark,) = resolve(dataset="hf:org/shapes:validation")
    assert benchmark.split == "validation" and benchmark.classnames == ("a", "b")
    with pytest.raises(UserError, match="no split 'valid' .*validation, test"):
        load_image_dataset("hf:org/shapes:valid")


def _saved(tmp_path, labels, feature):
    images = [Image.new("RGB", (8, 8), (200 * (i % 2), 0, 0)) for i in range(len(labels))]
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels},
                                         features=datasets.Features({"image": datasets.Image(), "label": feature}))
    dataset.save_to_disk(str(tmp_path / "saved"))
    return f"local:{tmp_path / 'saved'}"


def _names_file(tmp_path, *names):
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    return ["--classnames", str(tmp_path / "names.txt")]


@pytest.mark.parametrize("labels, feature", [([True, False, True], datasets.Value("bool")),
                                             (["circle", "square", "circle"], datasets.Value("string"))])
def test_bool_and_string_labels_evaluate_under_pgd(world_home, tmp_path, capsys, labels, feature):
    spec = _saved(tmp_path, labels, feature)
    capsys.readouterr()  # the fixture's progress bars
    args = ["eval", "--model", "embedded:strong", "--dataset", spec, "--attack", "pgd", "--eps", "4/255",
            "--pgd-steps", "2", "--home", str(world_home), "--output-dir", str(tmp_path / "out"), "--allow-unsound"]
    if isinstance(labels[0], bool):
        assert main(args) == 2  # bool labels carry no names
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "--classnames" in error and "False then True" in error
        args += _names_file(tmp_path, "square", "circle")
    assert main(args) == 0
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    assert record["n_samples"] == 3 and record["benchmark"]["n_classes"] == 2


@pytest.mark.parametrize("names, named", [(("apple", "banana"), "has 3 classes"),
                                          (("banana", "apple", "cherry"), "another order")])
def test_class_names_that_do_not_match_the_label_column_stop_before_compute(world_home, tmp_path, capsys,
                                                                            names, named):
    spec = _saved(tmp_path, [0, 1, 2], datasets.ClassLabel(names=["apple", "banana", "cherry"]))
    capsys.readouterr()
    code, _ = _zeroshot(world_home, tmp_path, spec, *_names_file(tmp_path, *names))
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and named in error


def test_int_labels_out_of_range_are_named(world_home, tmp_path, capsys):
    spec = _saved(tmp_path, [0, 1, 3], datasets.Value("int64"))
    capsys.readouterr()
    code, _ = _zeroshot(world_home, tmp_path, spec, *_names_file(tmp_path, "a", "b", "c"))
    error = capsys.readouterr().err
    assert code == 2 and "label 3" in error and "out of range for 3 class names" in error


def _corrupt_chunk_png(path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 128, 255)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[37] ^= 0xFF  # inside the IHDR chunk: its CRC no longer matches
    path.write_bytes(bytes(data))


def test_corrupt_chunk_is_one_line_or_skipped_and_counted(world_home, tmp_path, capsys):
    root = _image_folder(tmp_path / "fruit")
    _corrupt_chunk_png(root / "banana" / "2.png")
    capsys.readouterr()
    code, _ = _zeroshot(world_home, tmp_path, f"local:{root}")
    error = capsys.readouterr().err  # datasets' progress bars, then the one error line
    assert code == 2 and "Traceback" not in error and "banana/2.png" in error.strip().splitlines()[-1]
    code, report = _zeroshot(world_home, tmp_path, f"local:{root}", "--skip-bad-images")
    task = report["tasks"][f"local:{root}"]
    assert code == 0 and task["n"] == 8 and task["skipped_images"] == 1


def _encoded(image, fmt="PNG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return {"bytes": buffer.getvalue(), "path": None}


def test_16_bit_grey_is_scaled_not_clipped():
    grey = Image.fromarray(np.full((4, 4), 30000, dtype=np.uint16))
    decoded = np.asarray(decode_image(_encoded(grey), 0), dtype=np.float64) / 255
    assert decoded.shape == (4, 4, 3) and np.allclose(decoded, 30000 / 65535, atol=1 / 255)


def _exif_rotated():
    image = Image.new("RGB", (6, 3), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 1, 3))  # a blue left column
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _encoded(image, "JPEG", exif=exif.tobytes(), quality=100)


@pytest.mark.parametrize("value", [
    _encoded(Image.new("P", (4, 4), 3), transparency=3),
    _encoded(Image.new("RGBA", (4, 4), (10, 200, 30, 0))),
    _encoded(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"),
    _encoded(Image.new("LA", (4, 4), (90, 128))),
    _exif_rotated(),
], ids=["palette-transparency", "rgba", "cmyk", "grey-alpha", "exif-orientation"])
def test_every_mode_decodes_as_datasets_decodes_it(value):
    ours = decode_image(value, 0)
    theirs = datasets.Image().decode_example(value).convert("RGB")
    assert ours.mode == "RGB" and ours.size == theirs.size
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_a_local_split_is_named_or_refused_never_guessed(world_home, tmp_path, capsys):
    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(3)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": images * 2, "label": [0, 1, 2] * 2}, features=features),
        "validation": datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2]}, features=features),
    }).save_to_disk(str(tmp_path / "dd"))
    capsys.readouterr()
    code, _ = _zeroshot(world_home, tmp_path, f"local:{tmp_path / 'dd'}")
    error = capsys.readouterr().err
    assert code == 2 and "splits train, validation" in error and ":SPLIT" in error
    code, report = _zeroshot(world_home, tmp_path, f"local:{tmp_path / 'dd'}:validation")
    assert code == 0 and report["tasks"][f"local:{tmp_path / 'dd'}:validation"]["n"] == 3
    assert len(load_image_dataset(f"local:{tmp_path / 'dd'}", prefer="train")) == 6  # alignment's default


def test_file_and_class_names_are_not_read_as_splits(tmp_path):
    for name in ("train", "steam_train", "valley"):  # CIFAR-100 has a class "train"
        (tmp_path / "f" / name).mkdir(parents=True)
        for stem in ("train_0", "test_1", "img_2"):
            Image.new("RGB", (4, 4)).save(tmp_path / "f" / name / f"{stem}.png")
    dataset = load_image_dataset(f"local:{tmp_path / 'f'}")
    assert len(dataset) == 9 and sorted(infer_label_schema(dataset)[1]) == ["steam_train", "train", "valley"]


def test_missing_labels_and_sizes_are_one_line(world_home, tmp_path, capsys):
    spec = _saved(tmp_path, ["circle", None, "square"], datasets.Value("string"))
    capsys.readouterr()
    assert _zeroshot(world_home, tmp_path, spec)[0] == 2
    assert "1 rows without a label" in capsys.readouterr().err
    for flag in (["--n-samples", "0"], ["--batch-size", "0"]):
        assert _zeroshot(world_home, tmp_path, f"local:{_image_folder(tmp_path / flag[0])}", *flag)[0] == 2
        assert flag[0] in capsys.readouterr().err


def test_names_shuffled_among_others_are_caught(world_home, tmp_path, capsys):
    spec = _saved(tmp_path, [0, 1, 2], datasets.ClassLabel(names=["circle", "square", "triangle"]))
    capsys.readouterr()
    code, _ = _zeroshot(world_home, tmp_path, spec, *_names_file(tmp_path, "Square", "circle", "wedge"))
    error = capsys.readouterr().err
    assert code == 2 and "'Square' is given for label 0, but the column names label 1 so" in error


def test_every_image_bad_is_one_line_even_when_skipping(world_home, tmp_path, capsys):
    root = _image_folder(tmp_path / "fruit", per_class=1)
    for path in root.rglob("*.png"):
        path.write_bytes(b"")
    capsys.readouterr()
    code, _ = _zeroshot(world_home, tmp_path, f"local:{root}", "--skip-bad-images")
    assert code == 2 and "every image failed to decode (3" in capsys.readouterr().err


@pytest.mark.parametrize("image, expected", [(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F"), 0.5),
                                             (Image.fromarray(np.full((4, 4), 2 ** 30, dtype=np.int32), "I"), 0.5)])
def test_float_and_32_bit_images_are_scaled_from_their_range(image, expected):
    decoded = np.asarray(decode_image(_encoded(image, "TIFF"), 0), dtype=np.float64) / 255
    assert np.allclose(decoded, expected, atol=1 / 255)

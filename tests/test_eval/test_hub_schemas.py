"""Every registry dataset, as its hub repository lays it out, through the path hub data takes.

For each schema of eval/metadata/datasets.json a repository is written offline under a mirror
folder (``$RW2S_HUB_MIRROR/ORG/NAME``) with that schema's exact format: parquet files named as the
hub names them (``data/SPLIT-00000-of-00001.parquet``) with the schema's feature types, or a
clip-benchmark webdataset (``test/0.tar`` with ``sNNNNNNN.cls`` and an image member, plus the
``nshards.txt`` beside it that misleads the hub's format inference, and ``classnames.txt``).
``load_image_dataset`` then resolves and reads them with ``datasets.load_dataset`` exactly as it
reads the hub. A known sample must get the right class index and name, and the evaluation runs.
"""
from __future__ import annotations

import io
import json
import tarfile

import datasets
import pytest
from PIL import Image
from torchvision.transforms import ToTensor

from robust_w2s.cli import main
from robust_w2s.data import HUB_MIRROR_ENV, iterate_batches, load_image_dataset
from robust_w2s.eval.benchmarks import resolve
from robust_w2s.eval.registry import BENCHMARKS, SCHEMAS, SUITES
from robust_w2s.eval.runner import EvalSettings, evaluate_benchmark
from robust_w2s.eval.zeroshot import load_subset
from robust_w2s.models import eval_transform, load_model
from robust_w2s.zeroshot import ZeroShotClassifier

CLASSES_TAKEN = (0, 1, -1)  # the classes of the eval split's three rows: first, second and last


def _raw_label(schema: dict, k: int, ids: tuple[str, ...]):
    """The value the label column holds for class index k, by the schema's label type."""
    label = schema["label"]
    return {"classlabel": k, "int": k + label.get("offset", 0), "bool": bool(k), "string": ids[k] if ids else None,
            }[label["type"]]


def _image(k: int) -> Image.Image:
    return Image.new("RGB", (12, 12), ((37 * k) % 256, (91 * k) % 256, 128))


def _write_parquet(repo, schema, benchmark, rows):
    label = schema["label"]
    n = schema["n_classes"]
    feature = {"classlabel": datasets.ClassLabel(names=[f"hub name {i}" for i in range(n)]),
               "int": datasets.Value("int64"), "bool": datasets.Value("bool"),
               "string": datasets.Value("string")}[label["type"]]
    features = datasets.Features({schema["image"]: datasets.Image(), label["column"]: feature,
                                  "extra": datasets.Value("string")})  # hubs carry other columns too
    (repo / "data").mkdir(parents=True)
    for split, ks in ((schema["split"], rows), ("train", (0,))):  # a second split that must not be read
        table = {schema["image"]: [_image(k) for k in ks],
                 label["column"]: [_raw_label(schema, k, benchmark.labels.ids) for k in ks],
                 "extra": [f"row {k}" for k in ks]}
        datasets.Dataset.from_dict(table, features=features).to_parquet(
            str(repo / "data" / f"{split}-00000-of-00001.parquet"))


def _write_webdataset(repo, schema, rows):
    extension = schema["image"] or "webp"
    (repo / "test").mkdir(parents=True)
    with tarfile.open(repo / "test" / "0.tar", "w") as tar:
        for i, k in enumerate(rows):
            encoded = io.BytesIO()
            _image(k).save(encoded, format={"jpg": "JPEG"}.get(extension, extension.upper()))
            for suffix, payload in (("cls", str(k).encode()), (extension, encoded.getvalue())):
                member = tarfile.TarInfo(f"s{i:07d}.{suffix}")
                member.size = len(payload)
                tar.addfile(member, io.BytesIO(payload))
    (repo / "test" / "nshards.txt").write_text("1\n")
    names = BENCHMARKS[_name_of(schema)].classnames or [f"class {i}" for i in range(schema["n_classes"])]
    (repo / "classnames.txt").write_text("\n".join(names) + "\n")


def _name_of(schema: dict) -> str:
    return next(name for name, s in SCHEMAS.items() if s is schema)


@pytest.fixture(scope="module")
def hub_mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_mirror")
    written = set()
    for name, schema in SCHEMAS.items():
        if schema["hub"] in written:
            continue  # imagenet-sketch and cb/imagenet-sketch are one repository
        written.add(schema["hub"])
        rows = tuple(k % schema["n_classes"] for k in CLASSES_TAKEN)
        repo = root / schema["hub"]
        if schema["format"] == "webdataset":
            _write_webdataset(repo, schema, rows)
        else:
            _write_parquet(repo, schema, BENCHMARKS[name], rows)
    return root


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_known_samples_get_their_class_index_and_name(hub_mirror, world_home, monkeypatch, single_thread, name):
    monkeypatch.setenv(HUB_MIRROR_ENV, str(hub_mirror))
    (benchmark,) = resolve(dataset=name)
    schema = SCHEMAS[name]
    assert len(benchmark.classnames) == schema["n_classes"]
    dataset, image_column = load_subset(benchmark)
    assert len(dataset) == 3, "only the evaluation split is read"
    (pixels, labels), = iterate_batches(dataset, ToTensor(), 8, image_column=image_column, labels=benchmark.labels)
    expected = [k % schema["n_classes"] for k in CLASSES_TAKEN]
    assert labels.tolist() == expected
    assert pixels.shape == (3, 3, 12, 12)
    if name == "imagenet-r":  # the first row's label is the string n01443537, goldfish's WordNet id
        assert dataset[0]["wnid"] == "n01443537" and benchmark.classnames[labels[0]] == "goldfish"
    if name == "caltech256":  # 1-based: the raw label 257 is class 256, the clutter class
        assert dataset[2]["label"] == 257 and benchmark.classnames[labels[2]] == "background clutter"
    # Clean and PGD evaluation on it (one template keeps ImageNet's 1000-class head cheap here; the
    # full heads run in the paper14 test below).
    model, _, tokenizer = load_model("embedded:strong", home=world_home)
    classifier = ZeroShotClassifier(model, tokenizer, benchmark.classnames, benchmark.templates[:1])
    settings = EvalSettings(attacks=("pgd",), eps=(4 / 255,), pgd_steps=2)
    result = evaluate_benchmark(classifier, dataset, benchmark, transform=eval_transform(model, normalize=False),
                                settings=settings, image_column=image_column)
    assert result["n_samples"] == 3 and result["rows"][0]["robust_acc"] <= result["clean_acc"]


@pytest.mark.slow  # about 2 minutes: ImageNet's 1000 x 80 heads, twice, on 2 cores
def test_paper14_on_hub_laid_fixtures_reaches_the_end_with_audits_passing(hub_mirror, world_home, tmp_path,
                                                                          monkeypatch, single_thread):
    monkeypatch.setenv(HUB_MIRROR_ENV, str(hub_mirror))
    out = tmp_path / "eval"
    code = main(["eval", "--model", "embedded:strong", "--suite", "paper14", "--attack", "pgd", "--eps", "4/255",
                 "--pgd-steps", "3", "--home", str(world_home), "--output-dir", str(out)])
    records = [json.loads(path.read_text()) for path in out.glob("*.json")]
    assert sorted(r["dataset"] for r in records) == sorted(SUITES["paper14"])
    assert all(r["n_samples"] == 3 and r["audits_passed"] for r in records), [
        (r["dataset"], [a for a in r["audits"].values() if not a["passed"]]) for r in records]
    assert code == 0


def test_a_clip_benchmark_webdataset_loads_by_hub_id_too(hub_mirror, monkeypatch):
    """As `--dataset hf:clip-benchmark/wds_vtab-pcam`: its one shard beside nshards.txt would make
    `datasets` read the repository as text; the label column is found as `cls`."""
    monkeypatch.setenv(HUB_MIRROR_ENV, str(hub_mirror))
    dataset = load_image_dataset("hf:clip-benchmark/wds_vtab-pcam")
    assert len(dataset) == 3 and {"cls", "webp"} <= set(dataset.column_names)
    from robust_w2s.data import infer_label_schema
    with pytest.raises(Exception, match="--classnames"):  # plain int labels carry no names
        infer_label_schema(dataset)

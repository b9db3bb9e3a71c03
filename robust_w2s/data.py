"""One data path: every image set is a Hugging Face ``datasets.Dataset``.

Dataset specs (DESIGN.md section 8):
    hf:ID[:SPLIT]     a hub dataset (for users who are online); SPLIT defaults to the benchmark's
    local:PATH[:SPLIT] an image folder (class sub-folders, or split sub-folders of class sub-folders),
                      a parquet file, or a save_to_disk folder (see ``load_image_dataset`` for the split)
    embedded:TASK     a task of the embedded world (built by ``robust-w2s pretrain``)

Hub datasets download only the split that is read: its data files are resolved first (the
repository's own configs, or ``data_files`` given by a registry schema, e.g. ``test/*.tar`` for
clip-benchmark's webdatasets) and only those are fetched. ``$RW2S_HUB_MIRROR`` points hub ids at a
local copy of the repositories (``MIRROR/ORG/NAME/...``, the hub's layout), for clusters without
internet and for tests.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterator, Sequence

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import UserError
from .labels import LabelSchema
from .layout import data_dir

HUB_MIRROR_ENV = "RW2S_HUB_MIRROR"


def split_of(spec: str) -> str | None:
    """The split a ``hf:ID:SPLIT`` or ``local:PATH:SPLIT`` spec names, or None."""
    kind, _, rest = spec.partition(":")
    if kind == "hf":
        return rest.partition(":")[2] or None
    if kind == "local":
        return _local_path_and_split(rest)[1]
    return None


def _local_path_and_split(rest: str) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH:SPLIT`` (a path that exists wins over reading its last colon as a split)."""
    path = Path(rest).expanduser()
    head, colon, split = rest.rpartition(":")
    if not path.exists() and colon and head and Path(head).expanduser().exists():
        return Path(head).expanduser(), split
    return path, None


def load_image_dataset(spec: str, split: str | None = None, home: str | os.PathLike | None = None, *,
                       data_files: str | None = None, prefer: str = "test") -> datasets.Dataset:
    """Load one split of the dataset named by ``spec`` (see module docstring).

    The split named in the spec wins over ``split``; with neither, a dataset of one split gives it,
    one of several gives ``prefer`` (``test`` for evaluations, ``train`` for alignment) if it has
    one, and a one-line UserError listing its splits otherwise. ``data_files``: a pattern with
    ``{split}``, relative to the hub repository (e.g. ``"{split}/*.tar"``), for repositories whose
    files the hub's inference would misread. Raises a one-line UserError for anything that cannot
    be loaded.
    """
    kind, _, rest = spec.partition(":")
    named = split_of(spec) or split
    if kind == "hf":
        hub_id = rest.partition(":")[0]
        return load_hub_split(hub_id, named or prefer, data_files=data_files)
    if kind == "embedded":
        folder = data_dir(rest, home)
        if not folder.is_dir():
            raise UserError(f"embedded task {rest!r} not found under {folder.parent}: run `robust-w2s pretrain`")
        return datasets.load_from_disk(str(folder))
    if kind == "local":
        return _load_local(_local_path_and_split(rest)[0], named, prefer)
    raise UserError(f"unknown dataset spec {spec!r}: expected hf:ID[:SPLIT], local:PATH[:SPLIT] or embedded:TASK")


def load_hub_split(hub_id: str, split: str, *, data_files: str | None = None) -> datasets.Dataset:
    """One split of a hub dataset, downloading that split's files only.

    ``load_dataset(ID, split=S)`` alone downloads and prepares every split (ImageNet's 140 GB train
    split before its validation split); resolving the split's files first and passing them as
    ``data_files`` fetches only those. Repositories that still carry a loading script (refused by
    ``datasets`` >= 4) are read from the hub's parquet export (``refs/convert/parquet``).
    """
    mirror = os.environ.get(HUB_MIRROR_ENV)
    root = str(Path(mirror) / hub_id) if mirror else hub_id
    revision = None
    try:
        if data_files is None:
            try:
                builder = datasets.load_dataset_builder(root)
            except RuntimeError as error:
                if "scripts are no longer supported" not in str(error):
                    raise
                revision = "refs/convert/parquet"
                builder = datasets.load_dataset_builder(root, revision=revision)
            available = builder.config.data_files or {}
            if split not in available:
                raise UserError(f"hf:{hub_id} has no split {split!r} (splits: {', '.join(available) or 'none'})")
            files = {split: list(available[split])}
            if builder.name == "text":  # clip-benchmark's webdatasets: nshards.txt outvotes one .tar shard
                files = {split: f"{split}/*.tar"}
        else:
            files = {split: data_files.format(split=split)}
        return datasets.load_dataset(root, data_files=files, split=split, revision=revision)
    except UserError:
        raise
    except Exception as error:  # offline, unknown or gated id, missing files: all surface as one line
        raise UserError(f"cannot load hf:{hub_id} split {split!r}: {(str(error).strip().splitlines() or [''])[0]}"
                        ) from None


def read_hub_file(hub_id: str, filename: str) -> str:
    """A small text file of a hub dataset repository (e.g. clip-benchmark's ``classnames.txt``)."""
    mirror = os.environ.get(HUB_MIRROR_ENV)
    try:
        if mirror:
            return (Path(mirror) / hub_id / filename).read_text()
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(hub_id, filename, repo_type="dataset")).read_text()
    except Exception as error:  # offline, unknown id, missing file
        raise UserError(f"cannot read {filename} of hf:{hub_id}: {(str(error).strip().splitlines() or [''])[0]}"
                        ) from None


def image_column_of(dataset: datasets.Dataset, column: str | None) -> str:
    """``column``, checked; or, for None, the first column of ``datasets.Image`` type."""
    if column is not None:
        require_columns(dataset, column)
        return column
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise UserError(f"dataset has no image column (columns: {', '.join(dataset.column_names)})")


SPLIT_FOLDERS = ("train", "test", "validation", "valid", "val", "dev", "eval")


def _load_local(path: Path, split: str | None, prefer: str) -> datasets.Dataset:
    if not path.exists():
        raise UserError(f"local dataset not found: {path}")
    if path.is_file():
        if path.suffix != ".parquet":
            raise UserError(f"{path}: a local dataset file must be .parquet")
        return datasets.load_dataset("parquet", data_files=str(path), split="train")  # a file is one split
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            return loaded[_pick_split(loaded, split, prefer, path)]
        return loaded
    # An image folder: class sub-folders (one split), or split sub-folders (train/, test/, ...) each
    # holding class sub-folders. The files are named explicitly, so that `datasets` does not read
    # "train" or "test" in a file or class name as a split; the label column's ClassLabel names are
    # the class folder names.
    if not any(file.is_file() for file in path.rglob("*")):
        raise UserError(f"{path}: not an image folder (it holds no files)")
    folders = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders and all(name in SPLIT_FOLDERS for name in folders):
        data_files = {name: str(path / name / "**") for name in folders}
    else:
        data_files = {"train": str(path / "**")}
    name = _pick_split(data_files, split, prefer, path)
    try:
        return datasets.load_dataset("imagefolder", data_files={name: data_files[name]}, split=name)
    except (ValueError, FileNotFoundError) as error:  # e.g. a folder without images
        raise UserError(f"{path}: not an image folder ({str(error).splitlines()[0]})") from None


def _pick_split(splits, split: str | None, prefer: str, source) -> str:
    """The split to read: ``split`` if named (it must exist), else the only one, else ``prefer``."""
    names = list(splits)
    if split is not None:
        if split not in names:
            if names == ["train"] and not isinstance(splits, datasets.DatasetDict):
                return "train"  # a plain folder of classes or a parquet file: one unnamed split
            raise UserError(f"{source} has no split {split!r} (splits: {', '.join(names)})")
        return split
    if len(names) == 1:
        return names[0]
    if prefer in names:
        return prefer
    raise UserError(f"{source} has splits {', '.join(names)} and none is {prefer!r}: name one, as "
                    f"local:{source}:SPLIT")


def require_columns(dataset: datasets.Dataset, *columns: str) -> None:
    """One-line error naming the first missing column and the ones that exist."""
    for column in columns:
        if column not in dataset.column_names:
            raise UserError(f"dataset has no column {column!r} (columns: {', '.join(dataset.column_names)})")


class BadImages:
    """What to do with images that fail to decode: raise a one-line UserError (default), or skip
    them (``skip=True``, the CLI's ``--skip-bad-images``) and count them here."""

    def __init__(self, skip: bool = False):
        self.skip = skip
        self.count = 0
        self.first: str | None = None  # where the first skipped image was

    def handle(self, error: UserError, where: str) -> None:
        if not self.skip:
            raise error
        self.count += 1
        self.first = self.first or where


def decode_image(value, row: int) -> Image.Image:
    """A ``datasets.Image(decode=False)`` value (bytes or path) as an RGB PIL image.

    As ``datasets`` decodes: EXIF orientation applied, then converted to RGB, except that 16- and
    32-bit integer images are rescaled from their full range (PIL's own conversion clips them, so a
    16-bit grey of 30000/65535 would become white). Any failure to decode (PIL raises OSError,
    SyntaxError, ValueError, DecompressionBombError, ...) is a one-line UserError naming the file
    or row.
    """
    where = value.get("path") if isinstance(value, dict) and value.get("path") else f"row {row}"
    try:
        if isinstance(value, Image.Image):
            return to_rgb(ImageOps.exif_transpose(value))
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except Exception as error:  # noqa: BLE001 -- PIL's decoders raise many types for broken data
        raise UserError(f"corrupt or unreadable image at {where}: {error.__class__.__name__}: "
                        f"{(str(error).splitlines() or [''])[0]}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB: integer modes wider than 8 bits scaled from their range (16 bits, or 32
    beyond it), float images read as [0, 1], palette transparency through RGBA as PIL documents."""
    if image.mode.startswith("I") or image.mode == "F":
        # PIL opens 16-bit PNGs as "I;16" or "I"; a 32-bit "I" beyond 16 bits is scaled from 32 bits,
        # a float image is read as [0, 1].
        grey = np.asarray(image, dtype=np.float64)
        full = 1.0 if image.mode == "F" else (65535.0 if grey.max(initial=0) <= 65535 else 2.0 ** 31 - 1)
        return Image.fromarray(np.clip(np.rint(grey / full * 255), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("P", "PA") and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL's documented path for palette transparency
    return image.convert("RGB")


def label_column_of(dataset: datasets.Dataset) -> str:
    """The label column of a dataset no registry entry describes: ``label``, else its only ClassLabel
    column, else ``cls`` (webdatasets); a one-line UserError otherwise."""
    if "label" in dataset.column_names:
        return "label"
    class_labels = [n for n, f in dataset.features.items() if isinstance(f, datasets.ClassLabel)]
    if len(class_labels) == 1:
        return class_labels[0]
    if "cls" in dataset.column_names:
        return "cls"
    raise UserError(f"dataset has no label column (columns: {', '.join(dataset.column_names)}); an image folder "
                    f"needs two or more class sub-folders")


def infer_label_schema(dataset: datasets.Dataset, column: str | None = None,
                       classnames: Sequence[str] | None = None, *,
                       read_labels: bool = True) -> tuple[LabelSchema, tuple[str, ...]]:
    """(schema, class names) of a dataset that no registry entry describes, from its feature type.

    ClassLabel: its names (or ``classnames``). Strings: each distinct string is a class, named by
    itself in sorted order (or ordered as ``classnames``). Bool and plain integers carry no names:
    ``classnames`` is required. ``column`` defaults to :func:`label_column_of`. With
    ``read_labels=False`` (a label-free method's alignment set) no label value is read: only the
    column's feature type, so string labels then need ``classnames`` too. Raises a one-line
    UserError otherwise.
    """
    column = column or label_column_of(dataset)
    require_columns(dataset, column)
    if read_labels:
        _no_missing_labels(dataset, column)
    feature = dataset.features[column]
    kind = _feature_type(feature)
    if kind == "classlabel":
        return LabelSchema(column), tuple(classnames or feature.names)
    if kind == "string" and not (read_labels or classnames):
        raise UserError(f"column {column!r} holds string labels and this method does not read the alignment "
                        f"set's labels, so the class names cannot come from them: give data.classnames")
    if kind == "string":
        names = tuple(classnames or sorted(set(dataset[column])))
        return LabelSchema(column, "string", ids=names), names
    if not classnames:
        hint = "two names, for False then True" if kind == "bool" else "one name per label value 0, 1, ..."
        raise UserError(f"column {column!r} holds {kind} labels with no class names: give them, one per line "
                        f"(--classnames FILE; data.classnames in an alignment config) ({hint})")
    return LabelSchema(column, kind), tuple(classnames)


def _no_missing_labels(dataset: datasets.Dataset, column: str) -> None:
    missing = dataset[column].count(None) if len(dataset) else 0
    if missing:
        raise UserError(f"column {column!r} has {missing} rows without a label")


def check_labels(dataset: datasets.Dataset, schema: LabelSchema, classnames: Sequence[str], source: str) -> None:
    """Validate class names against the label column before any compute; one-line UserError naming
    the mismatch: the column's type against the schema's, the class count, the order of names
    (where the column has names), and every label in range."""
    require_columns(dataset, schema.column)
    _no_missing_labels(dataset, schema.column)
    feature = dataset.features[schema.column]
    kind, k = _feature_type(feature), len(classnames)
    compatible = {"classlabel": ("classlabel", "int"), "int": ("int",), "bool": ("bool",), "string": ("string",)}
    if kind not in compatible[schema.type]:
        raise UserError(f"{source}: column {schema.column!r} holds {kind} labels, but {schema.type} labels "
                        f"were expected")
    if kind == "classlabel":
        names = list(feature.names)
        if len(names) != k:
            raise UserError(f"{source}: column {schema.column!r} has {len(names)} classes ({_preview(names)}), "
                            f"but {k} class names were given")
        # A name the column has at another index means shuffled names (case, spaces and _ aside).
        position = {_plain(name): i for i, name in enumerate(names)}
        moved = [(i, name) for i, name in enumerate(classnames) if position.get(_plain(name), i) != i]
        if moved:
            i, name = moved[0]
            raise UserError(f"{source}: class names are in another order than the column's: {name!r} is given "
                            f"for label {i}, but the column names label {position[_plain(name)]} so "
                            f"(label {i} is {names[i]!r})")
    elif kind == "bool" and k != 2:
        raise UserError(f"{source}: column {schema.column!r} holds bool labels (2 classes), but {k} class names "
                        f"were given")
    elif kind == "string":
        missing = sorted(set(dataset[schema.column]) - set(schema.ids))
        if missing:
            raise UserError(f"{source}: label {missing[0]!r} of column {schema.column!r} is not among the "
                            f"{len(schema.ids)} class ids")
        if len(schema.ids) != k:
            raise UserError(f"{source}: {len(schema.ids)} class ids but {k} class names")
    if kind in ("classlabel", "int") and len(dataset):
        values = dataset.unique(schema.column)
        low, high = min(values) - schema.offset, max(values) - schema.offset
        if low < 0 or high >= k:
            bad = low + schema.offset if low < 0 else high + schema.offset
            raise UserError(f"{source}: label {bad} of column {schema.column!r} is out of range for {k} class "
                            f"names (offset {schema.offset})")


def _plain(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def _feature_type(feature) -> str:
    if isinstance(feature, datasets.ClassLabel):
        return "classlabel"
    dtype = getattr(feature, "dtype", None)
    if dtype == "bool":
        return "bool"
    if dtype in ("string", "large_string"):
        return "string"
    if dtype is not None and dtype.startswith(("int", "uint")):
        return "int"
    raise UserError(f"unsupported label feature {feature}")


def _preview(names: Sequence[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def iterate_batches(dataset: datasets.Dataset, transform, batch_size: int = 256, *,
                    image_column: str = "image", labels: LabelSchema | None = LabelSchema(),
                    bad_images: BadImages | None = None,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield (pixels [B, 3, H, W], class indices int64 [B] or None) with ``transform`` applied.

    Images are decoded here rather than by ``datasets`` so that a corrupt file is reported with
    its row or path (or skipped and counted, with ``bad_images=BadImages(skip=True)``); labels go
    through ``labels`` (None: no labels). A batch may be smaller when images were skipped.
    """
    bad_images = bad_images or BadImages()
    columns = (image_column,) + ((labels.column,) if labels else ())
    require_columns(dataset, *columns)
    raw = dataset.select_columns(list(columns))
    if isinstance(raw.features[image_column], datasets.Image):
        raw = raw.cast_column(image_column, datasets.Image(decode=False))
    for start in range(0, len(raw), batch_size):
        batch = raw[start:start + batch_size]
        pixels, kept = [], []
        for i, value in enumerate(batch[image_column]):
            try:
                pixels.append(transform(decode_image(value, start + i)))
                kept.append(i)
            except UserError as error:
                bad_images.handle(error, str(error).removeprefix("corrupt or unreadable image at "))
        if not kept:
            continue
        label_values = [batch[labels.column][i] for i in kept] if labels else None
        yield torch.stack(pixels), (labels.indices(label_values) if labels else None)
    if bad_images.count and bad_images.count == len(raw):
        raise UserError(f"every image failed to decode ({bad_images.count}; the first at {bad_images.first})")

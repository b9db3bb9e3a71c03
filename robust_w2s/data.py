"""One data path: every image set is a Hugging Face ``datasets.Dataset``.

Dataset specs (DESIGN.md section 8):
    hf:ID[:SPLIT]     a hub dataset (for users who are online)
    local:PATH        an image folder (class sub-folders), a parquet file, or a save_to_disk folder
    embedded:TASK     a task of the embedded world (built by ``robust-w2s pretrain``)
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterator

import datasets
import torch
from PIL import Image, UnidentifiedImageError

from .errors import UserError
from .layout import data_dir


def load_image_dataset(spec: str, split: str | None = None,
                       home: str | os.PathLike | None = None) -> datasets.Dataset:
    """Load the dataset named by ``spec`` (see module docstring); ``split`` picks one split."""
    kind, _, rest = spec.partition(":")
    if kind == "hf":
        hub_id, _, hub_split = rest.partition(":")
        try:
            return datasets.load_dataset(hub_id, split=split or hub_split or "test")
        except Exception as error:  # offline, unknown id or split: all surface as one line
            raise UserError(f"cannot load {spec!r} from the hub: {str(error).splitlines()[0]}") from None
    if kind == "embedded":
        folder = data_dir(rest, home)
        if not folder.is_dir():
            raise UserError(f"embedded task {rest!r} not found under {folder.parent}: run `robust-w2s pretrain`")
        return datasets.load_from_disk(str(folder))
    if kind == "local":
        return _load_local(Path(rest), split)
    raise UserError(f"unknown dataset spec {spec!r}: expected hf:ID[:SPLIT], local:PATH or embedded:TASK")


def _load_local(path: Path, split: str | None) -> datasets.Dataset:
    if not path.exists():
        raise UserError(f"local dataset not found: {path}")
    if path.is_file():
        if path.suffix != ".parquet":
            raise UserError(f"{path}: a local dataset file must be .parquet")
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            name = split or ("test" if "test" in loaded else next(iter(loaded)))
            if name not in loaded:
                raise UserError(f"{path} has no split {name!r} (splits: {', '.join(loaded)})")
            return loaded[name]
        return loaded
    # Class sub-folders of images: the label column's ClassLabel names are the folder names.
    try:
        return datasets.load_dataset("imagefolder", data_dir=str(path), split=split or "train")
    except (ValueError, FileNotFoundError) as error:  # e.g. a folder without images
        raise UserError(f"{path}: not an image folder ({str(error).splitlines()[0]})") from None


def class_names(dataset: datasets.Dataset, label_column: str = "label") -> list[str]:
    """The ``ClassLabel`` names of ``label_column``, in label-index order."""
    require_columns(dataset, label_column)
    feature = dataset.features[label_column]
    if not isinstance(feature, datasets.ClassLabel):
        raise UserError(f"column {label_column!r} has no class names ({feature}); pass --classnames FILE")
    return list(feature.names)


def require_columns(dataset: datasets.Dataset, *columns: str) -> None:
    """One-line error naming the first missing column and the ones that exist."""
    for column in columns:
        if column not in dataset.column_names:
            raise UserError(f"dataset has no column {column!r} (columns: {', '.join(dataset.column_names)})")


def decode_image(value, row: int) -> Image.Image:
    """A ``datasets.Image(decode=False)`` value (bytes or path) as an RGB PIL image."""
    try:
        if isinstance(value, Image.Image):
            return value.convert("RGB")
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, KeyError, TypeError) as error:
        where = value.get("path") if isinstance(value, dict) and value.get("path") else f"row {row}"
        raise UserError(f"corrupt or unreadable image at {where}: {error.__class__.__name__}") from None


def iterate_batches(dataset: datasets.Dataset, transform, batch_size: int = 256, *,
                    image_column: str = "image", label_column: str | None = "label",
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield (pixels [B, 3, H, W], labels [B] or None) with ``transform`` applied to each image.

    Images are decoded here rather than by ``datasets`` so that a corrupt file is reported with
    its row or path instead of a deep PIL traceback.
    """
    columns = (image_column,) + ((label_column,) if label_column else ())
    require_columns(dataset, *columns)
    raw = dataset.select_columns(list(columns))
    if isinstance(raw.features[image_column], datasets.Image):
        raw = raw.cast_column(image_column, datasets.Image(decode=False))
    for start in range(0, len(raw), batch_size):
        batch = raw[start:start + batch_size]
        pixels = torch.stack([transform(decode_image(value, start + i))
                              for i, value in enumerate(batch[image_column])])
        labels = torch.tensor(batch[label_column]) if label_column else None
        yield pixels, labels

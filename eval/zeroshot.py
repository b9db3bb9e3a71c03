"""Clean zero-shot accuracy of one model over a list of benchmarks (``robust-w2s zeroshot``)."""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from robust_w2s.data import BadImages, check_labels, image_column_of, iterate_batches, load_image_dataset
from robust_w2s.layout import text_head_cache
from robust_w2s.models import eval_transform, load_model
from robust_w2s.zeroshot import ZeroShotClassifier, accuracy

from .registry import Benchmark
from .versions import package_versions


def load_subset(benchmark: Benchmark, home=None, n_samples: int | None = None, seed: int = 0):
    """The benchmark's evaluation split, or a seeded random subset of ``n_samples`` of it, with its
    image column resolved; class names are validated against the label column first (one-line
    UserError naming the mismatch, before any compute)."""
    dataset = load_image_dataset(benchmark.source, split=benchmark.split, home=home,
                                 data_files=benchmark.data_files)
    check_labels(dataset, benchmark.labels, benchmark.classnames, benchmark.name)
    image_column = image_column_of(dataset, benchmark.image_column)
    if n_samples is not None and n_samples < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        dataset = dataset.select(sorted(order[:n_samples].tolist()))
    return dataset, image_column


def task_name(benchmark: Benchmark) -> str:
    return benchmark.name.removeprefix("embedded/")


def zero_shot_report(model_spec: str, benchmarks: list[Benchmark], *, home=None, n_samples: int | None = None,
                     seed: int = 0, batch_size: int = 256, skip_bad_images: bool = False) -> dict:
    """``{"model", "tasks": {TASK: {"clean_acc", "n", "skipped_images"}}, ...}`` (DESIGN.md section 8).
    Every dataset is loaded and validated before the model runs."""
    subsets = [load_subset(benchmark, home, n_samples, seed) for benchmark in benchmarks]
    model, _, tokenizer = load_model(model_spec, home=home)
    transform = eval_transform(model, normalize=False)
    started = time.time()
    tasks = {}
    for benchmark, (dataset, image_column) in tqdm(list(zip(benchmarks, subsets)), desc=f"zero-shot {model_spec}",
                                                   unit="task"):
        classifier = ZeroShotClassifier(model, tokenizer, benchmark.classnames, benchmark.templates,
                                        head_cache=text_head_cache(home))
        bad_images = BadImages(skip=skip_bad_images)
        batches = iterate_batches(dataset, transform, batch_size, image_column=image_column,
                                  labels=benchmark.labels, bad_images=bad_images)
        clean_acc, n = accuracy(classifier, batches)
        tasks[task_name(benchmark)] = {"clean_acc": clean_acc, "n": n, "skipped_images": bad_images.count}
    return {"model": model_spec, "tasks": tasks, "n_samples": n_samples, "seed": seed,
            "seconds": time.time() - started, "versions": package_versions()}

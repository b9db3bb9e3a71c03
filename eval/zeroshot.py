"""Clean zero-shot accuracy of one model over a list of benchmarks (``robust-w2s zeroshot``)."""
from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from robust_w2s.data import iterate_batches, load_image_dataset, require_columns
from robust_w2s.layout import text_head_cache
from robust_w2s.models import eval_transform, load_model
from robust_w2s.zeroshot import ZeroShotClassifier, accuracy

from .registry import Benchmark
from .versions import package_versions


def load_subset(benchmark: Benchmark, home=None, n_samples: int | None = None, seed: int = 0):
    """The benchmark's evaluation split, or a seeded random subset of ``n_samples`` of it."""
    dataset = load_image_dataset(benchmark.source, split=benchmark.split, home=home)
    require_columns(dataset, benchmark.image_column, benchmark.label_column)
    if n_samples is not None and n_samples < len(dataset):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        dataset = dataset.select(sorted(order[:n_samples].tolist()))
    return dataset


def task_name(benchmark: Benchmark) -> str:
    return benchmark.name.removeprefix("embedded/")


def zero_shot_report(model_spec: str, benchmarks: list[Benchmark], *, home=None, n_samples: int | None = None,
                     seed: int = 0, batch_size: int = 256) -> dict:
    """``{"model", "tasks": {TASK: {"clean_acc", "n"}}, ...}`` (DESIGN.md section 8)."""
    model, _, tokenizer = load_model(model_spec, home=home)
    transform = eval_transform(model, normalize=False)
    started = time.time()
    tasks = {}
    for benchmark in tqdm(benchmarks, desc=f"zero-shot {model_spec}", unit="task"):
        dataset = load_subset(benchmark, home, n_samples, seed)
        classifier = ZeroShotClassifier(model, tokenizer, benchmark.classnames, benchmark.templates,
                                        head_cache=text_head_cache(home))
        batches = iterate_batches(dataset, transform, batch_size, image_column=benchmark.image_column,
                                  label_column=benchmark.label_column)
        clean_acc, n = accuracy(classifier, batches)
        tasks[task_name(benchmark)] = {"clean_acc": clean_acc, "n": n}
    return {"model": model_spec, "tasks": tasks, "n_samples": n_samples, "seed": seed,
            "seconds": time.time() - started, "versions": package_versions()}

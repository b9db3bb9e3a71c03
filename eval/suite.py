"""``robust-w2s eval``: run the runner over benchmarks and write one JSON file per result."""
from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from robust_w2s.data import BadImages
from robust_w2s.layout import text_head_cache
from robust_w2s.models import eval_transform, load_model, resolve_device
from robust_w2s.zeroshot import ZeroShotClassifier

from .records import EvalRecord, eps_label
from .registry import Benchmark
from .runner import EvalSettings, evaluate_benchmark
from .versions import package_versions
from .zeroshot import load_subset, task_name


def run_eval(model_spec: str, benchmarks: list[Benchmark], settings: EvalSettings, output_dir: str | Path, *,
             home=None, device: str | None = None, protocol: str | None = None,
             skip_bad_images: bool = False) -> list[EvalRecord]:
    """Evaluate ``model_spec`` on every benchmark; returns the records written to ``output_dir``.
    Every dataset is loaded and its labels validated before the model runs."""
    device = str(resolve_device(device))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    subsets = [load_subset(benchmark, home, settings.n_samples, settings.seed) for benchmark in benchmarks]
    model, _, tokenizer = load_model(model_spec, home=home, device=device)
    transform = eval_transform(model, normalize=False)
    records = []
    for benchmark, (dataset, image_column) in tqdm(list(zip(benchmarks, subsets)), desc=f"eval {model_spec}",
                                                   unit="dataset"):
        started = time.time()
        classifier = ZeroShotClassifier(model, tokenizer, benchmark.classnames, benchmark.templates,
                                        head_cache=text_head_cache(home)).to(device)
        bad_images = BadImages(skip=skip_bad_images)
        result = evaluate_benchmark(classifier, dataset, benchmark, transform=transform, settings=settings,
                                    device=device, image_column=image_column, bad_images=bad_images)
        for row in result["rows"]:
            record = EvalRecord(
                model=model_spec, dataset=task_name(benchmark), attack=row["attack"], eps=row["eps"],
                eps_label=eps_label(row["eps"]), n_samples=result["n_samples"], seed=settings.seed,
                clean_acc=result["clean_acc"], robust_acc=row["robust_acc"], worst_case_acc=row["worst_case_acc"],
                audits=row["audits"], audits_passed=all(a["passed"] for a in row["audits"].values()),
                seconds=row["seconds"], dataset_seconds=time.time() - started, protocol=protocol,
                settings=result["settings"], device=device, versions=package_versions(),
                benchmark={"source": benchmark.source, "split": benchmark.split,
                           "n_classes": len(benchmark.classnames), "variant": benchmark.variant,
                           "skipped_images": bad_images.count})
            record.write(output_dir)
            records.append(record)
    return records

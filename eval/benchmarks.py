"""Turning ``--suite`` / ``--dataset`` arguments into registry ``Benchmark`` entries.

The embedded world's tasks are registered here at run time from ``HOME/world/world.json``
(their class names and templates travel with the world, not with the code).
"""
from __future__ import annotations

from pathlib import Path

from robust_w2s.data import image_column_of, infer_label_schema, load_image_dataset, read_hub_file, split_of
from robust_w2s.errors import UserError
from robust_w2s.layout import EMBEDDED, Home, read_world

from .registry import PROTOCOLS, SUITES, Benchmark, Protocol, get_benchmark, register, suite_benchmarks

DEFAULT_TEMPLATES = ("a photo of a {}.",)
SUITE_PROTOCOLS = {"embedded": "embedded", "paper14": "autoattack", "tecoa16": "tecoa"}
EMBEDDED_PGD_STEPS = 20  # the world's epsilon is calibrated with PGD-20


def default_protocol(suite: str | None, dataset: str | None) -> str:
    if suite is not None:
        return SUITE_PROTOCOLS.get(suite, "tecoa")
    return "embedded" if dataset.startswith("embedded/") else "tecoa"


def register_embedded(home: Home = None) -> list[Benchmark]:
    """Register ``embedded/<task>`` for every task of the world and the ``embedded`` suite."""
    record = read_world(home)
    benchmarks = [Benchmark(name=f"embedded/{task}", source=f"{EMBEDDED}{task}", split="test",
                            classnames=tuple(record["classnames"][task]),
                            templates=tuple(record["templates"][task]))
                  for task in record["tasks"]]
    for benchmark in benchmarks:
        register(benchmark)
    SUITES["embedded"] = tuple(b.name for b in benchmarks)
    PROTOCOLS["embedded"] = Protocol("embedded", eps=(record["epsilon"],), attacks=("pgd",),
                                     pgd_steps=EMBEDDED_PGD_STEPS, n_samples=None, seed=0)
    return benchmarks


def resolve(suite: str | None = None, dataset: str | None = None, home=None,
            classnames_file: str | None = None) -> list[Benchmark]:
    """The benchmarks named by exactly one of ``suite`` or ``dataset`` (DESIGN.md section 8), with
    class names read where they live in the hub repository (clip-benchmark's ``classnames.txt``)."""
    if (suite is None) == (dataset is None):
        raise UserError("give exactly one of --suite or --dataset")
    if suite == "embedded" or (dataset or "").startswith("embedded"):  # embedded:TASK gets a suggestion
        register_embedded(home)
    if suite is not None:
        if classnames_file:
            raise UserError("--classnames names the classes of one --dataset; a suite's come from its registry")
        return [_with_hub_classnames(b) for b in suite_benchmarks(suite)]
    if dataset.startswith(("hf:", "local:")):
        return [_adhoc_benchmark(dataset, home, classnames_file)]
    benchmark = _with_hub_classnames(get_benchmark(dataset))
    if classnames_file:
        benchmark = _benchmark(**{**benchmark.__dict__, "classnames": _read_classnames(classnames_file)})
    return [benchmark]


def _with_hub_classnames(benchmark: Benchmark) -> Benchmark:
    if not benchmark.classnames_file:
        return benchmark
    text = read_hub_file(benchmark.source.removeprefix("hf:"), benchmark.classnames_file)
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    return _benchmark(**{**benchmark.__dict__, "classnames": names, "classnames_file": None})


def _benchmark(**fields) -> Benchmark:
    """A Benchmark built from the user's input (class names file, dataset spec): its checks are
    input errors."""
    try:
        return Benchmark(**fields)
    except ValueError as error:
        raise UserError(str(error)) from None


def _read_classnames(path: str) -> tuple[str, ...]:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"class names file not found: {file}")
    names = tuple(line.strip() for line in file.read_text().splitlines() if line.strip())
    if not names:
        raise UserError(f"class names file is empty: {file}")
    return names


def _adhoc_benchmark(spec: str, home, classnames_file: str | None) -> Benchmark:
    """A dataset given by path or hub id: its label schema and class names from the label column's
    type (a ClassLabel's names, the distinct strings, or ``--classnames`` for bool and int labels)."""
    split = split_of(spec)
    dataset = load_image_dataset(spec, split=split, home=home)
    given = _read_classnames(classnames_file) if classnames_file else None
    labels, names = infer_label_schema(dataset, None, given)
    return _benchmark(name=spec, source=spec, split=split, classnames=names, templates=DEFAULT_TEMPLATES,
                      labels=labels, image_column=image_column_of(dataset, None))

"""Benchmark, suite and protocol registry of the zero-shot evaluation suite.

A benchmark is data, not a code path (STYLE.md, point 6): where its images come from, which split
and columns to read, and the class names and prompt templates of its zero-shot head. Class names
and templates follow the OpenAI CLIP paper's published prompt lists (CLIP ``data/prompts.md``),
re-ordered where needed to the label order of the chosen dataset; they live as data in
``eval/metadata/``. ImageNet's come from ``open_clip.zero_shot_metadata`` so they are not duplicated
(with its two repeated names made distinct, see below).

Importing this module reads only local files; nothing touches the network.

Example::

    >>> from robust_w2s.eval.registry import get_benchmark, suite_benchmarks, get_protocol
    >>> get_benchmark("cifar10").classnames[:2]
    ('airplane', 'automobile')
    >>> len(suite_benchmarks("paper14")), get_protocol("fare").eps
    (14, (0.00784313725490196, 0.01568627450980392))
"""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from robust_w2s.errors import UnknownNameError, unknown_name
from robust_w2s.labels import LabelSchema

__all__ = [
    "ATTACKS", "BENCHMARKS", "PROTOCOLS", "SUITES", "Benchmark", "Protocol", "UnknownNameError",
    "get_benchmark", "get_protocol", "register", "suite_benchmarks",
]

SOURCE_KINDS = ("hf:", "local:", "embedded:")
ATTACKS = ("pgd", "apgd-ce", "apgd", "autoattack")  # the names `robust-w2s eval --attack` accepts
_METADATA = Path(__file__).with_name("metadata")


@dataclass(frozen=True)
class Benchmark:
    """One zero-shot classification benchmark.

    ``classnames[k]`` is the name of class ``k``, the class index ``labels`` maps the label column's
    values to; ``templates`` are prompts with one ``{}`` for the class name. The text head averages
    the normalized text embeddings of all templates per class (DESIGN.md section 3). A benchmark
    whose names live in its hub repository (clip-benchmark's ``classnames.txt``) has
    ``classnames_file`` set and empty ``classnames`` until :func:`robust_w2s.eval.benchmarks.resolve`
    reads them.
    """

    name: str  # registry key, e.g. "cifar10", "imagenet", "embedded/shape"
    source: str  # "hf:<hub id>", "local:<path>" or "embedded:<task>"
    split: str | None  # the evaluation split, e.g. "test" / "validation" (None: the dataset's only one)
    classnames: tuple[str, ...]  # zero-shot class names in class-index order
    templates: tuple[str, ...]  # prompt templates, each with exactly one "{}"
    image_column: str | None = "image"  # column holding the image (None: the first Image column)
    labels: LabelSchema = LabelSchema()  # the label column and how its values become class indices
    data_files: str | None = None  # hub files of a split, "{split}/*.tar" (None: the repo's own configs)
    classnames_file: str | None = None  # a file of the hub repo holding the class names, one per line
    n_classes: int | None = None  # the class count the schema states (checked against the names)
    variant: str = ""  # where the facts come from / which published variant this is

    def __post_init__(self):
        # Accept lists (JSON, YAML) but store tuples, so entries stay hashable and immutable.
        object.__setattr__(self, "classnames", tuple(self.classnames))
        object.__setattr__(self, "templates", tuple(self.templates))
        # Fail at registration, not hours into a run: a broken entry is an input error.
        if not self.source.startswith(SOURCE_KINDS):
            raise ValueError(f"benchmark {self.name!r}: source {self.source!r} must start with "
                             f"one of {SOURCE_KINDS}")
        if not self.classnames_file and (not self.classnames or len(set(self.classnames)) != len(self.classnames)):
            raise ValueError(f"benchmark {self.name!r}: class names must be non-empty and unique")
        if self.classnames and self.n_classes is not None and len(self.classnames) != self.n_classes:
            raise ValueError(f"benchmark {self.name!r}: {len(self.classnames)} class names for "
                             f"{self.n_classes} classes")
        if not self.templates:
            raise ValueError(f"benchmark {self.name!r}: needs at least one template")
        for t in self.templates:
            rest = t.replace("{}", "", 1)
            if t.count("{}") != 1 or "{" in rest or "}" in rest:  # a stray brace breaks str.format
                raise ValueError(f"benchmark {self.name!r}: template {t!r} must contain exactly one '{{}}'")

    @property
    def label_column(self) -> str:
        return self.labels.column


@dataclass(frozen=True)
class Protocol:
    """An attack protocol: which attacks, at which L-inf radii (pixels in [0,1]), on how many samples."""

    name: str
    eps: tuple[float, ...]  # L-inf radii in [0,1] pixel units
    attacks: tuple[str, ...]  # names among ATTACKS
    pgd_steps: int  # k of PGD-k (APGD and AutoAttack always run their published 100 iterations)
    n_samples: int | None  # size of a random subset of the split drawn with `seed`; None = all of it
    seed: int  # seed of the subset and of attack restarts

    def __post_init__(self):
        object.__setattr__(self, "eps", tuple(float(e) for e in self.eps))
        object.__setattr__(self, "attacks", tuple(self.attacks))
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad or not self.attacks:
            raise ValueError(f"protocol {self.name!r}: attacks must be among {ATTACKS}, got {self.attacks}")
        if not self.eps or not all(0.0 < e <= 1.0 for e in self.eps):
            raise ValueError(f"protocol {self.name!r}: eps must be in (0, 1] pixel units, got {self.eps}")


def _load(filename: str):
    with open(_METADATA / filename, encoding="utf-8") as f:
        return json.load(f)


def _open_clip_zero_shot_metadata():
    """open_clip's ``zero_shot_metadata`` module, read from its file when open_clip is not imported yet:
    the module is plain data, but ``import open_clip`` pulls in torch, torchvision and transformers
    (seconds), which a registry lookup (e.g. ``robust-w2s eval --help``) should not pay for."""
    name = "open_clip.zero_shot_metadata"
    if name in sys.modules:
        return sys.modules[name]
    try:
        package = importlib.util.find_spec("open_clip")  # locates the package without running it
        spec = importlib.util.spec_from_file_location(
            "_rw2s_open_clip_zero_shot_metadata", Path(package.origin).with_name("zero_shot_metadata.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except (AttributeError, ImportError, OSError, TypeError):  # layout changed: take the slow road
        return importlib.import_module(name)


_OPEN_CLIP_META = _open_clip_zero_shot_metadata()
_OPENAI_IMAGENET_NAMES = tuple(_OPEN_CLIP_META.IMAGENET_CLASSNAMES)
_CLASSNAMES = _load("classnames.json")
_TEMPLATES = _load("templates.json")
# The OpenAI ImageNet names repeat "missile" (657, 744) and "sunglasses" (836, 837): identical head
# rows make classes 744 and 837 unpredictable (argmax ties go to the lower index). We rename one of
# each pair after its own WordNet lemma (n04008634 "projectile", n04355933 "sunglass").
_RENAMED = {744: "projectile", 836: "sunglass"}
_IMAGENET_NAMES = tuple(_RENAMED.get(i, c) for i, c in enumerate(_OPENAI_IMAGENET_NAMES))
# open_clip stores the 80 OpenAI ImageNet prompts as callables; "{}" round-trips them to strings.
_IMAGENET_TEMPLATES = tuple(t("{}") for t in _OPEN_CLIP_META.OPENAI_IMAGENET_TEMPLATES)
_TIMM_INFO = Path(importlib.util.find_spec("timm").origin).with_name("data") / "_info"


def _label_ids(reference: str) -> tuple[str, ...]:
    """String label ids named in a schema: ``timm:FILE`` is timm's ``data/_info/FILE.txt``."""
    kind, _, name = reference.partition(":")
    if kind != "timm":
        raise ValueError(f"unknown label id list {reference!r}")
    return tuple((_TIMM_INFO / f"{name}.txt").read_text().split())


def _benchmark_from_schema(name: str, schema: dict) -> Benchmark:
    """A registry entry from its schema in eval/metadata/datasets.json (see that file's _doc)."""
    label = dict(schema["label"])
    if isinstance(label.get("ids"), str):
        label["ids"] = _label_ids(label["ids"])
    templates = schema.get("templates", name)
    if schema.get("classnames"):
        classnames = ()
    elif name in ("imagenet", "imagenet-sketch"):
        classnames = _IMAGENET_NAMES
    elif name == "imagenet-r":  # ImageNet's names of the 200 ImageNet-R classes (sorted WordNet ids)
        imagenet_ids = _label_ids("timm:imagenet_synsets")
        classnames = tuple(_IMAGENET_NAMES[imagenet_ids.index(i)] for i in label["ids"])
    else:
        classnames = _CLASSNAMES[name]
    return Benchmark(
        name, f"hf:{schema['hub']}", schema["split"], classnames,
        _IMAGENET_TEMPLATES if templates in ("imagenet", "imagenet-r", "imagenet-sketch") else _TEMPLATES[templates],
        image_column=schema["image"], labels=LabelSchema(**label),
        data_files="{split}/*.tar" if schema["format"] == "webdataset" else None,
        classnames_file=schema.get("classnames"), n_classes=schema["n_classes"], variant=schema["source"])


SCHEMAS = {name: schema for name, schema in _load("datasets.json").items() if not name.startswith("_")}
_ENTRIES = tuple(_benchmark_from_schema(name, schema) for name, schema in SCHEMAS.items())

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _ENTRIES}

SUITES: dict[str, tuple[str, ...]] = {
    # Adv-W2S's 14 zero-shot datasets, the FARE / RobustVLM evaluation set in its variants: ImageNet
    # from the hub, the other 13 from clip-benchmark's webdatasets (VTAB splits and class lists for
    # Caltech101, Pets, Flowers, DTD, EuroSAT, PCAM, CIFAR), as CLIP_benchmark reads them.
    "paper14": ("imagenet", "cb/caltech101", "cb/stanford-cars", "cb/cifar10", "cb/cifar100", "cb/dtd",
                "cb/eurosat", "cb/fgvc-aircraft", "cb/flowers102", "cb/imagenet-r", "cb/imagenet-sketch",
                "cb/pcam", "cb/oxford-pets", "cb/stl10"),
    # TeCoA's ImageNet + 15 zero-shot datasets (Mao et al., ICLR 2023): its evaluation list minus
    # HatefulMemes, as in the 16-dataset list of TTC (CVPR 2025), which is built on TeCoA's code.
    # TeCoA read torchvision's datasets: these are the hub copies of the same (non-VTAB) splits.
    "tecoa16": ("cifar10", "cifar100", "stl10", "imagenet", "caltech101", "caltech256", "oxford-pets",
                "flowers102", "fgvc-aircraft", "stanford-cars", "sun397", "country211", "food101", "eurosat",
                "dtd", "pcam"),
}

PROTOCOLS: dict[str, Protocol] = {
    # TeCoA: PGD at eps = 1/255 on full test sets; 10 steps, as follow-ups that reuse its code (TTC) do.
    "tecoa": Protocol("tecoa", (1 / 255,), ("pgd",), pgd_steps=10, n_samples=None, seed=0),
    # FARE (Schlarmann et al., ICML 2024): APGD-CE + APGD-T at 2/255 and 4/255 on 1000 samples.
    "fare": Protocol("fare", (2 / 255, 4 / 255), ("apgd",), pgd_steps=10, n_samples=1000, seed=0),
    # Adv-W2S's headline numbers: standard AutoAttack (APGD 100 it., FAB-T, Square) at 2/255.
    "autoattack": Protocol("autoattack", (2 / 255,), ("autoattack",), pgd_steps=10, n_samples=1000, seed=0),
}


def register(benchmark: Benchmark) -> None:
    """Add `benchmark` to BENCHMARKS, replacing any entry of the same name.

    Used at runtime for tasks that exist only then, e.g. the embedded world's
    ``register(Benchmark("embedded/shape", "embedded:shape", "test", names, templates))``.
    """
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"register() expects a Benchmark, got {type(benchmark).__name__}")
    BENCHMARKS[benchmark.name] = benchmark


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`; an UnknownNameError suggesting close names otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise unknown_name("benchmark", name, BENCHMARKS) from None


def suite_benchmarks(name: str) -> list[Benchmark]:
    """The benchmarks of suite `name`, in suite order; an UnknownNameError listing the suites otherwise."""
    if name not in SUITES:
        raise unknown_name("suite", name, SUITES)
    return [get_benchmark(b) for b in SUITES[name]]


def get_protocol(name: str) -> Protocol:
    """The attack protocol `name` (tecoa, fare, autoattack); an UnknownNameError otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise unknown_name("protocol", name, PROTOCOLS) from None

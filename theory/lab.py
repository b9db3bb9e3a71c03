"""The theory lab's runner: the registry of experiments, typed ``--set`` overrides, and the files a
run writes.

    DIR/NAME.json        config (with its seed), seconds, every prediction with verdict and numbers, data
    DIR/NAME-*.png       the experiment's plots

``run_all`` writes those for every experiment under DIR/theory/ and the report DIR/theory.md.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import tempfile
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from robust_w2s.errors import UserError, unknown_name

from . import feature_elicitation, linear_to_nonlinear, mechanisms
from .records import Prediction, config_record, write_atomic
from .report import write_report


@dataclass(frozen=True)
class Experiment:
    """One paper's experiment. ``module`` provides ``run(config, progress) -> data``,
    ``predictions(config, data) -> [Prediction]`` and ``plot(config, data, out_dir, prefix) -> [Path]``;
    its docstring is the setup the report shows."""
    name: str
    paper: str
    config: type
    module: types.ModuleType


EXPERIMENTS = {experiment.name: experiment for experiment in (
    Experiment("linear-to-nonlinear", "Oh, Song and Yun, *From linear to nonlinear: provable weak-to-strong "
               "generalization through feature learning*, NeurIPS 2025 (arXiv:2510.24812)",
               linear_to_nonlinear.LinearToNonlinearConfig, linear_to_nonlinear),
    Experiment("mechanisms", "Moniri and Hassani, *On the mechanisms of weak-to-strong generalization: a "
               "theoretical perspective*, 2025 (arXiv:2505.18346)", mechanisms.MechanismsConfig, mechanisms),
    Experiment("feature-elicitation", "Awano and Suzuki, *The mechanism of weak-to-strong generalization: feature "
               "elicitation from latent knowledge*, 2026 (arXiv:2605.12908)",
               feature_elicitation.FeatureElicitationConfig, feature_elicitation),
)}


@dataclass(frozen=True)
class Result:
    """What one experiment run produced: its JSON file's content, its setup text and its figures."""
    experiment: str
    paper: str
    setup: str          # the experiment module's docstring: the setting, the constants we chose
    config: dict
    seconds: float
    predictions: list[Prediction]
    data: dict
    figures: list[Path]


def get_experiment(name: str, allow_all: bool = True) -> Experiment:
    """The experiment ``name``; a UserError listing the valid names ("all" among them where the
    command line accepts it) otherwise."""
    if name not in EXPERIMENTS:
        raise unknown_name("theory experiment", name, [*EXPERIMENTS, *(["all"] if allow_all else [])])
    return EXPERIMENTS[name]


def check_output_dir(path: Path) -> Path:
    """``path`` as a folder for results: a UserError if it, or one of its parents, is not a folder."""
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"--output-dir {path}: {folder} exists and is not a folder")
            if not os.access(folder, os.W_OK):
                raise UserError(f"--output-dir {path}: {folder} is not writable")
            break
    return path


def parse_overrides(config, overrides: typing.Sequence[str]):
    """``config`` (a frozen dataclass) with each ``key=value`` of ``overrides`` applied, the value
    parsed as its field's type (int, float, bool, str, or a comma-separated tuple of int or float;
    never evaluated). ``a.b=value`` reaches field b of the nested config a. A bad override is a
    UserError naming the valid keys or the expected type; the config's own checks run again."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise UserError(f"--set {override!r}: expected key=value, e.g. seed=1")
        config = _replace(config, key.strip().split("."), text.strip(), "")
    return config


def _replace(config, path: list[str], text: str, prefix: str):
    fields = [field.name for field in dataclasses.fields(config)]
    name = path[0]
    if name not in fields:
        raise unknown_name("setting", prefix + name, [prefix + field for field in fields])
    current = getattr(config, name)
    if dataclasses.is_dataclass(current):
        if len(path) == 1:
            raise UserError(f"--set {prefix}{name}: a section; set one of its keys, e.g. "
                            f"{prefix}{name}.{dataclasses.fields(current)[0].name}=...")
        value = _replace(current, path[1:], text, f"{prefix}{name}.")
    elif len(path) > 1:
        raise UserError(f"--set {prefix}{'.'.join(path)}: {prefix}{name} is a single value, not a section")
    else:
        value = _parse(text, typing.get_type_hints(type(config))[name], prefix + name)
    return dataclasses.replace(config, **{name: value})


def _parse(text: str, hint, name: str):
    """``text`` as type ``hint``; a UserError saying what was expected otherwise."""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        parts = [part.strip() for part in text.split(",")]
        try:
            if not all(parts):
                raise UserError("an empty item")
            return tuple(_parse(part, item, name) for part in parts)
        except UserError:
            raise UserError(f"--set {name}={text}: expected a comma-separated list of {item.__name__}, "
                            f"e.g. 1,2,3") from None
    if hint is bool:
        if text.lower() not in ("true", "false"):
            raise UserError(f"--set {name}={text}: expected true or false")
        return text.lower() == "true"
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise UserError(f"--set {name}={text}: expected {'an integer' if hint is int else 'a number'}") from None
    return text


def run_experiment(name: str, overrides: typing.Sequence[str] = (), output_dir: str | os.PathLike = "runs/theory",
                   progress: bool = True) -> Result:
    """Run experiment ``name`` with ``overrides``; write DIR/NAME.json and DIR/NAME-*.png."""
    experiment = get_experiment(name)
    config = parse_overrides(experiment.config(), overrides)
    output = check_output_dir(Path(output_dir))
    output.mkdir(parents=True, exist_ok=True)
    # The experiments' tensors are small: with more than one thread, torch spends more time
    # synchronizing its threads than computing. One thread, restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.time()
    try:
        data = experiment.module.run(config, progress=progress)
    finally:
        torch.set_num_threads(threads)
    found = experiment.module.predictions(config, data)
    # Figures are drawn into a staging folder and moved in only once everything has succeeded: a run
    # that fails never leaves a mix of old and new files.
    staging = Path(tempfile.mkdtemp(dir=output, prefix=f".{name}."))
    try:
        drawn = experiment.module.plot(config, data, staging, name)
        seconds = time.time() - started   # computing, checking and plotting
        payload = json.dumps({
            "experiment": name, "paper": experiment.paper, "config": config_record(config), "seed": config.seed,
            "seconds": round(seconds, 1), "predictions": [dataclasses.asdict(p) for p in found],
            "figures": [figure.name for figure in drawn], "data": data}, indent=1, allow_nan=False)
        figures = []
        for figure in drawn:
            os.chmod(figure, 0o666 & ~_umask())
            os.replace(figure, output / figure.name)
            figures.append(output / figure.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_atomic(output / f"{name}.json", payload)
    return Result(name, experiment.paper, inspect.getdoc(experiment.module), config_record(config), seconds,
                  found, data, figures)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def run_all(overrides: typing.Sequence[str] = (), output_dir: str | os.PathLike = "docs", command: str = "",
            progress: bool = True) -> Path:
    """Every experiment, into DIR/theory/, and the report DIR/theory.md. Each override names its
    experiment first: ``mechanisms.seeds=5``, ``linear-to-nonlinear.d=200``."""
    grouped: dict[str, list[str]] = {name: [] for name in EXPERIMENTS}
    for override in overrides:
        key, equals, value = override.partition("=")
        name, dot, rest = key.partition(".")
        if not dot:
            raise UserError(f"--set {override!r}: with 'all', name the experiment first, e.g. mechanisms.seeds=5")
        get_experiment(name, allow_all=False)
        grouped[name].append(rest + equals + value)
    for name, own in grouped.items():   # every override is checked before the first experiment runs
        parse_overrides(EXPERIMENTS[name].config(), own)
    check_output_dir(Path(output_dir) / "theory")
    started = time.time()
    results = [run_experiment(name, own, Path(output_dir) / "theory", progress) for name, own in grouped.items()]
    return write_report(results, Path(output_dir), command, time.time() - started)

"""Typed settings of an alignment run; YAML files and ``--set a.b=value`` override the defaults.

The defaults are the embedded world's budget (about a minute on 2 CPU cores), so a config file
only names what differs. Unknown keys are errors with a suggestion; values are type-checked.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError, unknown_name
from ..layout import model_spec
from .methods import MethodSettings


@dataclass
class DataSettings:
    dataset: str = "embedded:alignment"  # alignment images: embedded:SPLIT, hf:ID[:SPLIT] or local:PATH
    image_column: str = "image"          # column holding the images
    label_column: str = "label"          # read ONLY by methods that declare labels (tecoa, pmg-aft)
    classnames: list[str] | None = None  # class names of the alignment task; None: the world's, else ClassLabel
    templates: list[str] | None = None   # prompt templates; None: the world's, else "a photo of a {}."
    workers: int = 0                     # DataLoader worker processes decoding images (0: in the loop)


@dataclass
class AttackSettings:
    eps: float | str = "world"           # Linf radius of the student attack; "world": world.json's epsilon
    steps: int = 3                       # m: PGD steps of the student attack
    alpha: float | str | None = None     # PGD step size; None: 2.5 * eps / steps
    start_noise_std: float = 0.001       # PGD starts at x + std * N(0, I) (DESIGN.md section 4)
    refine_eps: float | str = "world"    # IAR: radius of the teacher's inverse-adversarial ball
    refine_steps: int = 2                # n: PGD descent steps of the teacher refinement
    refine_alpha: float | str | None = None  # refinement step size; None: 2.5 * refine_eps / refine_steps
    precision: str = "auto"              # forwards of every training attack (student PGD, IAR, baselines'):
    # "bf16" autocast with fp32 loss and input gradient, "fp32", or "auto": bf16 on CUDA, fp32 on CPU
    # (on CPUs bf16 autocast is slower, and the embedded world's numbers stay fp32's; docs/precision.md)


@dataclass
class OptimSettings:
    lr: float = 3e-5                     # peak AdamW learning rate of the student's image tower
    weight_decay: float = 0.1            # AdamW decay; biases, norms and embeddings excluded (timm)
    warmup_steps: int = 10               # linear warm-up steps, then cosine decay to min_lr
    min_lr: float = 0.0                  # learning rate at the end of the cosine
    grad_clip: float = 1.0               # max global gradient norm (0: no clipping)
    ema_decay: float = 0.0               # EMA of the student's weights (timm ModelEmaV3); 0: off


@dataclass
class TrainSettings:
    steps: int = 100                     # optimizer steps
    batch_size: int = 64                 # GLOBAL batch: split evenly over DDP processes
    seed: int = 0                        # seeds data order, attack starts and the global RNG
    checkpoint_every: int = 50           # write checkpoint/ and state/ every N steps (and at the end)
    eval_every: int = 50                 # zero-shot check every N steps (0: only at the end)
    log_every: int = 1                   # JSONL log line every N steps
    device: str = "auto"                 # "auto" (cuda if available), "cpu", "cuda"
    bf16: bool = True                    # bf16 autocast for the update's forward on GPU (attacks: attack.precision)
    grad_checkpointing: bool = False     # recompute the student image tower's activations in each backward:
    # less activation memory for one more forward per gradient pass (docs/hardware.md: the CPU cost; GPU rows to measure)


@dataclass
class CheckSettings:
    tasks: list[str] = field(default_factory=lambda: ["shape", "size-shape", "textured-shape"])
    # ^ embedded-world tasks for the periodic zero-shot check (test splits, never the alignment set)
    n_samples: int = 64                  # images per task
    pgd_steps: int = 5                   # PGD-k of the check's attack, at attack.eps, step eps/4


@dataclass
class AlignConfig:
    method: MethodSettings = field(default_factory=MethodSettings)  # objective and its switches
    teacher: str = model_spec("weak-robust")  # frozen weak teacher: a model spec (DESIGN.md section 8)
    teachers: list[str] = field(default_factory=list)  # several weak teachers: read by the guidances
    # that combine them (method.guidance average or raven), in this order (teacher_weight_0, 1, ...)
    student: str = model_spec("strong")       # strong student: its image tower trains
    data: DataSettings = field(default_factory=DataSettings)
    attack: AttackSettings = field(default_factory=AttackSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    check: CheckSettings = field(default_factory=CheckSettings)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> AlignConfig:
    """Defaults, then the YAML file at ``path``, then ``key.sub=value`` overrides (YAML values)."""
    config = AlignConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise UserError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of settings at the top level")
        apply(config, data)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise UserError(f"--set {override!r}: expected key=value, e.g. optim.lr=1e-4")
        nested: dict = {}
        *parents, last = key.strip().split(".")
        cursor = nested
        for part in parents:
            cursor = cursor.setdefault(part, {})
        try:
            cursor[last] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as error:
            raise UserError(f"--set {override!r}: invalid YAML value ({str(error).splitlines()[0]})") from None
        apply(config, nested)
    check_values(config)
    return config


def _at_least(low: int):
    return (lambda value: value >= low), f">= {low}"


POSITIVE = (lambda value: value > 0), "> 0"
FRACTION = (lambda value: 0 <= value <= 1), "in [0, 1]"
# The numbers a setting may take, beyond its type: (predicate, what it says). The loop and the
# optimizers would fail later with a traceback, or worse silently train with a NaN learning rate.
LIMITS = {
    "method.beta": FRACTION, "method.beta_warmup": FRACTION, "method.agft_temperature": POSITIVE,
    "method.fare_warmup_steps": _at_least(0), "method.raven.lr": _at_least(0), "method.raven.freeze": FRACTION,
    "method.raven.agreement": FRACTION, "method.graph.iterations": _at_least(0),
    "method.graph.neighbours": _at_least(1), "method.graph.alpha": ((lambda value: 0 <= value < 1), "in [0, 1)"),
    "method.pik.holdout": ((lambda value: 0 <= value < 1), "in [0, 1)"), "method.pik.threshold": FRACTION,
    "data.workers": _at_least(0),
    "attack.steps": _at_least(0), "attack.refine_steps": _at_least(0), "attack.start_noise_std": _at_least(0),
    "optim.lr": POSITIVE, "optim.weight_decay": _at_least(0), "optim.warmup_steps": _at_least(0),
    "optim.min_lr": _at_least(0), "optim.grad_clip": _at_least(0),
    "optim.ema_decay": ((lambda value: 0 <= value < 1), "in [0, 1)"),
    "train.steps": _at_least(1), "train.batch_size": _at_least(1), "train.checkpoint_every": _at_least(1),
    "train.eval_every": _at_least(0), "train.log_every": _at_least(1),
    "check.n_samples": _at_least(1), "check.pgd_steps": _at_least(0),
}


def check_values(config: AlignConfig) -> None:
    """Raise a one-line UserError for the first setting outside its ``LIMITS`` (or not finite)."""
    for key, (allowed, text) in LIMITS.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if not math.isfinite(value) or not allowed(value):
            raise UserError(f"{key} must be {text}, got {value!r}")


# Keys of earlier releases: a config that uses one is told what replaced it.
RETIRED_KEYS = {"method.eur": "method.reweighting (eur: true -> eur, false -> beta)",
                "method.iar": "method.guidance (iar: true -> iar, false -> teacher)"}


def apply(target, values: dict, prefix: str = "") -> None:
    """Set ``values`` (nested dicts) onto the dataclass ``target``, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for key, value in values.items():
        name = f"{prefix}{key}"
        if name in RETIRED_KEYS:
            raise UserError(f"config key {name!r} was replaced by {RETIRED_KEYS[name]}")
        if key not in fields:
            raise unknown_name("config key", name, [f"{prefix}{field_name}" for field_name in fields])
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"config key {name!r} is a section: give a mapping, not {value!r}")
            apply(current, value, prefix=f"{name}.")
        else:
            setattr(target, key, coerce(value, hints[key], name))


def coerce(value, hint, name: str):
    """``value`` as type ``hint`` (bool, int, float, str, list[str], unions, None), else UserError."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    for option in options:
        converted = _convert(value, option)
        if converted is not _FAIL:
            return converted
    expected = " or ".join(getattr(o, "__name__", str(o)).replace("NoneType", "null") for o in options)
    raise UserError(f"config key {name!r}: expected {expected}, got {value!r}")


_FAIL = object()


def _convert(value, option):
    if option is type(None):
        return None if value is None else _FAIL
    if typing.get_origin(option) is list:
        if not isinstance(value, (list, tuple)):
            return _FAIL
        items = [_convert(item, typing.get_args(option)[0]) for item in value]
        return _FAIL if any(item is _FAIL for item in items) else items
    if option is bool:
        return value if isinstance(value, bool) else _FAIL
    if isinstance(value, bool):
        return _FAIL  # true is not a number or a name
    if option is int:
        return value if isinstance(value, int) else _FAIL
    if option is float:
        # PyYAML reads 1e-4 (no dot) as a string: accept any text that is a plain number.
        try:
            return float(value) if isinstance(value, (int, float, str)) else _FAIL
        except ValueError:
            return _FAIL
    if option is str:
        return value if isinstance(value, str) else _FAIL
    return _FAIL


def to_dict(config: AlignConfig) -> dict:
    """The config as plain JSON-able data (recorded in the run's state and checkpoint)."""
    return dataclasses.asdict(config)

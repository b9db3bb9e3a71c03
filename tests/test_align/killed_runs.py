"""Kill a training at chosen moments and resume it; compare two run folders bit for bit.

Shared by the resume tests (one process, data workers) and the DDP test (spawned gloo processes,
which cannot use pytest's monkeypatch: the patches here are undone by hand).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from robust_w2s.align import loop
from robust_w2s.align.loop import train
from robust_w2s.checkpoints import WEIGHTS_FILE


class Killed(Exception):
    pass


def train_with_kills(config, folder: Path, home, kills: list[tuple[str, int]]) -> None:
    """Train ``config`` into ``folder``, dying at each of ``kills`` in turn and resuming with
    ``resume=True`` after each. A kill is ("step", k): at the start of step k + 1 (the steps since
    the last state are lost and redone), or ("saved", k): right after checkpoint/ and state/ of step
    k are written. Every process of a DDP run dies at the same moment."""
    real_step, real_save = loop.train_step, loop.save_run
    try:
        for number, (where, at) in enumerate([*kills, ("never", 0)]):
            def step(*args, step, **kwargs):
                if (where, at) == ("step", step):
                    raise Killed
                return real_step(*args, step=step, **kwargs)

            def save(*args, step, **kwargs):
                real_save(*args, step=step, **kwargs)
                if (where, at) == ("saved", step):
                    raise Killed

            loop.train_step, loop.save_run = step, save
            try:
                train(config, folder, home=home, resume=number > 0)
            except Killed:
                assert where != "never"
            else:
                assert where == "never", f"the run ended before its kill {where} {at}"
    finally:
        loop.train_step, loop.save_run = real_step, real_save


def assert_same_run(a: Path, b: Path) -> None:
    """Run folders ``a`` and ``b`` hold bit-identical checkpoints and states (weights, EMA, optimizer,
    schedule, data position, every rank's RNG) and the same training log: the same records of steps
    and checks, timing (``images_per_s``) aside; a resume's own start line is not compared."""
    for file in ("checkpoint/" + WEIGHTS_FILE, "state/student.safetensors", "state/ema.safetensors"):
        if (a / file).is_file() or (b / file).is_file():
            _same(load_file(a / file), load_file(b / file), file)
    _same(*(torch.load(run / "state" / "train_state.pt", weights_only=True) for run in (a, b)), "train_state")

    def records(run):
        lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in line.items() if k != "images_per_s"} for line in lines
                if line.get("event") != "start" or line["step"] == 0]
    _same(records(a), records(b), "log.jsonl")


def _same(x, y, where: str) -> None:
    if isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for key in x:
            _same(x[key], y[key], f"{where}.{key}")
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _same(u, v, f"{where}[{i}]")
    elif isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y), where
    else:
        assert x == y, (where, x, y)

"""A run's folder and what ``--resume`` needs: ``DIR/checkpoint/``, ``DIR/state/`` and ``DIR/log.jsonl``.

``state/`` holds everything to continue a killed run by itself (the student's weights included),
so a kill between writing ``checkpoint/`` and ``state/`` can never pair weights of one step with
an optimizer of another:
    student.safetensors   the student's weights at ``step``
    ema.safetensors       the EMA weights (only when EMA is on)
    train_state.pt        optimizer, scheduler, step, data position, RNG states of every rank,
                          RAVEN's teacher weights and their optimizer (None for other methods)
                          (tensors and plain types only: read back with ``weights_only=True``)
    config.json           the run's config, to refuse resuming with different settings
``log.jsonl`` is appended line by line; on resume, the lines past the resumed step are dropped.

Killed at any moment, a run resumes exactly: ``checkpoint/`` and ``state/`` are each replaced in
one atomic step (:func:`robust_w2s.checkpoints.atomic_folder`), ``state/`` holds every process's
RNG states as they were after the step it saved (the loop draws nothing else from the global RNG:
see ``setup.batches``), and a log line cut by the kill is dropped.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as torch_dist
from safetensors.torch import load_file, save_file

from ..checkpoints import atomic_folder, atomic_write_text, recover_folder, save_checkpoint
from ..errors import UserError
from .config import AlignConfig, to_dict

# Settings that may change on --resume: they do not change the trajectory of the weights.
RESUMABLE_CHANGES = ("train.device", "train.eval_every", "train.log_every", "train.grad_checkpointing", "data.workers",
                     "check.")


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """This process's RNG states: the named generators plus torch's global CPU (and CUDA) RNG."""
    state = {name: gen.get_state() for name, gen in generators.items()}
    state["torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict, generators: dict[str, torch.Generator]) -> None:
    for name, gen in generators.items():
        gen.set_state(state[name])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_state(folder: Path, *, model, ema, optimizer, scheduler, step: int, data_position: dict,
               rng: list[dict], config: dict, mixture=None) -> None:
    """Write ``folder`` (see the module docstring) atomically. ``rng`` has one entry per rank."""
    with atomic_folder(folder) as staging:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  staging / "student.safetensors")
        if ema is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()},
                      staging / "ema.safetensors")
        with open(staging / "train_state.pt", "wb") as handle:  # a file object: a full disk keeps its errno
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "data_position": data_position, "rng": rng,
                        "teacher_mixture": None if mixture is None else mixture.state()}, handle)
        (staging / "config.json").write_text(json.dumps(config, indent=2))


def _changed_settings(saved: dict, config: dict) -> list[str]:
    """Settings of the saved run that differ from ``config`` and would change its trajectory."""
    return [key for key in _diff(saved, config) if not key.startswith(RESUMABLE_CHANGES)]


def can_resume(folder: Path, config: AlignConfig) -> bool:
    """Whether ``folder`` (a run's state/) holds a state that ``config`` may continue."""
    recover_folder(folder)
    if not (folder / "train_state.pt").is_file():
        return False
    return not _changed_settings(json.loads((folder / "config.json").read_text()), to_dict(config))


def load_state(folder: Path, config: dict) -> dict:
    """Read ``folder`` back; a missing folder or a config that changed the trajectory is a UserError."""
    recover_folder(folder)
    if not (folder / "train_state.pt").is_file():
        raise UserError(f"--resume: no training state in {folder} (start without --resume)")
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise _damaged(folder, error) from None
    changed = _changed_settings(saved, config)
    if changed:
        raise UserError(f"--resume with a different config: {changed[0]} was "
                        f"{_lookup(saved, changed[0])!r}, now {_lookup(config, changed[0])!r}")
    try:
        state = torch.load(folder / "train_state.pt", weights_only=True, map_location="cpu")
        state["student"] = load_file(folder / "student.safetensors")
        if (folder / "ema.safetensors").is_file():
            state["ema"] = load_file(folder / "ema.safetensors")
    except Exception as error:  # torch and safetensors raise several types for truncated files
        raise _damaged(folder, error) from None
    return state


def _damaged(folder: Path, error: Exception) -> UserError:
    """The one-line error for a state folder that was edited or damaged after its atomic write."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
    return UserError(f"--resume: {folder} is damaged ({type(error).__name__}: {reason}); start without --resume")


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for key in keys:
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}")
    return out


def _lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def restore(folder: Path, config: AlignConfig, dist, session) -> int:
    """Load weights, optimizer, schedule, EMA and this rank's RNG states from ``folder`` (a run's
    state/) into ``session``; return the step to continue from."""
    state = load_state(folder, to_dict(config))
    if len(state["rng"]) != dist.world_size:
        raise UserError(f"--resume: the run had {len(state['rng'])} processes, now {dist.world_size}")
    optimization = session.optimization
    optimization.model.load_state_dict(state["student"])
    optimization.optimizer.load_state_dict(state["optimizer"])
    optimization.scheduler.load_state_dict(state["scheduler"])
    if optimization.ema is not None:
        optimization.ema.module.load_state_dict(state["ema"])
    if session.models.teacher_mixture is not None:
        session.models.teacher_mixture.load(state["teacher_mixture"])
    restore_rng(state["rng"][dist.rank], session.generators)
    return state["step"]


def save_run(output_dir: Path, config: AlignConfig, dist, session, *, step: int, data_position: dict) -> None:
    """checkpoint/ and state/ at ``step``: every rank gathers its RNG states, rank 0 writes."""
    rng = [rng_state(session.generators)]
    if dist.world_size > 1:
        rng = [None] * dist.world_size
        torch_dist.all_gather_object(rng, rng_state(session.generators))
    if dist.is_main:
        optimization = session.optimization
        extra = {"method": config.method.name, "step": step, "config": to_dict(config)}
        mixture = session.models.teacher_mixture
        if mixture is not None:  # RAVEN's learned weights, by teacher spec
            extra["teacher_weights"] = dict(zip(config.teachers, mixture.weights.tolist()))
        save_checkpoint(optimization.exported, output_dir / "checkpoint", extra=extra)
        save_state(output_dir / "state", model=optimization.model,
                   ema=None if optimization.ema is None else optimization.ema.module,
                   optimizer=optimization.optimizer, scheduler=optimization.scheduler, step=step,
                   data_position=data_position, rng=rng, config=to_dict(config), mixture=mixture)
    if dist.world_size > 1:
        torch_dist.barrier()


class RunLog:
    """log.jsonl, appended line by line. On resume, lines past the resumed step are dropped first:
    the steps after the last state were lost with the kill and run again; so is a last line the
    kill cut short (every line ends with a newline once written)."""

    def __init__(self, path: Path, start: int, enabled: bool, fresh: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [] if fresh or not path.is_file() else path.read_text().split("\n")[:-1]
        kept = [line for number, line in enumerate(lines, 1) if _record(path, number, line).get("step", 0) <= start]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def _record(path: Path, number: int, line: str) -> dict:
    """Line ``number`` of a run's log as a dict; a damaged one is a UserError naming it."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise UserError(f"--resume: {path} line {number} is not a log record ({line[:40]!r}); "
                        "move the log away to resume without it")
    return record

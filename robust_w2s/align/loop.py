"""The alignment training loop: one function, the same for every method.

What differs between methods is data: the inputs a method declares (``methods.INPUTS``), which
:class:`~robust_w2s.align.inputs.StepInputs` computes on demand. The loop never asks which method
runs. Under ``torchrun --nproc_per_node N`` the same function trains with DDP.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist
from tqdm.auto import tqdm

from ..checkpoints import CONFIG_FILE, atomic_write_text, recover_folder, weights_file
from ..errors import UserError
from ..layout import read_world
from .check import ZeroShotCheck
from .config import AlignConfig, check_values
from .inputs import Batch, Models, StepInputs
from .methods import Method, Plan
from .setup import Optimization, batches, prepare, resolve_precision, setup_distributed, update_in_bf16
from .state import RunLog, can_resume, restore, save_run

DEPENDS_ON_FILE = "depends_on"  # train_or_resume: what the run was made for, beyond its config


def train(config: AlignConfig, output_dir: str | os.PathLike, home=None, resume: bool = False) -> Path:
    """Align ``config.student`` by ``config.method``; return the folder of the final checkpoint.

    Writes ``DIR/checkpoint/`` (a checkpoint folder plain open_clip loads), ``DIR/state/`` (what
    ``resume=True`` continues from) and ``DIR/log.jsonl`` (one line per logged step or check).
    """
    output_dir, run = Path(output_dir), config.train
    dist = setup_distributed(run.device)
    plan = Plan.build(config.method)
    _validate(config, dist.world_size)
    world = read_world(home, required=False)
    torch.manual_seed(run.seed + dist.rank)

    # Setup: data (labels only if declared), models, teacher cache, optimizer (setup.prepare).
    session = prepare(config, plan, dist, world=world, home=home)
    check = (ZeroShotCheck.on_world(session.optimization.exported, session.tokenizer, world, config.check,
                                    eps=session.models.attack["eps"], home=home, seed=run.seed)
             if dist.is_main else None)
    # Restored last: whatever the setup draws from the global RNG, the loop continues its saved stream.
    start = restore(output_dir / "state", config, dist, session) if resume else 0
    log = RunLog(output_dir / "log.jsonl", start, enabled=dist.is_main, fresh=not resume)
    models = session.models
    if dist.is_main:
        log.write({"event": "start", "step": start, "method": config.method.name, "world_size": dist.world_size,
                   "device": str(dist.device), "attack_precision": resolve_precision(config.attack.precision, dist.device),
                   "update_bf16": update_in_bf16(config, dist.device),
                   "teacher_entropy_median": None if models.entropy_median is None
                   else float(models.entropy_median), **session.record})

    # The loop: identical for every method.
    stream = batches(session.view, batch_size=run.batch_size, seed=run.seed, dist=dist, start_step=start,
                     workers=config.data.workers)
    bar = tqdm(total=run.steps, initial=start, disable=not dist.is_main, desc=config.method.name, unit="step")
    bf16 = update_in_bf16(config, dist.device)
    try:  # the bar ends its line before an error is printed
        for step, position, items in stream:
            if step >= run.steps:
                break
            tic = time.perf_counter()
            method = plan.at(step)
            batch = Batch.from_loader(items, models, dist.device)

            # Step: the method's loss on its declared inputs, backward, clip, AdamW, schedule, EMA.
            loss, terms, grad_norm = train_step(method, batch, models, session.optimization, step=step,
                                                steps=run.steps, bf16=bf16)
            session.optimization.scheduler.step_update(step + 1)

            # Log: loss and terms averaged over processes, learning rate, throughput.
            done = step + 1
            values = _mean_over_ranks({"loss": loss, "grad_norm": grad_norm, **terms}, dist)
            seconds = time.perf_counter() - tic
            if done % run.log_every == 0 or done == run.steps:
                log.write({"step": done, "method": method.name, **values,
                           "lr": session.optimization.optimizer.param_groups[0]["lr"],
                           "images_per_s": run.batch_size / seconds, "epoch": position["epoch"]})
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k in ("loss", "w")}
                            | {"img/s": f"{run.batch_size / seconds:.0f}"})

            # Zero-shot check (rank 0) and checkpoint + state (all ranks gather RNG, rank 0 writes).
            if check is not None and ((run.eval_every and done % run.eval_every == 0) or done == run.steps):
                log.write({"step": done, "check": check()})
            if done % run.checkpoint_every == 0 or done == run.steps:
                save_run(output_dir, config, dist, session, step=done,
                         data_position={"epoch": position["epoch"], "position": position["position"] + 1})
    finally:
        bar.close()
    return output_dir / "checkpoint"


def train_or_resume(config: AlignConfig, output_dir: str | os.PathLike, home=None, *, depends_on: str = "") -> Path:
    """:func:`train`, continuing from ``DIR/state/`` when a run of the same config was killed there
    (a finished one returns at once); a leftover run of another config is replaced, and so is one
    missing ``checkpoint/`` or ``log.jsonl`` (deleted after it finished: the state cannot give
    them back, so the run is redone).

    ``depends_on`` names what the config does not (e.g. the fingerprint of the world whose models
    and data its specs point to): a run made for another value is replaced, never resumed. For
    single-process callers (the study's jobs, the world build); under torchrun use ``--resume``.
    """
    output_dir = Path(output_dir)
    marker = output_dir / DEPENDS_ON_FILE
    checkpoint = output_dir / "checkpoint"
    recover_folder(checkpoint)
    resumable = (can_resume(output_dir / "state", config) and marker.is_file()
                 and marker.read_text() == depends_on and (output_dir / "log.jsonl").is_file()
                 and (checkpoint / CONFIG_FILE).is_file() and weights_file(checkpoint) is not None)
    if not resumable:
        shutil.rmtree(output_dir, ignore_errors=True)
        output_dir.mkdir(parents=True)
        atomic_write_text(marker, depends_on)
    return train(config, output_dir, home=home, resume=resumable)


def train_step(method: Method, batch: Batch, models: Models, optimization: Optimization, *, step: int,
               steps: int, bf16: bool):
    """One optimizer step of ``method`` on ``batch``: (loss, named terms, gradient norm).

    The per-step schedule update is the caller's. ``bench/align_step.py`` times this function.
    """
    # Forward: the method's loss; its inputs computed on demand (attacks at their own precision).
    model = optimization.model
    model.visual.train()
    with torch.autocast(batch.images.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, terms = method.loss(StepInputs(method, batch, models, step / steps))
    # Update: backward (DDP averages gradients), clip, AdamW step, EMA.
    optimization.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (torch.nn.utils.clip_grad_norm_(model.visual.parameters(), optimization.grad_clip)
                 if optimization.grad_clip > 0 else torch.zeros(()))
    optimization.optimizer.step()
    if models.teacher_mixture is not None:  # weights of the guidance learned through the same loss (RAVEN)
        models.teacher_mixture.step(step / steps)
    if optimization.ema is not None:
        optimization.ema.update(model, step=step + 1)
    return loss, terms, grad_norm


def _validate(config: AlignConfig, world_size: int) -> None:
    run = config.train
    check_values(config)  # a config built in code has not been through load_config
    if run.batch_size % world_size:
        raise UserError(f"train.batch_size {run.batch_size} is not divisible by {world_size} processes")


def _mean_over_ranks(values: dict, dist) -> dict[str, float]:
    """Detached scalars averaged over processes: what a single process on the global batch logs."""
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32).detach().to(dist.device).reshape(())
                           for v in values.values()])
    if dist.world_size > 1:
        torch_dist.all_reduce(stacked)
        stacked /= dist.world_size
    return dict(zip(values, stacked.tolist()))

"""The alignment training loop: one function, the same for every method.

What differs between methods is data: the inputs a method declares (``methods.INPUTS``), which
:class:`~robust_w2s.align.inputs.StepInputs` computes on demand. The loop never asks which method
runs. Under ``torchrun --nproc_per_node N`` the same function trains with DDP.
"""
from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..checkpoints import atomic_write_text, save_checkpoint
from ..errors import UserError
from ..models import eval_transform
from .check import ZeroShotCheck
from .config import AlignConfig, to_dict
from .inputs import Batch, Models, StepInputs, StudentHeads
from .methods import Plan
from .setup import (PixelView, alignment_data, batches, load_frozen, load_student, load_teacher,
                    median_entropy, optimizer_and_schedule, resolve_eps, setup_distributed,
                    teacher_cache, world_record)
from .state import load_state, restore_rng, rng_state, save_state

TEACHER_INPUTS = {"teacher_probs", "teacher_entropy_median", "refined_teacher_probs"}
FROZEN_INPUTS = {"frozen_logits", "frozen_adv_logits", "frozen_features"}
# The student's buffers (text head, normalization) never change: no per-forward sync under DDP.
# torch 2.14 renamed the switch; older versions only know broadcast_buffers.
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def train(config: AlignConfig, output_dir: str | os.PathLike, home=None, resume: bool = False) -> Path:
    """Align ``config.student`` by ``config.method``; return the folder of the final checkpoint.

    Writes ``DIR/checkpoint/`` (a checkpoint folder plain open_clip loads), ``DIR/state/`` (what
    ``resume=True`` continues from) and ``DIR/log.jsonl`` (one line per logged step or check).
    """
    output_dir, run = Path(output_dir), config.train
    dist = setup_distributed(run.device)
    plan = Plan.build(config.method)
    _validate(config, dist.world_size)
    world = world_record(home)
    attack = {"eps": resolve_eps(config.attack.eps, world, "attack.eps"), "steps": config.attack.steps,
              "alpha": config.attack.alpha, "start_noise_std": config.attack.start_noise_std}
    refine = {"eps": resolve_eps(config.attack.refine_eps, world, "attack.refine_eps"),
              "steps": config.attack.refine_steps, "alpha": config.attack.refine_alpha,
              "start_noise_std": config.attack.start_noise_std}
    torch.manual_seed(run.seed + dist.rank)

    # Data: the alignment set, its label column removed unless a method declared labels.
    dataset, classnames, templates = alignment_data(config, plan, world, home)

    # Models: the student's image tower trains; its text tower, the teacher and S0 stay frozen.
    model, tokenizer, classifier = load_student(config.student, home, dist.device, classnames, templates)
    transform = eval_transform(model, normalize=False)
    view = PixelView(dataset, transform, config.data.image_column, config.data.label_column)
    teacher = (load_teacher(config.teacher, home, dist.device, classnames, templates,
                            transform.transforms[0].size) if plan.needs & TEACHER_INPUTS else None)
    frozen = StudentHeads(load_frozen(model, classifier)) if plan.needs & FROZEN_INPUTS else None

    # Teacher cache: p_T(x) of every alignment image, once (the teacher is frozen); EUR's kappa.
    cache = teacher_cache(teacher, view, dist, workers=config.data.workers) if teacher else None
    kappa = median_entropy(cache).to(dist.device) if cache is not None else None

    # Optimizer, schedule and EMA; DDP wraps the student only (attacks use the plain module).
    heads = StudentHeads(classifier)
    optimizer, scheduler = optimizer_and_schedule(model.visual, config.optim, run.steps)
    ema = ModelEmaV3(model, decay=config.optim.ema_decay) if config.optim.ema_decay > 0 else None
    student = heads if dist.world_size == 1 else DistributedDataParallel(
        heads, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
        **_NO_BUFFER_SYNC)
    # Attack starts are drawn on the training device: a CPU draw of a ViT-L batch costs ~0.1 s.
    generators = {"attack": torch.Generator(dist.device).manual_seed(run.seed * 1000 + 2 * dist.rank + 1),
                  "refine": torch.Generator(dist.device).manual_seed(run.seed * 1000 + 2 * dist.rank + 2)}
    models = Models(student, heads, frozen, teacher, kappa, attack, refine, generators["attack"],
                    generators["refine"])

    # Resume: weights, optimizer, schedule, EMA and RNG states of the last state/ folder.
    start = 0
    if resume:
        state = load_state(output_dir / "state", to_dict(config))
        if len(state["rng"]) != dist.world_size:
            raise UserError(f"--resume: the run had {len(state['rng'])} processes, now {dist.world_size}")
        model.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        restore_rng(state["rng"][dist.rank], generators)
        start = state["step"]
    exported = ema.module if ema is not None else model
    check = (ZeroShotCheck.on_world(exported, tokenizer, world, config.check, attack["eps"], home, run.seed)
             if dist.is_main else None)
    log = _Log(output_dir / "log.jsonl", start, enabled=dist.is_main, fresh=not resume)
    if dist.is_main:
        log.write({"event": "start", "step": start, "method": config.method.name, "world_size": dist.world_size,
                   "teacher_entropy_median": None if kappa is None else float(kappa)})

    # The loop: identical for every method.
    bar = tqdm(total=run.steps, initial=start, disable=not dist.is_main, desc=config.method.name, unit="step")
    stream = batches(view, run.batch_size, run.seed, dist, start, config.data.workers)
    bf16 = run.bf16 and dist.device.type == "cuda"
    for step, position, raw in stream:
        if step >= run.steps:
            break
        tic = time.perf_counter()
        method = plan.at(step)
        batch = Batch(images=raw["pixels"].to(dist.device, non_blocking=True),
                      labels=raw["label"].to(dist.device) if "label" in raw else None,
                      teacher_probs=cache[raw["index"]].to(dist.device) if cache is not None else None)

        # Step: the method's loss on its declared inputs, backward, clip, AdamW, schedule, EMA.
        loss, terms, grad_norm = train_step(method, batch, models, model, optimizer, config.optim.grad_clip,
                                            ema, step, run.steps, bf16)
        scheduler.step_update(step + 1)

        # Log: loss and terms averaged over processes, learning rate, throughput.
        done = step + 1
        values = _mean_over_ranks({"loss": loss, "grad_norm": grad_norm, **terms}, dist)
        seconds = time.perf_counter() - tic
        if done % run.log_every == 0 or done == run.steps:
            log.write({"step": done, "method": method.name, **values, "lr": optimizer.param_groups[0]["lr"],
                       "images_per_s": run.batch_size / seconds, "epoch": position["epoch"]})
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k in ("loss", "w")}
                        | {"img/s": f"{run.batch_size / seconds:.0f}"})

        # Zero-shot check (rank 0) and checkpoint + state (all ranks gather RNG, rank 0 writes).
        if check is not None and ((run.eval_every and done % run.eval_every == 0) or done == run.steps):
            log.write({"step": done, "check": check()})
        if done % run.checkpoint_every == 0 or done == run.steps:
            _save(output_dir, config, dist, exported, model, ema, optimizer, scheduler, done,
                  {"epoch": position["epoch"], "position": position["position"] + 1}, generators)
    bar.close()
    return output_dir / "checkpoint"


def train_step(method, batch: Batch, models: Models, model, optimizer, grad_clip: float, ema,
               step: int, steps: int, bf16: bool):
    """One optimizer step of ``method`` on ``batch``: (loss, named terms, gradient norm).

    The per-step schedule update is the caller's. ``bench/align_step.py`` times this function.
    """
    # Forward: the method's loss; its inputs (attacks included, in fp32) computed on demand.
    device_type = batch.images.device.type
    model.visual.train()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        loss, terms = method.loss(StepInputs(method, batch, models, step / steps))
    # Update: backward (DDP averages gradients), clip, AdamW step, EMA.
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = (torch.nn.utils.clip_grad_norm_(model.visual.parameters(), grad_clip)
                 if grad_clip > 0 else torch.zeros(()))
    optimizer.step()
    if ema is not None:
        ema.update(model, step=step + 1)
    return loss, terms, grad_norm


def _validate(config: AlignConfig, world_size: int) -> None:
    run = config.train
    for key, value in (("train.steps", run.steps), ("train.batch_size", run.batch_size),
                       ("train.checkpoint_every", run.checkpoint_every), ("train.log_every", run.log_every)):
        if value < 1:
            raise UserError(f"{key} must be >= 1, got {value}")
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


def _save(output_dir: Path, config, dist, exported, model, ema, optimizer, scheduler, step: int,
          data_position: dict, generators) -> None:
    rng = [rng_state(generators)]
    if dist.world_size > 1:
        rng = [None] * dist.world_size
        torch_dist.all_gather_object(rng, rng_state(generators))
    if dist.is_main:
        extra = {"method": config.method.name, "step": step, "config": to_dict(config)}
        save_checkpoint(exported, output_dir / "checkpoint", extra=extra)
        save_state(output_dir / "state", model=model, ema=None if ema is None else ema.module,
                   optimizer=optimizer, scheduler=scheduler, step=step, data_position=data_position,
                   rng=rng, config=to_dict(config))
    if dist.world_size > 1:
        torch_dist.barrier()


class _Log:
    """log.jsonl, appended line by line. On resume, lines past the resumed step are dropped first:
    the steps after the last state were lost with the kill and run again."""

    def __init__(self, path: Path, start: int, enabled: bool, fresh: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [] if fresh or not path.is_file() else path.read_text().splitlines()
        kept = [line for line in lines if json.loads(line).get("step", 0) <= start]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

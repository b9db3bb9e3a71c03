"""How the embedded world's CLIPs are trained: the training recipes, apart from the stage caching
of :mod:`robust_w2s.world.stages` that decides when to run them.

- :func:`contrastive_pretrain`: a CLIP on its own captioned corpus with open_clip's contrastive loss
  (``ClipLoss``), from scratch (the weak, the strong and the poor weak CLIP) or continued from another
  world model (the outline teacher: the weak CLIP, further pretrained on outline drawings).
- :func:`robust_teacher_config`: the robust weak teacher is the weak CLIP after the alignment
  harness's ``tecoa`` method (the same TeCoA that students get) on the labelled alignment split.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from tqdm.auto import tqdm

from ..align import (AlignConfig, AttackSettings, CheckSettings, DataSettings, MethodSettings, OptimSettings,
                     TrainSettings, optimizer_and_schedule)
from ..layout import ALIGNMENT_SPLIT, EMBEDDED, model_spec
from ..zeroshot import ZeroShotClassifier
from .tasks import ALIGNMENT_TASK, TASKS, corpus_arrays

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")


@dataclass(frozen=True)
class PretrainSettings:
    architecture: str            # open_clip config name in world/model_configs/
    corpus: str                  # key of tasks.CORPORA
    corpus_size: int             # captioned images generated for this model
    steps: int                   # optimizer steps
    batch_size: int = 256        # images (and captions) per contrastive batch
    lr: float = 1e-3             # peak AdamW learning rate after warm-up, then cosine to 0
    warmup: int = 50             # warm-up steps
    weight_decay: float = 0.1    # AdamW decay (timm excludes biases and norms)
    start: str = ""              # world model whose weights it continues from ("": from scratch)


@dataclass(frozen=True)
class RobustSettings:
    # TeCoA's training radius, below the world's 4/255: trained at 4/255 the small weak model lost
    # outline drawings (22.6% clean, under 2x chance); at 3/255 it kept 30.2% there and still held
    # 28.6% PGD-20 accuracy at 4/255 on average over tasks, 3.9x the strong model's (measured with
    # the world's former TeCoA loop; with the harness's, issue 9: 38.4% and 34.8%, 4.2x).
    epsilon: float = 3 / 255
    steps: int = 300             # TeCoA optimizer steps
    batch_size: int = 128        # labelled alignment images per step
    lr: float = 2e-4             # peak AdamW learning rate of the image tower (warm-up: a tenth of the steps)
    pgd_steps: int = 3           # PGD steps of the training attack (step size 2.5 * eps / steps)


def contrastive_pretrain(settings: PretrainSettings, seed: int, image_size: int, start=None):
    """An open_clip model trained with CLIP's contrastive loss on its corpus: (model, tokenizer).
    It starts fresh, or from ``start`` (a model of ``settings.architecture``, trained in place)."""
    torch.manual_seed(seed)
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    model = start
    if model is None:
        model = open_clip.create_model(settings.architecture)
        model.rw2s_model_cfg = open_clip.get_model_config(settings.architecture)
    tokenizer = open_clip.get_tokenizer(settings.architecture)
    images, captions = corpus_arrays(settings.corpus, settings.corpus_size, seed, image_size)
    images = torch.from_numpy(images).permute(0, 3, 1, 2)
    tokens = tokenizer(captions)
    # The classifier is the one place that normalizes pixels; its (dummy) text head is unused here.
    classifier = ZeroShotClassifier(model, tokenizer, text_head=torch.zeros(1, 1))
    optim = OptimSettings(lr=settings.lr, weight_decay=settings.weight_decay, warmup_steps=settings.warmup)
    optimizer, scheduler = optimizer_and_schedule(model, optim, settings.steps)
    loss_fn = open_clip.ClipLoss()
    order = torch.Generator().manual_seed(seed)
    model.train()
    progress = tqdm(range(settings.steps), desc=f"pretrain {settings.corpus}", unit="step")
    for step in progress:
        batch = torch.randint(0, len(images), (settings.batch_size,), generator=order)
        image_features = classifier.image_features(images[batch].float() / 255)
        text_features = model.encode_text(tokens[batch], normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(step + 1)
        progress.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval(), tokenizer


def robust_teacher_config(settings: RobustSettings, seed: int) -> AlignConfig:
    """The alignment run that makes the weak CLIP robust: ``tecoa`` on the labelled alignment split,
    at ``settings.epsilon``, with the alignment task's class names and prompts, on the CPU (so that
    the world is the same on every machine)."""
    task = TASKS[ALIGNMENT_TASK]
    return AlignConfig(
        method=MethodSettings(name="tecoa"),
        student=model_spec("weak"),
        teacher="",  # tecoa reads no teacher
        data=DataSettings(dataset=f"{EMBEDDED}{ALIGNMENT_SPLIT}", classnames=list(task.classnames),
                          templates=list(task.templates)),
        attack=AttackSettings(eps=settings.epsilon, steps=settings.pgd_steps),
        optim=OptimSettings(lr=settings.lr, warmup_steps=settings.steps // 10),
        train=TrainSettings(steps=settings.steps, batch_size=settings.batch_size, seed=seed, device="cpu",
                            eval_every=0),
        check=CheckSettings(tasks=[]),
    )

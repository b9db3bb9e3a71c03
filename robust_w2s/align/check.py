"""The periodic zero-shot check during training: clean and PGD accuracy on a few held-out tasks.

A quick signal only (small subsets, few PGD steps); the real numbers come from ``robust-w2s eval``.
The alignment package does not import ``robust_w2s.eval`` (a contract of .importlinter).
"""
from __future__ import annotations

import torch
from torch import nn

from ..attacks import evaluation_pgd
from ..data import iterate_batches, load_image_dataset
from ..errors import unknown_name
from ..layout import EMBEDDED, Home
from ..models import eval_transform
from ..zeroshot import ZeroShotClassifier, accuracy


class ZeroShotCheck:
    """Clean and PGD-k accuracy of ``model`` on the first ``n_samples`` test images of each task.

    ``tasks`` maps task name -> (class names, templates); the text heads are built once, since
    the text tower is frozen. The attack's generator is re-seeded per call, so every check of a
    run attacks with the same random starts and checks are comparable across steps.
    """

    def __init__(self, model: nn.Module, tokenizer, tasks: dict, *, n_samples: int, eps: float,
                 pgd_steps: int, home: Home, seed: int):
        device = next(model.parameters()).device
        transform = eval_transform(model, normalize=False)
        self.eps, self.pgd_steps, self.seed = eps, pgd_steps, seed
        self.tasks = {}
        for task, (classnames, templates) in tasks.items():
            dataset = load_image_dataset(f"{EMBEDDED}{task}", home=home)
            dataset = dataset.select(range(min(n_samples, len(dataset))))
            pixels, labels = zip(*iterate_batches(dataset, transform, batch_size=n_samples))
            self.tasks[task] = (ZeroShotClassifier(model, tokenizer, classnames, templates),
                                torch.cat(pixels).to(device), torch.cat(labels).to(device))

    @classmethod
    def on_world(cls, model: nn.Module, tokenizer, world: dict | None, settings, *, eps: float, home: Home,
                 seed: int) -> "ZeroShotCheck | None":
        """The check of ``settings`` (CheckSettings) on the embedded world's tasks; None when the
        check is off (no tasks) or no world is built."""
        if world is None or not settings.tasks:
            return None
        for task in settings.tasks:
            if task not in world["tasks"]:
                raise unknown_name("check.tasks task", task, world["tasks"])
        tasks = {task: (world["classnames"][task], world["templates"][task]) for task in settings.tasks}
        return cls(model, tokenizer, tasks, n_samples=settings.n_samples, eps=eps,
                   pgd_steps=settings.pgd_steps, home=home, seed=seed)

    def __call__(self) -> dict:
        attack = evaluation_pgd(eps=self.eps, steps=self.pgd_steps, generator=torch.Generator().manual_seed(self.seed))
        results = {}
        for task, (classifier, pixels, labels) in self.tasks.items():
            clean, _ = accuracy(classifier, [(pixels, labels)])
            robust, _ = accuracy(classifier, [(pixels, labels)], attack=attack)
            results[task] = {"clean_acc": clean, "pgd_acc": robust}
        return results

"""What the training loop is handed: processes, data (labels only when declared), models, caches,
optimizer. Each function does one preparation step; :func:`prepare` calls them in order and returns
the :class:`Session` that :func:`robust_w2s.align.loop.train` runs."""
from __future__ import annotations

import copy
import inspect
import os
from dataclasses import dataclass

import datasets
import timm.optim
import timm.scheduler
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from ..attacks import PRECISIONS, parse_eps
from ..data import check_labels, decode_image, infer_label_schema, load_image_dataset
from ..errors import UserError, unknown_name
from ..labels import LabelSchema
from ..layout import text_head_cache
from ..models import eval_transform, load_model, resolve_device
from ..zeroshot import ZeroShotClassifier
from .config import AlignConfig, OptimSettings
from .guidance import TeacherMixture, knn_graph, label_propagation, train_knows
from .inputs import CACHED_INPUTS, Models, StudentHeads, teacher_probs
from .methods import Plan, entropy

DEFAULT_TEMPLATES = ["a photo of a {}."]


@dataclass(frozen=True)
class Dist:
    rank: int            # this process's rank (0 without torchrun)
    world_size: int      # number of processes
    device: torch.device  # where this process computes

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """One process, or DDP under torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    resolved = resolve_device(device, "train.device")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(0, 1, resolved)
    cuda = resolved.type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
    return Dist(torch_dist.get_rank(), world_size, torch.device(f"cuda:{local_rank}" if cuda else "cpu"))


def resolve_eps(value, world_eps: float | None, key: str) -> float:
    """A radius from the config: a number, "2/255", or "world" (the embedded world's epsilon)."""
    if value == "world":
        if world_eps is None:
            raise UserError(f"{key}=world needs a built world (`robust-w2s pretrain`) or a number like 2/255")
        return float(world_eps)
    try:
        return parse_eps(value)
    except ValueError as error:
        raise UserError(f"{key}: {error}") from None


def _step_size(value, key: str) -> float | None:
    """A PGD step size from the config: None (the attack's default), a number or "1/255"."""
    try:
        return None if value is None else parse_eps(value, upper=None)
    except ValueError as error:
        raise UserError(f"{key}: {str(error).replace('epsilon', 'step size')}") from None


def resolve_precision(value: str, device: torch.device) -> str:
    """The training attacks' forward precision from ``attack.precision``: "bf16" or "fp32" as given,
    "auto" bf16 on CUDA (the hardware floor) and fp32 elsewhere (docs/precision.md)."""
    if value == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if value not in PRECISIONS:
        raise unknown_name("attack.precision", value, ("auto", *PRECISIONS))
    return value


def update_in_bf16(config: AlignConfig, device: torch.device) -> bool:
    """Whether the update's forward (the loss's own passes) runs under bf16 autocast: ``train.bf16``,
    on CUDA only (attacks follow ``attack.precision``)."""
    return config.train.bf16 and device.type == "cuda"


def attack_keywords(config: AlignConfig, plan: Plan, world_eps: float | None, device: torch.device):
    """(``pgd`` keywords of the student attack, ``inverse_adversarial`` keywords of IAR): radii
    resolved against the world, both at ``attack.precision``; IAR's ``{}`` unless a method of the
    plan declares it. Raises UserError for a bad radius or precision."""
    attack = config.attack
    precision = resolve_precision(attack.precision, device)
    student = {"eps": resolve_eps(attack.eps, world_eps, "attack.eps"), "steps": attack.steps,
               "alpha": _step_size(attack.alpha, "attack.alpha"), "start_noise_std": attack.start_noise_std,
               "precision": precision}
    if "refined_teacher_probs" not in plan.needs:
        return student, {}
    refine = {"eps": resolve_eps(attack.refine_eps, world_eps, "attack.refine_eps"),
              "steps": attack.refine_steps, "alpha": _step_size(attack.refine_alpha, "attack.refine_alpha"),
              "start_noise_std": attack.start_noise_std, "precision": precision}
    return student, refine


def alignment_data(config: AlignConfig, plan: Plan, world: dict | None, home):
    """(dataset, class names, templates, label schema or None, known labels or None). The label column
    is REMOVED unless a method of the plan declares labels: methods defined without labels receive a
    dataset that has none. Declared labels are checked against the class names before any compute
    (count, order, range), as evaluations check them; the split read is the spec's, else ``train``.

    A plan that declares ``pik`` reads the labels of a seeded subset of ``method.pik.labels`` rows
    only (checked like declared labels): "known labels" is then (row indices [n], class indices [n])."""
    data = config.data
    dataset = load_image_dataset(data.dataset, home=home, prefer="train")
    if data.image_column not in dataset.column_names:
        raise UserError(f"alignment dataset has no column {data.image_column!r} (columns: {dataset.column_names})")
    embedded = data.dataset.startswith("embedded:") and world is not None
    task = world["alignment_task"] if embedded else None
    if embedded:
        labels, classnames = LabelSchema(data.label_column), data.classnames or world["classnames"][task]
    elif data.label_column in dataset.column_names:  # its values are read only by methods declaring labels
        labels, classnames = infer_label_schema(dataset, data.label_column, data.classnames or None,
                                                read_labels="labels" in plan.needs)
    elif data.classnames:
        labels, classnames = None, data.classnames
    else:
        raise UserError(f"alignment dataset has no label column {data.label_column!r} to name its classes: "
                        f"give data.classnames")
    templates = data.templates or (world["templates"][task] if embedded else DEFAULT_TEMPLATES)
    reads_labels = plan.needs & {"labels", "pik"}
    if reads_labels and labels is None:
        raise UserError(f"method {config.method.name!r} needs labels ({sorted(reads_labels)[0]}): "
                        f"no column {data.label_column!r}")
    if "labels" in plan.needs:
        check_labels(dataset, labels, classnames, data.dataset)
    known = None
    if "pik" in plan.needs:
        count = config.method.pik.labels
        if not 2 <= count <= len(dataset):
            raise UserError(f"method.pik.labels must be in [2, {len(dataset)}] (the alignment set), got {count}")
        rows = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(config.train.seed))[:count]
        subset = dataset.select(rows.tolist()).select_columns([data.label_column])
        check_labels(subset, labels, classnames, data.dataset)
        known = (rows, torch.as_tensor(labels.indices(subset[data.label_column])))
    keep = [data.image_column] + ([data.label_column] if "labels" in plan.needs else [])
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in keep])
    return dataset, list(classnames), list(templates), (labels if "labels" in plan.needs else None), known


class PixelView(torch.utils.data.Dataset):
    """Row i of an image dataset as {"index", "pixels" in [0, 1], and "label" (a class index) if
    ``labels`` is given}."""

    def __init__(self, dataset: datasets.Dataset, transform, image_column: str, labels: LabelSchema | None):
        if isinstance(dataset.features[image_column], datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset, self.transform = dataset, transform
        self.image_column, self.labels = image_column, labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        row = self.dataset[int(i)]
        item = {"index": int(i), "pixels": self.transform(decode_image(row[self.image_column], i))}
        if self.labels is not None:
            item["label"] = int(self.labels.indices([row[self.labels.column]])[0])
        return item


def batches(view: PixelView, *, batch_size: int, seed: int, dist: Dist, start_step: int, workers: int):
    """Endless (step, batch) from ``start_step``: epoch e is DistributedSampler's permutation for
    (seed, e), cut into per-rank batches; the position is a function of the step, so resuming
    at step k continues with exactly the batch an uninterrupted run would see.

    Data loading never draws from torch's global RNG: a DataLoader draws its workers' base seed
    each time an iterator is made (every epoch, and once more on a resume, workers or not), from
    the global RNG unless it has a generator of its own. Ours is seeded by (seed, rank, epoch), so
    the global RNG (dropout, patch dropout in the student's forward) follows the same stream
    whether or not the run was resumed. The items are a deterministic function of their index.
    """
    per_rank = batch_size // dist.world_size
    sampler = DistributedSampler(range(len(view)), num_replicas=dist.world_size, rank=dist.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    per_epoch = len(sampler) // per_rank
    if per_epoch == 0:  # raised here, not at the first batch: before the loop starts its progress bar
        raise UserError(f"batch size {batch_size} exceeds the alignment set ({len(view)} images)")
    return _endless(view, sampler, per_rank=per_rank, per_epoch=per_epoch, step=start_step, workers=workers,
                    seed=seed, rank=dist.rank)


def _endless(view: PixelView, sampler: DistributedSampler, *, per_rank: int, per_epoch: int, step: int, workers: int,
             seed: int, rank: int):
    while True:
        epoch, position = divmod(step, per_epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)
        chunks = [order[i * per_rank:(i + 1) * per_rank] for i in range(position, per_epoch)]
        # hash() of a tuple of ints is the same in every process and every run (no PYTHONHASHSEED)
        loader_rng = torch.Generator().manual_seed(hash((seed, rank, epoch)) & (2 ** 63 - 1))
        for batch in DataLoader(view, batch_sampler=chunks, num_workers=workers, generator=loader_rng):
            yield step, {"epoch": epoch, "position": position}, batch
            step, position = step + 1, position + 1


def load_student(spec: str, *, home, device, classnames, templates, grad_checkpointing: bool = False):
    """(open_clip model, tokenizer, classifier): image tower trainable, text tower frozen."""
    model, _, tokenizer = load_model(spec, home=home, device=str(device))
    train_image_tower(model, grad_checkpointing)
    return model, tokenizer, ZeroShotClassifier(model, tokenizer, classnames, templates,
                              head_cache=text_head_cache(home))


def train_image_tower(model: nn.Module, grad_checkpointing: bool) -> None:
    """Make only ``model.visual`` trainable; with ``grad_checkpointing``, its transformer blocks keep no
    activations and recompute them in every backward (open_clip's ``set_grad_checkpointing``), in
    the attacks' input-gradient passes as in the update."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("visual."))
    model.visual.set_grad_checkpointing(grad_checkpointing)


def load_frozen(model, classifier: ZeroShotClassifier) -> ZeroShotClassifier:
    """S0: a frozen copy of the student as it starts, sharing the student's text head."""
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    return ZeroShotClassifier(frozen, None, text_head=classifier.text_head)


def load_teacher(spec: str, *, home, device, classnames, templates, image_size) -> ZeroShotClassifier:
    model, _, tokenizer = load_model(spec, home=home, device=str(device))
    model.requires_grad_(False)
    teacher_size = eval_transform(model, normalize=False).transforms[0].size
    if _side(teacher_size) != _side(image_size):
        raise UserError(f"teacher {spec} takes {teacher_size} images, the student {image_size}: they must match")
    return ZeroShotClassifier(model, tokenizer, classnames, templates,
                              head_cache=text_head_cache(home))


def _side(size) -> int:
    return size if isinstance(size, int) else max(size)


@torch.no_grad()
def per_image(function, view: PixelView, dist: Dist, *, batch_size: int = 256, workers: int = 0) -> torch.Tensor:
    """``function(pixels)`` for every alignment image, [N, ...] float32 on the CPU, once before training
    (the teachers and S0 are frozen). Under DDP each process computes one contiguous shard and the
    shards are gathered, so every process holds all of it."""
    shard = -(-len(view) // dist.world_size)  # ceil: every shard has the same length for all_gather
    indices = range(dist.rank * shard, min(len(view), (dist.rank + 1) * shard))
    outputs = [function(batch["pixels"].to(dist.device)).float()
               for batch in DataLoader(torch.utils.data.Subset(view, indices), batch_size=batch_size,
                                       num_workers=workers)]
    mine = torch.cat(outputs)
    if dist.world_size == 1:
        return mine.cpu()
    padded = torch.zeros(shard, *mine.shape[1:], device=dist.device)
    padded[:len(mine)] = mine
    shards = [torch.empty_like(padded) for _ in range(dist.world_size)]
    torch_dist.all_gather(shards, padded)
    return torch.cat(shards)[:len(view)].cpu()


def teacher_cache(teacher: ZeroShotClassifier, view: PixelView, dist: Dist, *, workers: int = 0) -> torch.Tensor:
    """p_T(x) for every alignment image [N, K] (``teacher_probs``: fp32, as IAR's target)."""
    teacher.eval()
    return per_image(lambda pixels: teacher_probs(teacher, pixels), view, dist, workers=workers)


def median_entropy(probs: torch.Tensor) -> torch.Tensor:
    """kappa = median over the alignment set of the teacher's entropy (EUR), a 0-d tensor."""
    return entropy(probs).median()


def optimizer_and_schedule(module: nn.Module, optim: OptimSettings, steps: int):
    """AdamW over ``module`` with timm's weight-decay exclusions, and a per-step linear warm-up from
    lr / 100 over ``optim.warmup_steps``, then a cosine over ``steps`` down to ``optim.min_lr``.

    The one optimizer recipe of the project: the alignment loop and the world's pretraining use it.
    """
    optimizer = timm.optim.create_optimizer_v2(module, "adamw", lr=optim.lr, weight_decay=optim.weight_decay)
    scheduler = timm.scheduler.CosineLRScheduler(
        optimizer, t_initial=steps, lr_min=optim.min_lr, warmup_t=optim.warmup_steps,
        warmup_lr_init=optim.lr / 100, warmup_prefix=True, t_in_epochs=False)
    scheduler.step_update(0)
    return optimizer, scheduler


# The student's buffers (text head, normalization) never change: no per-forward sync under DDP.
# torch 2.14 renamed the switch; older versions only know broadcast_buffers.
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})
FROZEN_INPUTS = {"frozen_logits", "frozen_adv_logits", "frozen_features"}
TEACHER_CACHES = {"teacher_probs", "smoothed_teacher_probs"}        # from ``teacher``
TEACHERS_CACHES = {"teachers_probs", "average_teacher_probs"}      # from ``teachers``
EMBEDDING_CACHES = {"smoothed_teacher_probs", "pik"}               # from S0's image embeddings


@dataclass(kw_only=True)
class Optimization:
    """What an optimizer step updates: the open_clip student (its image tower), AdamW, the schedule."""
    model: nn.Module                     # the open_clip student model
    optimizer: torch.optim.Optimizer     # AdamW over model.visual
    scheduler: object                    # timm CosineLRScheduler, stepped per optimizer step
    ema: ModelEmaV3 | None               # EMA of the student's weights (None: off)
    grad_clip: float                     # max global gradient norm (0: no clipping)

    @property
    def exported(self) -> nn.Module:
        """The weights a checkpoint holds: the EMA's when EMA is on."""
        return self.ema.module if self.ema is not None else self.model


@dataclass(kw_only=True)
class Session:
    """Everything :func:`robust_w2s.align.loop.train` runs, built by :func:`prepare`."""
    view: PixelView                          # the alignment images (labels only if declared)
    tokenizer: object                        # the student's tokenizer (for the zero-shot check)
    models: Models                           # what the method's inputs are computed from
    optimization: Optimization
    record: dict                             # what setup measured, for the log's start event (P(IK))

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """The attack's and the refinement's random starts, by the names the saved state uses."""
        return {"attack": self.models.attack_rng, "refine": self.models.refine_rng}


def entropy_sources(plan: Plan) -> set[str]:
    """The cached inputs whose entropy median is kappa, for the plan's methods that declare EUR."""
    return {method.entropy_source for _, method in plan.phases
            if "teacher_entropy_median" in method.needs and method.entropy_source}


def cached_inputs(plan: Plan) -> set[str]:
    """The per-image caches a plan reads: its declared CACHED_INPUTS and, for EUR, kappa's source."""
    return (set(plan.needs) | entropy_sources(plan)) & set(CACHED_INPUTS)


def guidance_caches(config: AlignConfig, plan: Plan, dist: Dist, *, view: PixelView, classifier: ZeroShotClassifier,
                    known, teachers: dict[str, ZeroShotClassifier]) -> tuple[dict[str, torch.Tensor], dict]:
    """Every per-image input the plan reads, computed once before training (the teachers and S0 are
    frozen): ({input name: [N, ...] on the CPU}, {"pik": P(IK)'s training record} or {})."""
    wanted, workers, settings = cached_inputs(plan), config.data.workers, config.method
    caches: dict[str, torch.Tensor] = {}
    if wanted & TEACHER_CACHES:
        caches["teacher_probs"] = teacher_cache(teachers[config.teacher], view, dist, workers=workers)
    if wanted & TEACHERS_CACHES:
        caches["teachers_probs"] = torch.stack([teacher_cache(teachers[spec], view, dist, workers=workers)
                                                for spec in config.teachers], dim=1)
        caches["average_teacher_probs"] = caches["teachers_probs"].mean(dim=1)
    record = {}
    if wanted & EMBEDDING_CACHES:
        classifier.eval()  # S0 = the student as it starts, without dropout
        embeddings = per_image(lambda pixels: classifier.image_features(pixels, normalize=False), view, dist,
                               workers=workers)
        if "smoothed_teacher_probs" in wanted:
            graph = settings.graph
            try:
                caches["smoothed_teacher_probs"] = label_propagation(
                    knn_graph(embeddings, graph.neighbours), caches["teacher_probs"], graph.alpha, graph.iterations)
            except ValueError as error:
                raise UserError(str(error)) from None
        if "pik" in wanted:
            rows, labels = known
            predictions = (F.normalize(embeddings[rows], dim=-1) @ classifier.text_head.float().cpu()).argmax(-1)
            knows, record["pik"] = train_knows(embeddings[rows], predictions == labels,
                                               holdout=settings.pik.holdout, seed=config.train.seed,
                                               threshold=settings.pik.threshold)
            with torch.no_grad():
                caches["pik"] = knows(embeddings)
    return {name: cache for name, cache in caches.items() if name in wanted}, record


def check_teachers(config: AlignConfig, plan: Plan) -> None:
    """``teachers`` is read by the guidances that combine teachers (average, raven) and only by them:
    there it needs two or more, each once; elsewhere it must be empty (a list the run would ignore
    is refused). Raises UserError."""
    combines = bool(cached_inputs(plan) & TEACHERS_CACHES)
    if config.teachers and not combines:
        guidance = f", guidance {config.method.guidance!r}" if config.method.guidance else ""
        raise UserError(f"`teachers` is read only by method.guidance=average or raven, not by this run "
                        f"(method {config.method.name!r}{guidance}): remove it, or use `teacher` for one")
    if combines and len(set(config.teachers)) < len(config.teachers):
        raise UserError(f"`teachers` names a teacher twice ({config.teachers}): each gets one weight")
    if combines and len(config.teachers) < 2:
        raise UserError(f"method.guidance={config.method.guidance} combines teachers: give at least two "
                        f"in `teachers` (got {config.teachers})")


def prepare(config: AlignConfig, plan: Plan, dist: Dist, *, world: dict | None, home) -> Session:
    """Load data and models, compute the per-image caches, build the optimizer: one function per step."""
    # Attack radii and precision first, so that a bad one fails before anything loads.
    attack, refine = attack_keywords(config, plan, (world or {}).get("epsilon"), dist.device)
    check_teachers(config, plan)
    wanted = cached_inputs(plan)

    # Data: the alignment set, its label column removed unless a method declared labels.
    dataset, classnames, templates, labels, known = alignment_data(config, plan, world, home)

    # Models: the student's image tower trains; its text tower, the teachers and S0 stay frozen.
    model, tokenizer, classifier = load_student(config.student, home=home, device=dist.device,
                                                classnames=classnames, templates=templates,
                                                grad_checkpointing=config.train.grad_checkpointing)
    transform = eval_transform(model, normalize=False)
    view = PixelView(dataset, transform, config.data.image_column, labels)
    specs = ([config.teacher] if wanted & TEACHER_CACHES or "refined_teacher_probs" in plan.needs else [])
    specs += config.teachers if wanted & TEACHERS_CACHES else []
    teachers = {spec: load_teacher(spec, home=home, device=dist.device, classnames=classnames, templates=templates,
                                   image_size=transform.transforms[0].size) for spec in dict.fromkeys(specs)}
    frozen = StudentHeads(load_frozen(model, classifier)) if plan.needs & FROZEN_INPUTS else None

    # Per-image caches (teacher outputs, graph smoothing, P(IK)), once; EUR's kappa.
    caches, record = guidance_caches(config, plan, dist, view=view, classifier=classifier, known=known,
                                     teachers=teachers)
    sources = entropy_sources(plan)
    kappa = median_entropy(caches[sources.pop()]).to(dist.device) if sources else None
    mixture = (TeacherMixture(len(config.teachers), lr=config.method.raven.lr, freeze=config.method.raven.freeze,
                              device=dist.device) if "teacher_weights" in plan.needs else None)

    # Optimizer, schedule and EMA; DDP wraps the student only (attacks use the plain module).
    heads = StudentHeads(classifier)
    optimizer, scheduler = optimizer_and_schedule(model.visual, config.optim, config.train.steps)
    ema = ModelEmaV3(model, decay=config.optim.ema_decay) if config.optim.ema_decay > 0 else None
    student = heads if dist.world_size == 1 else DistributedDataParallel(
        heads, device_ids=[dist.device.index] if dist.device.type == "cuda" else None, **_NO_BUFFER_SYNC)

    # Attack starts are drawn on the training device: a CPU draw of a ViT-L batch costs ~0.1 s.
    seed = config.train.seed * 1000 + 2 * dist.rank
    models = Models(
        student=student, student_plain=heads, frozen=frozen, teacher=teachers.get(config.teacher),
        caches=caches, entropy_median=kappa, teacher_mixture=mixture, attack=attack, refine=refine,
        attack_rng=torch.Generator(dist.device).manual_seed(seed + 1),
        refine_rng=torch.Generator(dist.device).manual_seed(seed + 2))
    optimization = Optimization(model=model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                                grad_clip=config.optim.grad_clip)
    return Session(view=view, tokenizer=tokenizer, models=models, optimization=optimization, record=record)

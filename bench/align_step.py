"""One alignment step exactly as ``robust-w2s align`` runs it, against the floor of its mandated passes.

The step is ``robust_w2s.align.loop.train_step`` with the settings the CLI derives from the same
config (``--config``, ``--set``): batch, m, n, radii, ``attack.precision``, the update's
``train.bf16``, ``train.grad_checkpointing``, the optimizer; TF32 stays off, as in the CLI. Models
are the config's architectures, randomly initialized unless they are the built embedded world's
(timings do not depend on the weights); the images are random pixels, p_T(x) their teacher cache.

A step must run m student attack passes and n teacher refinement passes (forward + input gradient
each) and one student update (forward + backward into the weights); the teacher's clean output
comes from the cache. The floor times each of these passes in the same run, interleaved with the
step, under bf16 autocast and in fp32, and keeps the faster: bf16 on a GPU (the hardware floor),
fp32 on CPUs whose bf16 kernels are slower; the floor's student passes keep every activation even
with ``train.grad_checkpointing`` (so the ratio shows the recomputation's cost). It prints the
medians, images/s, the peak memory of the step alone, measured before any floor pass (CUDA:
allocated by torch; CPU: the process's peak resident set), a ``row=`` line of docs/hardware.md and,
last, ``ratio=<number>``:

    ratio = time(step) / (m * student attack pass + n * teacher pass + student update pass)

(target on a GPU: at most 1.10; on a CPU the times of these small models move by tens of percent
from run to run on a shared machine). What the step adds on top: one no-grad student forward on x (the
self-label), one no-grad teacher forward on x~ (IAR's target), the PGD arithmetic, clipping, AdamW.

    python bench/align_step.py [--home DIR]              # configs/embedded/adv-w2s.yaml on the CPU
    python bench/align_step.py --device cuda --set train.grad_checkpointing=true   # configs/paper/
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3

from robust_w2s.align.config import load_config
from robust_w2s.align.inputs import Batch, Models, StudentHeads, teacher_probs
from robust_w2s.align.loop import train_step
from robust_w2s.align.methods import Plan
from robust_w2s.align.setup import (Optimization, attack_keywords, median_entropy, optimizer_and_schedule,
                                    train_image_tower, update_in_bf16)
from robust_w2s.errors import UserError
from robust_w2s.layout import EMBEDDED, read_world
from robust_w2s.models import OpenClipSpec, load_model, network_config
from robust_w2s.world.recipes import MODEL_CONFIG_DIR
from robust_w2s.world.stages import WorldConfig
from robust_w2s.zeroshot import ZeroShotClassifier

ROOT = Path(__file__).resolve().parent.parent
CLASSNAMES = [f"class {k}" for k in range(10)]
BENCHED_INPUTS = {"teacher_probs", "teacher_entropy_median", "refined_teacher_probs", "adv_logits",
                  "clean_logits", "self_labels", "progress"}  # no labels, no frozen S0: Adv-W2S and its ablations
EMBEDDED_ARCHITECTURES = {"weak": WorldConfig.weak.architecture, "weak-robust": WorldConfig.weak.architecture,
                          "strong": WorldConfig.strong.architecture}


def _model(spec: str, device: str, home):
    """(model, tokenizer) of ``spec``: the built world's model, else its architecture randomly initialized
    (never a download: placeholder paths and pretrained tags are dropped)."""
    if spec.startswith(EMBEDDED):
        try:
            model, _, tokenizer = load_model(spec, home=home, device=device)
            return model, tokenizer
        except UserError:
            open_clip.add_model_config(MODEL_CONFIG_DIR)
            name = EMBEDDED_ARCHITECTURES[spec.removeprefix(EMBEDDED)]
    else:  # the network the spec's lineage builds (QuickGELU for OpenAI's), its weights random
        name = spec.partition("@")[0]
        tag = spec.partition("@")[2].partition(":")[0]
        quick_gelu = network_config(OpenClipSpec(name, tag=tag if tag in open_clip.list_pretrained_tags_by_model(
            name) else None))[0]["quick_gelu"]
        return (open_clip.create_model(name, force_quick_gelu=quick_gelu).to(device).eval(),
                open_clip.get_tokenizer(name))
    return open_clip.create_model(name).to(device).eval(), open_clip.get_tokenizer(name)


def _interleaved_medians(functions: dict, repeats: int, cuda: bool) -> dict[str, float]:
    """Median seconds of each function, run in turn ``repeats`` times after one warm-up round, so
    that every measurement sees the same machine load."""
    timings = {key: [] for key in functions}
    for repeat in range(repeats + 1):
        for key, fn in functions.items():
            if cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            if repeat:
                timings[key].append(time.perf_counter() - started)
    return {key: statistics.median(values) for key, values in timings.items()}


def _peak_memory_gib(cuda: bool) -> float:
    """CUDA: the most memory torch had allocated; CPU: the process's peak resident set (Linux: KiB)."""
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _resident_gib() -> float:
    """The process's resident set now (Linux), to tell the step's own memory from the libraries'."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--config", help="alignment config (default: configs/paper/adv-w2s.yaml on cuda, "
                                         "configs/embedded/adv-w2s.yaml on cpu)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a setting, as `robust-w2s align --set` (repeatable)")
    parser.add_argument("--home", help="robust-w2s home with the embedded world")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (median)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    device, kind = torch.device(args.device), args.device.split(":")[0]
    config_path = args.config or ROOT / "configs" / ("paper" if cuda else "embedded") / "adv-w2s.yaml"
    try:
        config = load_config(config_path, args.overrides)
    except UserError as error:
        parser.error(str(error))
    plan = Plan.build(config.method)
    method = plan.at(0)
    if not method.needs <= BENCHED_INPUTS:
        parser.error(f"the bench feeds no labels and no frozen student; {method.name} needs "
                     f"{sorted(method.needs - BENCHED_INPUTS)}")

    # The step as the CLI builds it (robust_w2s.align.setup.prepare), on random pixels.
    (teacher_model, teacher_tokenizer), (student_model, tokenizer) = (
        _model(spec, args.device, args.home) for spec in (config.teacher, config.student))
    teacher_model.requires_grad_(False)
    train_image_tower(student_model, config.train.grad_checkpointing)
    teacher = ZeroShotClassifier(teacher_model, teacher_tokenizer, CLASSNAMES, ["a photo of a {}."])
    heads = StudentHeads(ZeroShotClassifier(student_model, tokenizer, CLASSNAMES, ["a photo of a {}."]))
    world_eps = (read_world(args.home, required=False) or {}).get("epsilon", WorldConfig.epsilon)
    attack, refine = attack_keywords(config, plan, world_eps, device)
    size = open_clip.get_model_preprocess_cfg(student_model)["size"]
    size = size if isinstance(size, int) else size[0]
    batch_size, m, n = config.train.batch_size, attack["steps"], refine.get("steps", 0)
    pixels = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    cache = teacher_probs(teacher, pixels)
    models = Models(student=heads, student_plain=heads, frozen=None, teacher=teacher,
                    caches={"teacher_probs": cache}, entropy_median=median_entropy(cache), attack=attack, refine=refine,
                    attack_rng=torch.Generator(device).manual_seed(1),
                    refine_rng=torch.Generator(device).manual_seed(2))
    optimizer, scheduler = optimizer_and_schedule(student_model.visual, config.optim, config.train.steps)
    ema = ModelEmaV3(student_model, decay=config.optim.ema_decay) if config.optim.ema_decay > 0 else None
    optimization = Optimization(model=student_model, optimizer=optimizer, scheduler=scheduler, ema=ema,
                                grad_clip=config.optim.grad_clip)
    batch, target = Batch(pixels, None, {"teacher_probs": cache}), cache.argmax(dim=1)
    bf16_update = update_in_bf16(config, device)

    def step():
        train_step(method, batch, models, optimization, step=0, steps=config.train.steps, bf16=bf16_update)

    # The floor's passes keep every activation: with train.grad_checkpointing the step pays for its
    # recomputation, and the ratio shows that cost instead of hiding it in the floor.
    def no_checkpointing(run):
        def plain():
            student_model.visual.set_grad_checkpointing(False)
            try:
                run()
            finally:
                student_model.visual.set_grad_checkpointing(config.train.grad_checkpointing)
        return plain

    def input_gradient_pass(module, precision):  # one attack / refinement step: forward + input gradient
        def run():
            x = pixels.clone().requires_grad_(True)
            with torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16"):
                output = module(x)
            torch.autograd.grad(F.cross_entropy(output.float(), target, reduction="sum"), x)
        return no_checkpointing(run)

    def update_pass(precision):  # the student update: forward + backward into the weights
        def run():
            with torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(heads(pixels).float(), target)
            loss.backward()
            optimizer.zero_grad(set_to_none=True)
        return no_checkpointing(run)

    passes = {"student_attack_pass": lambda p: input_gradient_pass(heads, p),
              "teacher_pass": lambda p: input_gradient_pass(teacher, p), "student_update_pass": update_pass}
    heads.eval()
    # Peak memory of the step alone, before any floor pass (an fp32 pass keeps about twice the
    # activations of a bf16 one, and the CPU's peak resident set cannot be reset).
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loaded = 0.0 if cuda else _resident_gib()  # libraries, models, pixels: before any pass
    step()
    if cuda:
        torch.cuda.synchronize()
    peak = _peak_memory_gib(cuda)
    median = _interleaved_medians({"step": step} | {f"{key} {p}": make(p) for key, make in passes.items()
                                                    for p in ("bf16", "fp32")}, args.repeats, cuda)
    floor = {key: min(median[f"{key} bf16"], median[f"{key} fp32"]) for key in passes}
    total = m * floor["student_attack_pass"] + n * floor["teacher_pass"] + floor["student_update_pass"]
    images_per_s = batch_size / median["step"]
    hours = config.train.steps * median["step"] / 3600
    checkpointing = "on" if config.train.grad_checkpointing else "off"

    print(f"{config.teacher} -> {config.student}: {size}x{size}, batch {batch_size}, m={m}, n={n}, {args.device}; "
          f"attacks {attack['precision']}, update {'bf16' if bf16_update else 'fp32'}, "
          f"activation checkpointing {checkpointing}")
    for key, value in median.items():
        print(f"  {key:<25} {1000 * value:9.1f} ms")
    print(f"  {'floor':<25} {1000 * total:9.1f} ms (each pass at its faster precision)")
    what = "allocated by torch" if cuda else f"process peak resident set, {peak - loaded:.2f} above the loaded models"
    print(f"  images/s {images_per_s:.1f}; peak memory {peak:.2f} GiB ({what}); "
          f"{config.train.steps} steps: {hours:.2f} h")
    names = [spec.partition("@")[0] for spec in (config.teacher, config.student)]  # no weight paths
    machine = torch.cuda.get_device_name(device) if cuda else f"CPU, {args.threads} thread(s)"
    print(f"row=| {names[0]} | {names[1]} | {size} | {batch_size} | {m} | {n} | {attack['precision']} | "
          f"{'bf16' if bf16_update else 'fp32'} | {checkpointing} | {machine} | {median['step']:.3f} | "
          f"{images_per_s:.1f} | {peak:.2f} | {median['step'] / total:.3f} | {hours:.3g} |")
    print(f"ratio={median['step'] / total:.3f}")


if __name__ == "__main__":
    main()

"""Overhead of one Adv-W2S training step (EUR + IAR) over the floor of its mandated passes.

A step must run m student attack passes (forward + input gradient, fp32), n teacher refinement
passes (forward + input gradient, fp32) and one student update (forward + backward with weight
gradients, bf16 autocast on GPU); the teacher's clean output is read from the cache. This
script times the real step (``robust_w2s.align.loop.train_step``) and each floor pass in the
same run, interleaved, and prints the medians and, last,

    ratio = time(step) / (m * student attack pass + n * teacher pass + student update pass)

(target: at most 1.15). What the step adds on top: one no-grad student forward on x (the
self-label), one no-grad teacher forward on x~, the PGD arithmetic, clipping and AdamW.

    python bench/align_step.py [--home DIR]                       # embedded models, CPU
    python bench/align_step.py --device cuda [--batch 64]         # ViT-B-32 -> ViT-L-14, bf16
"""
from __future__ import annotations

import argparse
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F

from robust_w2s.align.config import OptimSettings
from robust_w2s.align.inputs import Batch, Models, StudentHeads
from robust_w2s.align.loop import train_step
from robust_w2s.align.methods import MethodSettings, get_method
from robust_w2s.align.setup import Optimization, median_entropy, optimizer_and_schedule
from robust_w2s.errors import UserError
from robust_w2s.models import load_model
from robust_w2s.world.recipes import MODEL_CONFIG_DIR
from robust_w2s.zeroshot import ZeroShotClassifier

CLASSNAMES = [f"class {k}" for k in range(10)]


def _models(device: str, home):
    """((teacher, tokenizer), (student, tokenizer), name): the paper's pair on GPU, the embedded
    pair on CPU (randomly initialized when no world is built)."""
    if device.startswith("cuda"):
        names = ("ViT-B-32", "ViT-L-14")
        label = "ViT-B-32 -> ViT-L-14 (random init)"
    else:
        try:
            pair = [load_model(f"embedded:{n}", home=home) for n in ("weak-robust", "strong")]
            return [(m, tok) for m, _, tok in pair] + ["embedded:weak-robust -> embedded:strong"]
        except UserError:
            open_clip.add_model_config(MODEL_CONFIG_DIR)
            names = ("rw2s-weak", "rw2s-strong")
            label = "rw2s-weak -> rw2s-strong (random init)"
    return [(open_clip.create_model(n).to(device), open_clip.get_tokenizer(n)) for n in names] + [label]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--home", help="robust-w2s home with the embedded world (CPU)")
    parser.add_argument("--batch", type=int, default=64, help="images per step")
    parser.add_argument("--attack-steps", type=int, help="m (default: 3 on CPU, 10 on GPU)")
    parser.add_argument("--refine-steps", type=int, default=2, help="n")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions (median)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 attack passes use TF32 tensor cores on GPU
    cuda = args.device.startswith("cuda")
    m = args.attack_steps or (10 if cuda else 3)
    n = args.refine_steps

    (teacher_model, teacher_tokenizer), (student_model, tokenizer), name = _models(args.device, args.home)
    teacher_model.requires_grad_(False).eval()
    for key, parameter in student_model.named_parameters():
        parameter.requires_grad_(key.startswith("visual."))
    teacher = ZeroShotClassifier(teacher_model, teacher_tokenizer, CLASSNAMES, ["a photo of a {}."])
    heads = StudentHeads(ZeroShotClassifier(student_model, tokenizer, CLASSNAMES, ["a photo of a {}."]))
    size = open_clip.get_model_preprocess_cfg(student_model)["size"]
    size = size if isinstance(size, int) else size[0]
    generator = torch.Generator(args.device).manual_seed(0)
    pixels = torch.rand(args.batch, 3, size, size, generator=generator, device=args.device)
    with torch.no_grad():
        cache = teacher(pixels).float().softmax(dim=-1)  # the training loop reads this from its cache
    eps = 2 / 255 if cuda else 4 / 255
    models = Models(student=heads, student_plain=heads, frozen=None, teacher=teacher, teacher_cache=cache,
                    entropy_median=median_entropy(cache),
                    attack={"eps": eps, "steps": m, "alpha": eps / 4, "start_noise_std": 0.001},
                    refine={"eps": eps, "steps": n, "alpha": eps / 2, "start_noise_std": 0.001},
                    attack_rng=torch.Generator(args.device).manual_seed(1),
                    refine_rng=torch.Generator(args.device).manual_seed(2))
    method = get_method(MethodSettings(name="adv-w2s", eur=True, iar=True))
    optimizer, scheduler = optimizer_and_schedule(student_model.visual, OptimSettings(lr=1e-6), 1000)
    optimization = Optimization(model=student_model, optimizer=optimizer, scheduler=scheduler, ema=None, grad_clip=1.0)
    batch = Batch(pixels, None, cache)
    target = cache.argmax(dim=1)

    def step():
        train_step(method, batch, models, optimization, step=0, steps=1000, bf16=cuda)

    def input_gradient_pass(module):  # one attack / refinement step's forward + input gradient
        def run():
            x = pixels.clone().requires_grad_(True)
            with torch.autocast(args.device.split(":")[0], enabled=False):
                loss = F.cross_entropy(module(x), target, reduction="sum")
            torch.autograd.grad(loss, x)
        return run

    def update_pass():  # the student update: forward + backward into the weights
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(heads(pixels), target)
        loss.backward()
        optimizer.zero_grad(set_to_none=True)

    heads.eval()
    median = _interleaved_medians({"step": step, "student_attack_pass": input_gradient_pass(heads),
                                   "teacher_pass": input_gradient_pass(teacher),
                                   "student_update_pass": update_pass}, args.repeats, cuda)
    floor = m * median["student_attack_pass"] + n * median["teacher_pass"] + median["student_update_pass"]
    print(f"{name}: {size}x{size}, batch {args.batch}, m={m}, n={n}, {args.device}"
          f"{' (bf16 update)' if cuda else ''}")
    for key, value in median.items():
        print(f"  {key:<20} {1000 * value:9.1f} ms")
    print(f"  {'floor':<20} {1000 * floor:9.1f} ms")
    print(f"ratio={median['step'] / floor:.3f}")


if __name__ == "__main__":
    main()

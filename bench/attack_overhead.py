"""Overhead of PGD-k evaluation over its floor of k+1 image-tower passes.

PGD-k evaluation costs k forward+backward passes of the image tower (the attack) plus one
forward pass to classify the result; the zero-shot text head is a buffer, never recomputed.
This script times both in one run and prints, per model, the ratio

    time(PGD-k evaluation) / ((k + 1) * time(one forward+backward of the image tower))

and last the largest of them as ``ratio=<number>`` (target: at most 1.10).

    python bench/attack_overhead.py [--steps 10] [--batch 8] [--device cuda] [--home DIR]
"""
from __future__ import annotations

import argparse
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F

from robust_w2s.attacks import pgd
from robust_w2s import ZeroShotClassifier, load_model
from robust_w2s.errors import UserError
from robust_w2s.world.recipes import MODEL_CONFIG_DIR

CLASSNAMES = [f"class {k}" for k in range(10)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def overhead(classifier, image_size: int, steps: int, batch: int, device: str, repeats: int) -> float:
    generator = torch.Generator(device).manual_seed(0)
    pixels = torch.rand(batch, 3, image_size, image_size, generator=generator, device=device)
    labels = torch.randint(0, len(CLASSNAMES), (batch,), generator=generator, device=device)

    def one_pass():
        inputs = pixels.clone().requires_grad_(True)
        loss = F.cross_entropy(classifier(inputs), labels, reduction="sum")
        torch.autograd.grad(loss, inputs)

    def pgd_evaluation():
        adversarial = pgd(classifier, pixels, labels, eps=4 / 255, alpha=1 / 255, steps=steps, generator=generator)
        with torch.no_grad():
            classifier(adversarial).argmax(1)

    floor = _timed(one_pass, device, repeats)
    return _timed(pgd_evaluation, device, repeats) / ((steps + 1) * floor)


def _models(home, device):
    try:
        model, _, tokenizer = load_model("embedded:strong", home=home, device=device)
        yield "embedded:strong", model, tokenizer
    except UserError:  # world not built: the same architecture, randomly initialized
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        yield "rw2s-strong (random init)", open_clip.create_model("rw2s-strong").to(device).eval(), \
            open_clip.get_tokenizer("rw2s-strong")
    yield "ViT-B-32 (random init)", open_clip.create_model("ViT-B-32").to(device).eval(), \
        open_clip.get_tokenizer("ViT-B-32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="k of PGD-k")
    parser.add_argument("--batch", type=int, default=8, help="images per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--home", help="robust-w2s home with the embedded world")
    args = parser.parse_args()
    ratios = []
    for name, model, tokenizer in _models(args.home, args.device):
        classifier = ZeroShotClassifier(model, tokenizer, CLASSNAMES, ["a photo of a {}."])
        size = open_clip.get_model_preprocess_cfg(model)["size"]
        size = size if isinstance(size, int) else size[0]
        ratio = overhead(classifier, size, args.steps, args.batch, args.device, args.repeats)
        ratios.append(ratio)
        print(f"{name}: {size}x{size}, batch {args.batch}, PGD-{args.steps} on {args.device}: "
              f"overhead ratio {ratio:.3f}", flush=True)
    print(f"ratio={max(ratios):.3f}")


if __name__ == "__main__":
    main()

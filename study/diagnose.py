"""What the weak teachers hand the students: ``python -m robust_w2s.study.diagnose [--home DIR]``.

For docs/investigation.md. It reads the alignment split's labels, which no label-free method ever
sees, to measure the guidance itself: how often each teacher is right, how uncertain it is where
it is wrong (the premise of EUR's re-weighting), and what IAR's inverse-adversarial refinement
does to its accuracy and confidence.
"""
from __future__ import annotations

import argparse
import json

import torch

from robust_w2s.align.inputs import teacher_probs
from robust_w2s.align.methods import entropy, eur_weights
from robust_w2s.attacks import inverse_adversarial
from robust_w2s.data import iterate_batches, load_image_dataset
from robust_w2s.layout import EMBEDDED, WORLD_MODELS, model_spec, read_world
from robust_w2s.models import eval_transform, load_model
from robust_w2s.zeroshot import ZeroShotClassifier

from .plan import NATURAL_TEACHER, ROBUST_TEACHER


def diagnose_teacher(spec: str, world: dict, *, home=None, split: str | None = None, n_samples: int = 2048,
                     refine_steps: int = 2, seed: int = 0) -> dict:
    """Accuracy, entropy, EUR weights and IAR's effect of teacher ``spec`` on an alignment split
    (default: the world's ``alignment_split``)."""
    task = world["alignment_task"]
    split = split or world["alignment_split"]
    dataset = load_image_dataset(f"{EMBEDDED}{split}", home=home)
    dataset = dataset.select(range(min(n_samples, len(dataset))))
    model, _, tokenizer = load_model(spec, home=home)
    teacher = ZeroShotClassifier(model, tokenizer, world["classnames"][task], world["templates"][task]).eval()
    transform = eval_transform(model, normalize=False)
    generator = torch.Generator().manual_seed(seed)
    clean, refined, labels = [], [], []
    for pixels, label in iterate_batches(dataset, transform, 256):
        probs = teacher_probs(teacher, pixels)
        moved = inverse_adversarial(teacher, pixels, eps=world["epsilon"], steps=refine_steps,
                                    prediction=probs.argmax(dim=-1), generator=generator)
        clean.append(probs)
        refined.append(teacher_probs(teacher, moved))
        labels.append(label)
    clean, refined, labels = torch.cat(clean), torch.cat(refined), torch.cat(labels)
    right = clean.argmax(dim=-1) == labels
    weights = eur_weights(clean, entropy(clean).median())
    return {
        "teacher": spec, "split": split, "n": len(labels),
        "accuracy": right.float().mean().item(),
        "mean_entropy": entropy(clean).mean().item(),
        "mean_confidence": clean.max(dim=-1).values.mean().item(),
        "eur_weight_mean": weights.mean().item(),
        "eur_weight_where_right": weights[right].mean().item(),
        "eur_weight_where_wrong": weights[~right].mean().item(),
        "guidance_mass_on_truth": clean.gather(1, labels[:, None]).mean().item(),
        "refined_accuracy": (refined.argmax(dim=-1) == labels).float().mean().item(),
        "refined_mean_entropy": entropy(refined).mean().item(),
        "refined_mean_confidence": refined.max(dim=-1).values.mean().item(),
        "refined_mass_on_truth": refined.gather(1, labels[:, None]).mean().item(),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m robust_w2s.study.diagnose",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("--home", help="where the embedded world lives")
    parser.add_argument("--n-samples", type=int, default=2048, help="alignment images to use (default 2048)")
    parser.add_argument("--split", help="alignment split, e.g. alignment-shifted (default: the world's)")
    parser.add_argument("--all-teachers", action="store_true",
                        help="every weak teacher of the world (Table D's), not only the natural and the robust one")
    args = parser.parse_args(argv)
    world = read_world(args.home)
    teachers = ([model_spec(name) for name in WORLD_MODELS if name.startswith("weak")] if args.all_teachers
                else [NATURAL_TEACHER, ROBUST_TEACHER])
    report = [diagnose_teacher(spec, world, home=args.home, split=args.split, n_samples=args.n_samples)
              for spec in teachers]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Time and peak memory of building a zero-shot text head: ImageNet's 1000 classes x 80 templates.

The head is built as evaluations build it (:func:`robust_w2s.zeroshot.build_text_head`, chunks of
``TEXTS_PER_BATCH`` prompts), on a random-init model of the architecture. Prints seconds, prompts
per second and the peak memory beyond the model's weights: CUDA's peak allocation on a GPU, the
growth of the process's peak resident set on a CPU. Goal: <= 4 GiB beyond the weights for ViT-L-14.
``--classes`` builds the head for the first N ImageNet classes and extrapolates the time to 1000
(the memory of a chunked build does not depend on N); on one CPU thread ViT-B-32 encodes about 9
prompts/s, so its full 1000 x 80 head takes some 2.5 hours there: use --classes 20 on a CPU.

    python bench/zeroshot_head.py [--model ViT-L-14] [--device cuda] [--classes 1000] [--templates 80]
"""
from __future__ import annotations

import argparse
import resource
import time

import open_clip
import torch

from robust_w2s.zeroshot import TEXTS_PER_BATCH, build_text_head

GIB = 2 ** 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--model", default="ViT-L-14" if cuda else "ViT-B-32", help="open_clip architecture")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--classes", type=int, default=1000, help="first N of ImageNet's 1000 classes")
    parser.add_argument("--templates", type=int, default=80, help="first N of CLIP's 80 ImageNet templates")
    args = parser.parse_args()
    classnames = list(open_clip.IMAGENET_CLASSNAMES[:args.classes])
    templates = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES[:args.templates]]

    model = open_clip.create_model(args.model, device=args.device).eval()
    tokenizer = open_clip.get_tokenizer(args.model)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    head = build_text_head(model, tokenizer, classnames, templates, progress=True)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    seconds = time.perf_counter() - started
    prompts = len(classnames) * len(templates)
    full = 1000 * len(templates)
    print(f"model={args.model} device={args.device} head={tuple(head.shape)} prompts={prompts} "
          f"texts_per_batch={TEXTS_PER_BATCH}")
    print(f"seconds={seconds:.1f} prompts_per_s={prompts / seconds:.0f} "
          f"seconds_for_1000x{len(templates)}={seconds * full / prompts:.0f} "
          f"peak_beyond_weights_gib={peak / GIB:.2f}")


if __name__ == "__main__":
    main()

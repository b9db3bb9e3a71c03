"""The ``robust-w2s`` command (DESIGN.md section 8 is the binding contract).

Exit codes: 0 success; 1 a failed audit or run; 2 bad input, with one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .errors import UserError

EPILOG = "Models: embedded:weak|weak-robust|strong, local-dir:PATH, ViT-B-32@openai, ViT-L-14@/path/w.safetensors"


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="where the embedded world lives (default: $RW2S_HOME, "
                                       "else ~/.cache/robust_w2s)")


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model spec (see below)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--suite", help="benchmark suite: embedded, paper14 or tecoa16")
    group.add_argument("--dataset", help="one dataset: a registry name (embedded/shape, cifar10), "
                                         "hf:ID[:SPLIT] or local:PATH")
    parser.add_argument("--classnames", help="file with one class name per line (default: the "
                                             "label column's ClassLabel names)")
    parser.add_argument("--n-samples", type=int, help="evaluate a seeded random subset of this size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset (default 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    _add_home(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robust-w2s", description="Weak-to-strong adversarial robustness for CLIP models.",
        epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pretrain = commands.add_parser(
        "pretrain", help="build (or reuse) the embedded world and its weak, robust-weak and strong CLIPs",
        description="Generate the embedded world's data, pretrain a weak and a strong CLIP on it, "
                    "make a robust copy of the weak one with TeCoA, and print their zero-shot "
                    "accuracy. Cached stages are reused.")
    _add_home(pretrain)
    pretrain.set_defaults(run=_run_pretrain)

    zeroshot = commands.add_parser(
        "zeroshot", help="clean zero-shot accuracy of a model on a suite or dataset",
        description="Clean zero-shot top-1 accuracy; prints a table and writes JSON.", epilog=EPILOG)
    _add_target(zeroshot)
    zeroshot.add_argument("--output", help="JSON file to write (default: print only)")
    zeroshot.set_defaults(run=_run_zeroshot)
    return parser


def _run_pretrain(args) -> int:
    from .world.build import build_world
    from .world.report import world_table

    started = time.time()
    record = build_world(args.home)
    print(world_table(record))
    print(f"world ready in {time.time() - started:.0f}s: {Path(record['models']['weak']).parent}")
    return 0


def _run_zeroshot(args) -> int:
    from eval.benchmarks import resolve
    from eval.zeroshot import zero_shot_report

    benchmarks = resolve(args.suite, args.dataset, args.home, args.classnames)
    report = zero_shot_report(args.model, benchmarks, home=args.home, n_samples=args.n_samples,
                              seed=args.seed, batch_size=args.batch_size)
    width = max(len(name) for name in report["tasks"])
    print(f"{'task':<{width}}  clean_acc      n")
    for name, row in report["tasks"].items():
        print(f"{name:<{width}}  {100 * row['clean_acc']:8.1f}%  {row['n']:5d}")
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
        print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.ERROR)  # open_clip warns on every random-init model
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as error:
        print(f"robust-w2s {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

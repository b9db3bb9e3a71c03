"""The ``robust-w2s`` command (DESIGN.md section 8 is the binding contract).

Exit codes: 0 success; 1 a failed audit or run; 2 bad input, with one line on stderr.
The top layer: it may import every package, and nothing imports it (``.importlinter``). Each
command imports what it runs inside its function, so ``--help`` does not wait for torch.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import DISK_FULL, UserError, unknown_name

EPILOG = """model specs:
  embedded:weak|weak-robust|strong  the embedded world's CLIPs
  local-dir:PATH (or PATH)          a checkpoint folder: open_clip_config.json and its weights (ours,
                                    or a hub release downloaded as files)
  hf-hub:ORG/NAME                   an open_clip model on the Hugging Face hub, e.g. hf-hub:chs20/fare2-clip
  NAME                              an open_clip architecture, random init (e.g. ViT-B-32)
  NAME@TAG                          with a pretrained tag's weights, activation and preprocessing
                                    (ViT-B-32@openai is built with QuickGELU and OpenAI's mean/std)
  NAME@TAG:FILE                     a weight file fine-tuned from TAG: built as TAG's network (e.g.
                                    ViT-L-14@openai:fare_eps_4.pt); image-tower-only files (FARE,
                                    TeCoA/PMG-AFT/TGA-ZSR .pth.tar) take the text tower from TAG
  NAME@FILE                         a weight file with no lineage: built as open_clip's NAME
weight files: .safetensors, or torch files that load with weights_only=True
HF_HUB_OFFLINE=1: use only what the Hugging Face cache holds (no network attempts)"""


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="where the embedded world lives (default: $RW2S_HOME, "
                                       "else ~/.cache/robust_w2s)")


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model spec (see below)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--suite", help="benchmark suite: embedded, paper14 or tecoa16")
    group.add_argument("--dataset", help="one dataset: a registry name (embedded/shape, cifar10, cb/pcam), "
                                         "hf:ID[:SPLIT] or local:PATH[:SPLIT] (README: Datasets)")
    parser.add_argument("--classnames", help="with --dataset: a file with one class name per line, in label "
                                             "order (default: the label column's ClassLabel names, or its "
                                             "distinct strings sorted; bool and int labels need it)")
    parser.add_argument("--n-samples", type=int, help="evaluate a seeded random subset of this size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset (default 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="skip images that fail to decode and count them in the results (default: "
                             "stop with one line naming the file or row)")
    _add_home(parser)


class _Formatter(argparse.HelpFormatter):
    """argparse's wrapping for descriptions, but multi-line text (the model-spec table) kept as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's contract for bad input: one line on stderr, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="robust-w2s", description="Weak-to-strong adversarial robustness for CLIP models.",
        epilog=EPILOG, formatter_class=_Formatter)
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
        description="Clean zero-shot top-1 accuracy; prints a table and writes JSON.", epilog=EPILOG,
        formatter_class=_Formatter)
    _add_target(zeroshot)
    zeroshot.add_argument("--output", help="JSON file to write (default: print only)")
    zeroshot.set_defaults(run=_run_zeroshot)

    evaluate = commands.add_parser(
        "eval", help="clean and robust zero-shot accuracy under PGD / APGD / AutoAttack, with audits",
        description="Attack a model's zero-shot classifier in pixel space and report clean accuracy, "
                    "robust accuracy per attack and epsilon, and the per-sample worst case. Soundness "
                    "audits run with every evaluation; a failed audit exits 1 unless --allow-unsound. "
                    "Writes one JSON per (model, dataset, attack, eps) plus report.md, results.csv and "
                    "robust_vs_eps.png in --output-dir.", epilog=EPILOG,
        formatter_class=_Formatter)
    _add_target(evaluate)
    evaluate.add_argument("--attack", help="comma list of pgd, apgd-ce (APGD-CE alone), apgd (APGD-CE + APGD-T), autoattack "
                                           "(standard AA); default: the protocol's")
    evaluate.add_argument("--eps", help="comma list of Linf radii, e.g. 1/255,4/255; default: the protocol's")
    evaluate.add_argument("--protocol", help="tecoa, fare, autoattack or embedded (default: embedded for "
                                             "the embedded world, autoattack for paper14, tecoa otherwise)")
    evaluate.add_argument("--pgd-steps", type=int, help="k of PGD-k (default: the protocol's)")
    evaluate.add_argument("--output-dir", default="runs/eval", help="where results go (default runs/eval)")
    evaluate.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    evaluate.add_argument("--allow-unsound", action="store_true", help="exit 0 even if an audit fails")
    evaluate.set_defaults(run=_run_eval, batch_size=128)

    convert = commands.add_parser(
        "convert", help="write a checkpoint folder from any model spec (e.g. a published robust CLIP)",
        description="Load a model spec (typically NAME@TAG:FILE, a published FARE/TeCoA/PMG-AFT/TGA-ZSR "
                    "checkpoint with the pretrained tag it was fine-tuned from) and write it as a "
                    "checkpoint folder that robust-w2s and plain open_clip (local-dir:) load as the same "
                    "network: weights as safetensors, the architecture with its activation, the "
                    "preprocessing, and the lineage.", epilog=EPILOG,
        formatter_class=_Formatter)
    convert.add_argument("--model", required=True, help="model spec to convert (see below)")
    convert.add_argument("--output-dir", required=True, help="checkpoint folder to write: a new path, or an "
                                                             "existing checkpoint folder (replaced atomically)")
    _add_home(convert)
    convert.set_defaults(run=_run_convert)

    align = commands.add_parser(
        "align", help="align a strong CLIP with a weak teacher (adv-w2s) or a baseline method",
        description="Train the student's image tower by the config's method; writes DIR/checkpoint/ "
                    "(loadable by plain open_clip), DIR/state/ (for --resume) and DIR/log.jsonl. "
                    "Under `torchrun --nproc_per_node N` the same command trains with DDP.")
    align.add_argument("--config", required=True, help="YAML file of overrides, e.g. configs/embedded/adv-w2s.yaml")
    align.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override one setting, e.g. --set optim.lr=1e-4 (repeatable)")
    align.add_argument("--output-dir", help="run folder (default runs/align/<config name>)")
    align.add_argument("--resume", action="store_true", help="continue the run in --output-dir from DIR/state/")
    _add_home(align)
    align.set_defaults(run=_run_align)

    demo = commands.add_parser(
        "demo", help="the reference study: every method on the embedded world, evaluated, one report",
        description="Build or reuse the embedded world, train every method and ablation of the study "
                    "(vanilla and adversarial W2S from the natural and the robust weak teacher, Adv-W2S "
                    "and its ablations, TeCoA, PMG-AFT, FARE, AGFT, and Table D: multi-teacher averaging, "
                    "RAVEN and Selective W2SG, clean and adversarial, on the alignment split and the "
                    "shifted one) for each seed, evaluate every model on every task (clean, PGD-20 then "
                    "APGD-CE on the images PGD-20 left, standard AutoAttack for the Table B defences, an "
                    "epsilon curve) with the soundness audits, and write results.md, results.json and plots. "
                    "Finished jobs are kept: a killed or repeated demo redoes only what is missing.")
    demo.add_argument("--quick", action="store_true", help="a smaller but complete study: one seed, 30 "
                                                           "training steps, fewer images (minutes)")
    demo.add_argument("--seeds", type=int, help="training seeds per run (default: 3, or 1 with --quick)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                      help="override one alignment setting for EVERY run alike, e.g. --set optim.lr=1e-4")
    demo.add_argument("--output-dir", help="work folder and report (default runs/demo or runs/demo-quick)")
    demo.add_argument("--report-dir", help="where results.md, results.json and the plots go "
                                           "(default: --output-dir)")
    demo.add_argument("--workers", type=int, help="jobs run side by side (default: 2 on a CPU with 2+ "
                                                  "cores, each on half of them; 1 on a GPU)")
    _add_home(demo)
    demo.set_defaults(run=_run_demo)

    theory = commands.add_parser(
        "theory", help="the theory lab: three weak-to-strong theory papers as small synthetic experiments",
        description="Run one experiment of the theory lab (linear-to-nonlinear: Oh, Song and Yun; mechanisms: "
                    "Moniri and Hassani; feature-elicitation: Awano and Suzuki), writing NAME.json (config, "
                    "seed, every prediction with its verdict and numbers) and NAME-*.png, or `all` of them "
                    "with the report theory.md. Torch and numpy on the CPU; minutes, not hours.")
    theory.add_argument("name", metavar="NAME", help="linear-to-nonlinear, mechanisms, feature-elicitation or all")
    theory.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one setting, typed by the experiment's config, e.g. --set seeds=5 or "
                             "--set ridge.d=100; with all, name the experiment first: mechanisms.seeds=5")
    theory.add_argument("--output-dir", help="where results go (default runs/theory; for all: docs, "
                                             "writing docs/theory.md and docs/theory/)")
    theory.set_defaults(run=_run_theory)
    return parser


def _run_pretrain(args) -> int:
    from .world.report import world_table
    from .world.stages import build_world

    started = time.time()
    record = build_world(args.home)
    print(world_table(record))
    print(f"world ready in {time.time() - started:.0f}s: {Path(record['models']['weak']).parent}")
    return 0


def _check_sizes(args) -> None:
    if args.n_samples is not None and args.n_samples < 1:
        raise UserError(f"--n-samples must be >= 1, got {args.n_samples}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")


def _run_zeroshot(args) -> int:
    from .checkpoints import atomic_write_text
    from .eval.benchmarks import resolve

    _check_sizes(args)
    if args.output and Path(args.output).is_dir():
        raise UserError(f"--output {args.output} is a folder: give the path of a JSON file")
    from .eval.zeroshot import zero_shot_report

    benchmarks = resolve(args.suite, args.dataset, args.home, args.classnames)
    report = zero_shot_report(args.model, benchmarks, home=args.home, n_samples=args.n_samples,
                              seed=args.seed, batch_size=args.batch_size, skip_bad_images=args.skip_bad_images)
    width = max(len(name) for name in report["tasks"])
    print(f"{'task':<{width}}  clean_acc      n")
    for name, row in report["tasks"].items():
        print(f"{name:<{width}}  {100 * row['clean_acc']:8.1f}%  {row['n']:5d}")
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, json.dumps(report, indent=2))
        print(f"wrote {output}")
    return 0


def _run_eval(args) -> int:
    from .attacks import parse_eps
    from .eval.benchmarks import default_protocol, resolve
    from .eval.registry import ATTACKS, get_protocol
    from .eval.report import audit_section, markdown_table, write_report
    from .eval.runner import EvalSettings
    from .eval.suite import run_eval

    _check_sizes(args)
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise UserError(f"--output-dir {args.output_dir} is a file: give a folder")
    benchmarks = resolve(args.suite, args.dataset, args.home, args.classnames)
    protocol = get_protocol(args.protocol or default_protocol(args.suite, args.dataset))
    try:
        eps = tuple(parse_eps(e) for e in args.eps.split(",")) if args.eps is not None else protocol.eps
    except ValueError as error:
        raise UserError(str(error)) from None
    if len(set(eps)) < len(eps):  # the records of one radius would overwrite each other
        raise UserError(f"--eps {args.eps}: a radius is listed twice")
    if args.pgd_steps is not None and args.pgd_steps < 1:
        raise UserError(f"--pgd-steps must be >= 1, got {args.pgd_steps}")
    attacks = tuple(args.attack.split(",")) if args.attack is not None else protocol.attacks
    for attack in attacks:
        if attack not in ATTACKS:
            raise unknown_name("attack", attack, ATTACKS)
    n_samples = args.n_samples if args.n_samples is not None else protocol.n_samples
    settings = EvalSettings(attacks=tuple(a for a in ATTACKS if a in attacks), eps=tuple(sorted(eps)),
                            pgd_steps=protocol.pgd_steps if args.pgd_steps is None else args.pgd_steps,
                            n_samples=n_samples,
                            seed=args.seed, batch_size=args.batch_size)
    records = run_eval(args.model, benchmarks, settings, args.output_dir, home=args.home, device=args.device,
                       protocol=protocol.name, skip_bad_images=args.skip_bad_images)
    print(markdown_table(records))
    print(audit_section(records))
    paths = write_report(args.output_dir)
    print(f"results: {args.output_dir} (report: {paths['markdown']})")
    if not args.allow_unsound and not all(record.audits_passed for record in records):
        print("robust-w2s eval: error: a soundness audit failed (see above); --allow-unsound to accept",
              file=sys.stderr)
        return 1
    return 0


def _run_convert(args) -> int:
    from .checkpoints import CONFIG_FILE, save_checkpoint
    from .models import load_model

    output = Path(args.output_dir).resolve()
    if output.exists() and not (output / CONFIG_FILE).is_file():
        raise UserError(f"--output-dir {output} exists and is not a checkpoint folder: give a new path "
                        f"(an existing checkpoint folder is replaced)")
    model, _, _ = load_model(args.model, home=args.home)
    extra = {"converted_from": args.model, **getattr(model, "rw2s_weights", {})}
    folder = save_checkpoint(model, output, extra=extra)
    print(f"checkpoint: {folder} ({extra.get('layout', 'open_clip weights')}; lineage: "
          f"{getattr(model, 'rw2s_lineage', None) or 'none'}; quick_gelu: "
          f"{bool(model.rw2s_model_cfg.get('quick_gelu'))})")
    return 0


def _run_align(args) -> int:
    from .align import load_config, train
    from .checkpoints import exclusive_folder

    config = load_config(args.config, args.overrides)
    output_dir = args.output_dir or str(Path("runs/align") / Path(args.config).stem)
    # One run per folder: a second one refuses instead of mixing its states with this one's. Under
    # torchrun, rank 0 (the one that writes) holds the lock.
    main_process = int(os.environ.get("RANK", "0")) == 0
    with exclusive_folder(output_dir) if main_process else contextlib.nullcontext():
        checkpoint = train(config, output_dir, home=args.home, resume=args.resume)
    if main_process:
        print(f"checkpoint: {checkpoint} (log: {Path(output_dir) / 'log.jsonl'})")
    return 0


def _run_demo(args) -> int:
    import dataclasses

    import torch

    from .checkpoints import exclusive_folder
    from .study import FULL, QUICK, run_study

    settings = QUICK if args.quick else FULL
    if args.seeds is not None:
        if args.seeds < 1:
            raise UserError(f"--seeds must be >= 1, got {args.seeds}")
        settings = settings.with_seeds(args.seeds)
    if args.overrides:
        from .align import load_config
        from .study import check_runs
        load_config(None, args.overrides)  # a bad key or value fails now, not in every job
        settings = dataclasses.replace(settings, overrides=settings.overrides + tuple(args.overrides))
        check_runs(settings)  # and so does one that a run of the study refuses
    workers = (1 if torch.cuda.is_available() else min(2, os.cpu_count() or 1)) if args.workers is None \
        else args.workers
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    output_dir = args.output_dir or ("runs/demo-quick" if args.quick else "runs/demo")
    with exclusive_folder(output_dir):  # one study per folder: a second one refuses
        report = run_study(settings, output_dir, home=args.home, workers=workers, report_dir=args.report_dir,
                           command=" ".join(["robust-w2s", *sys.argv[1:]]))
    print(f"report: {report}")
    return 0


def _run_theory(args) -> int:
    from .theory import run_all, run_experiment

    if args.name == "all":
        output_dir = args.output_dir or "docs"
        command = " ".join(["robust-w2s theory all", *(f"--set {o}" for o in args.overrides),
                            *([f"--output-dir {args.output_dir}"] if args.output_dir else [])])
        print(f"report: {run_all(args.overrides, output_dir, command)}")
        return 0
    result = run_experiment(args.name, args.overrides, args.output_dir or "runs/theory")
    for prediction in result.predictions:
        print(f"[{prediction.verdict}] {prediction.claim}\n    {prediction.evidence}")
    print(f"results: {Path(args.output_dir or 'runs/theory') / args.name}.json ({result.seconds:.0f} s)")
    return 0


# Errors about a path itself, not about what the program did with it: bad input (exit 2).
PATH_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG)
# What to do after a full disk: checkpoints, states and result records are written atomically.
FULL_DISK_HINT = {
    "align": "the last complete checkpoint and state are kept: free space, then run again with --resume",
    None: "free space, then run again",
}


def _fail(command: str, message: str, code: int) -> int:
    """The CLI's one line on stderr for a failed command (a message's own line breaks are joined)."""
    print(f"robust-w2s {command}: error: {' '.join(message.splitlines())}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")  # open_clip warns on every random-init model
    logging.getLogger("robust_w2s").setLevel(logging.WARNING)  # ours are meant to be read
    # The hub logs each retry while offline (twice, through its handler and ours): our one line says it.
    # huggingface_hub sets its level from this variable when it is first imported.
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as error:
        return _fail(args.command, str(error), 2)
    except OSError as error:
        if error.errno in DISK_FULL:  # the input was fine, the run could not finish: a failed run
            where = f" writing {error.filename}" if error.filename else ""
            kept = FULL_DISK_HINT.get(args.command, FULL_DISK_HINT[None])
            return _fail(args.command, f"{os.strerror(error.errno).lower()}{where}; {kept}", 1)
        if error.errno in PATH_ERRORS and error.filename:  # a path the user gave (or --home) cannot be used
            return _fail(args.command, f"{error.filename}: {error.strerror}", 2)
        raise


if __name__ == "__main__":
    sys.exit(main())

"""SIGKILL an alignment run and a study at random moments, resume them, and check nothing was lost.

    OMP_NUM_THREADS=1 python bench/kill_resume.py [--work runs/kill-resume] [--home DIR] [--kills 20]
                                                 [--demo-kills 5] [--seed S] [--set key=value ...]

About 10 minutes on 2 CPU cores. It builds a tiny embedded world in ``WORK/home`` (part 1 may use the
built world of ``--home`` instead) and a *random student*: the world's strong CLIP with patch dropout 0.5, so its
forward in train mode draws from torch's global RNG, as users' students with dropout do.

Part 1, alignment. ``robust-w2s align`` (a subprocess; configs/embedded/adv-w2s.yaml with EMA, 2 data
workers, a zero-shot check, a checkpoint and state written after every step, 24 steps that cross an
epoch of the tiny world) runs once uninterrupted, then once more in another folder where it is killed
``--kills`` times with SIGKILL (its whole process group: data workers too), each time rerun with
``--resume`` (without it while no state/ exists yet). Each kill lands at a random moment: a fifth
during start-up (a uniform delay up to the reference's first logged step), the others a uniform
delay after the log line of a random step (drawn once, sorted) of up to one step, or, for half of
them, up to a third of a step: the time when that step's checkpoint/ and state/ are written. The
kills that find a staging folder or a log being rewritten are counted as landing during a write. Right after each kill: checkpoint/ loads with
``robust_w2s.load_checkpoint`` and with plain ``open_clip.create_model('local-dir:...')``, state/
loads as ``--resume`` reads it, and no staging folder is in the way of the next write.

A kill counts as **exact** when (a) right after it every folder loads as above and (b) the run that
resumes from it continues exactly: every log record it writes until the next kill (or the end) equals
the uninterrupted run's record of the same step (loss, its terms, gradient norm, learning rate, the
zero-shot check; every float to the last bit; the timing ``images_per_s`` aside), and, for the last
kill, the finished run's weights, EMA, optimizer and scheduler state, every RNG state and log equal
the uninterrupted run's bit for bit. It prints ``<exact>/<kills> exact``, last.

Part 2, study. The study runner (``robust_w2s.study.run.run_study``, as ``robust-w2s demo`` runs it,
two jobs at a time, on a tiny plan: every run of the study, 4 steps each, small evaluations) is
killed ``--demo-kills`` times after uniform random delays of 10 to 60 s and rerun, then run to its end. After each
kill: results.json, if present, is whole and every job is done; every finished job's outputs are
recorded, and every training folder's checkpoint/ loads. At the end every job marked done at any kill
kept exactly its outputs (no job was ever marked done with outputs that later changed) and
results.json holds a record for every model and task. Then a finished training's checkpoint and one
evaluation record are deleted: the next run must redo exactly those two jobs, the retrained
checkpoint must be identical bit for bit, and results.json's numbers must not change.

Seeds are printed first: ``--seed`` replays the same kill moments (the moments, not the timing of the
machine). Exit status 0 only if every kill is exact and part 2 holds.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = 24
ALIGN = ["student={student}", f"train.steps={STEPS}", "train.batch_size=16", "train.checkpoint_every=1",
         "train.eval_every=8", "check.tasks=[shape]", "check.n_samples=16", "check.pgd_steps=2",
         "attack.steps=2", "attack.refine_steps=1", "optim.warmup_steps=2", "optim.ema_decay=0.9",
         "data.workers=2"]


# ---------------------------------------------------------------- the world and the random student

def tiny_world():
    from robust_w2s.world.recipes import PretrainSettings, RobustSettings
    from robust_w2s.world.stages import WorldConfig
    return WorldConfig(
        seed=0, test_size=48, alignment_size=128, robust_check_size=16,
        weak=PretrainSettings("rw2s-weak", "weak", corpus_size=512, steps=8, batch_size=64, warmup=2),
        strong=PretrainSettings("rw2s-strong", "strong", corpus_size=512, steps=8, batch_size=64, warmup=2),
        robust=RobustSettings(steps=3, batch_size=32, pgd_steps=2))


def random_student(home: Path, folder: Path) -> Path:
    """The world's strong CLIP with patch dropout 0.5 in its image tower, as a checkpoint folder."""
    from robust_w2s.checkpoints import CONFIG_FILE, WEIGHTS_FILE
    from robust_w2s.layout import model_dir

    folder.mkdir(parents=True, exist_ok=True)
    strong = model_dir("strong", home)
    shutil.copy(strong / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    config = json.loads((strong / CONFIG_FILE).read_text())
    config["model_cfg"]["vision_cfg"]["patch_dropout"] = 0.5
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    return folder


# ---------------------------------------------------------------- processes

def start(command: list[str], log: Path) -> subprocess.Popen:
    """``command`` in a process group of its own (so that a kill reaches its workers too)."""
    with open(log, "a") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def kill(process: subprocess.Popen, folder: Path) -> bool:
    """SIGKILL ``process``'s group; wait until its lock on ``folder`` is free. False if it had ended."""
    ended = process.poll() is not None
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    deadline = time.time() + 30  # its data workers die a moment later and release the lock then
    with open(folder / ".lock", "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(lock, fcntl.LOCK_UN)
                return not ended
            except BlockingIOError:
                if time.time() > deadline:
                    raise RuntimeError(f"{folder}/.lock still held 30 s after the kill")
                time.sleep(0.05)


def logged_steps(log: Path) -> int:
    """The last step with a complete record in ``log`` (0 if none)."""
    if not log.is_file():
        return 0
    lines = log.read_text().split("\n")[:-1]
    return max((json.loads(line)["step"] for line in lines if '"loss"' in line), default=0)


# ---------------------------------------------------------------- comparisons

def records(log: Path) -> dict[tuple[int, str], dict]:
    """The complete step and check records of a log, by (step, kind), timing aside (none yet: {})."""
    out = {}
    for line in (log.read_text() if log.is_file() else "").split("\n")[:-1]:
        record = json.loads(line)
        if "event" not in record:
            kind = "check" if "check" in record else "step"
            out[(record["step"], kind)] = {k: v for k, v in record.items() if k != "images_per_s"}
    return out


def same(x, y) -> bool:
    import torch
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(map(same, x, y))
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
    return x == y


def same_run(a: Path, b: Path) -> list[str]:
    """What differs between two finished runs: weights, EMA, training state, log (timing aside)."""
    import torch
    from safetensors.torch import load_file

    from robust_w2s.checkpoints import WEIGHTS_FILE
    differ = [name for name in (f"checkpoint/{WEIGHTS_FILE}", "state/student.safetensors", "state/ema.safetensors")
              if not same(load_file(a / name), load_file(b / name))]
    states = [torch.load(run / "state" / "train_state.pt", weights_only=True) for run in (a, b)]
    differ += [f"train_state.pt: {key}" for key in states[0] if not same(states[0][key], states[1].get(key))]
    if [*records(a / "log.jsonl").items()] != [*records(b / "log.jsonl").items()]:
        differ.append("log.jsonl")
    return differ


def loads(run: Path) -> list[str]:
    """What of ``run`` does not load right now: checkpoint/ (ours, plain open_clip), state/."""
    import open_clip

    from robust_w2s.align.state import load_state
    from robust_w2s.models import load_checkpoint
    problems = []
    if (run / "state").exists() and not (run / "checkpoint").exists():
        problems.append("state/ without checkpoint/")
    if (run / "checkpoint").exists():
        for name, load in (("load_checkpoint", load_checkpoint),
                           ("open_clip", lambda path: open_clip.create_model(f"local-dir:{path}"))):
            try:
                load(run / "checkpoint")
            except Exception as error:  # any failure is the finding
                problems.append(f"checkpoint/ ({name}): {error!r}")
    if (run / "state").exists():
        try:
            load_state(run / "state", json.loads((run / "state" / "config.json").read_text()))
        except Exception as error:
            problems.append(f"state/: {error!r}")
    return problems


# ---------------------------------------------------------------- part 1: alignment

def align_command(run: Path, home: Path, student: Path, extra: list[str], resume: bool) -> list[str]:
    sets = [s.format(student=student) for s in ALIGN] + extra
    return [sys.executable, "-m", "robust_w2s.cli", "align", "--config", str(ROOT / "configs/embedded/adv-w2s.yaml"),
            "--output-dir", str(run), "--home", str(home), *(x for s in sets for x in ("--set", s)),
            *(["--resume"] if resume else [])]


def _in_writing(run: Path) -> list[str]:
    """Folders being staged or swapped, a log being rewritten: what a write in progress leaves."""
    return [p.name for p in run.iterdir() if ".staging-" in p.name or p.name.endswith(".partial")]


def kill_plan(rng: random.Random, kills: int) -> list[int]:
    """Kill targets: -1 = during start-up, k = up to one step after the log line of step k + 1."""
    steps = sorted(rng.randrange(0, STEPS - 1) for _ in range(kills))
    return [-1 if rng.random() < 0.2 else step for step in steps]


def part_align(work: Path, home: Path, student: Path, extra: list[str], kills: int,
               rng: random.Random) -> tuple[int, int, bool]:
    """(kills exact, kills made, the finished run identical to the uninterrupted one)."""
    whole, killed = work / "align" / "whole", work / "align" / "killed"
    for run in (whole, killed):
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
    started = time.time()
    reference = start(align_command(whole, home, student, extra, resume=False), whole / "process.log")
    while logged_steps(whole / "log.jsonl") == 0 and reference.poll() is None:
        time.sleep(0.01)
    first_step = time.time() - started
    if reference.wait():
        sys.exit(f"the uninterrupted run failed: {whole / 'process.log'}")
    step_time = (time.time() - started - first_step) / (STEPS - 1)
    expected = records(whole / "log.jsonl")
    print(f"uninterrupted: {time.time() - started:.0f} s (first step logged after {first_step:.1f} s, "
          f"{step_time:.2f} s a step)", flush=True)

    exact, made, reported, mid_write = [], 0, set(), 0
    for number, target in enumerate(kill_plan(rng, kills)):
        resume = (killed / "state").is_dir()
        left = set(_in_writing(killed))  # what earlier kills left, not this one
        process = start(align_command(killed, home, student, extra, resume), killed / "process.log")
        if target < 0:
            time.sleep(rng.uniform(0, first_step))
        else:
            while logged_steps(killed / "log.jsonl") <= target and process.poll() is None:
                time.sleep(0.005)
            # half of them in the first third of the step, where the step's checkpoint and state are written
            time.sleep(rng.uniform(0, step_time / (3 if rng.random() < 0.5 else 1)))
        at = logged_steps(killed / "log.jsonl")
        if not kill(process, killed):
            print(f"kill {number + 1}: the run had ended (exit {process.returncode}) before it", flush=True)
            break
        made += 1
        # what the kill cut short: a folder being staged or swapped, the log being rewritten
        writing = sorted(set(_in_writing(killed)) - left)
        mid_write += bool(writing)
        # the segment the kill ended (resumed from the previous kill): its records must be the uninterrupted run's
        diverged = {(key, json.dumps(record)) for key, record in records(killed / "log.jsonl").items()
                    if expected.get(key) != record} - reported
        reported |= diverged
        if exact and diverged:
            exact[-1] = False
        problems = loads(killed) + [f"log record {key} differs" for key, _ in sorted(diverged)]
        exact.append(not problems)
        print(f"kill {number + 1}: {'start-up' if target < 0 else f'after step {target + 1}'} (logged: {at}"
              f"{', writing ' + ' '.join(writing) if writing else ''}); {'ok' if not problems else '; '.join(problems)}",
              flush=True)
    final = start(align_command(killed, home, student, extra, (killed / "state").is_dir()), killed / "process.log")
    if final.wait():
        sys.exit(f"the final resume failed: {killed / 'process.log'}")
    differ = same_run(whole, killed)
    if exact and differ:
        exact[-1] = False
    print(f"{mid_write} of {made} kills landed during a write")
    print(f"finished run against the uninterrupted one: {'identical' if not differ else 'differs: ' + ', '.join(differ)}")
    return sum(exact), made, not differ


# ---------------------------------------------------------------- part 2: the study

def tiny_study():
    import dataclasses

    from robust_w2s.study.plan import QUICK
    return dataclasses.replace(
        QUICK, overrides=("train.steps=4", "train.batch_size=16", "train.checkpoint_every=1", "attack.steps=1",
                          "attack.refine_steps=1", "optim.warmup_steps=1", "method.pik.labels=32",
                          "method.graph.neighbours=4"),
        n_eval=6, n_autoattack=2, n_curve=4, curve_eps=("2/255", "4/255"), audit_samples=4)


def study_child(output: Path, home: Path) -> None:
    """What ``robust-w2s demo`` does, on the tiny plan and world: the folder's lock, then the study."""
    from robust_w2s.checkpoints import exclusive_folder
    from robust_w2s.study.run import run_study
    with exclusive_folder(output):
        print(run_study(tiny_study(), output, home=home, workers=2, world_config=tiny_world()), flush=True)


def fingerprints(jobs) -> dict[str, dict[str, str]]:
    """{job key: {output file: sha256}} of every job marked done now."""
    from robust_w2s.study.run import is_done
    return {job.key: {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in job.outputs()}
            for job in jobs if is_done(job)}


def study_problems(output: Path, jobs) -> list[str]:
    """What is wrong on disk now: a partial results.json, or a training checkpoint that does not load."""
    import open_clip

    from robust_w2s.study.run import TrainJob, is_done
    problems = []
    if (output / "results.json").exists():
        json.loads((output / "results.json").read_text())
        problems += [f"results.json written before {job.key} was done" for job in jobs if not is_done(job)]
    for job in jobs:
        if isinstance(job, TrainJob) and (Path(job.folder) / "checkpoint").exists():
            try:
                open_clip.create_model(f"local-dir:{Path(job.folder) / 'checkpoint'}")
            except Exception as error:
                problems.append(f"{job.key}: checkpoint/ does not load: {error!r}")
    return problems


def part_study(work: Path, home: Path, kills: int, rng: random.Random) -> bool:
    from robust_w2s.layout import WORLD_MODELS, read_world
    from robust_w2s.study.plan import RUNS
    from robust_w2s.study.run import MARKER, EvalJob, TrainJob, plan_jobs

    output = work / "study"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    jobs = plan_jobs(tiny_study(), output / "work", read_world(home))
    command = [sys.executable, __file__, "--study-child", str(output), "--home", str(home)]
    seen: dict[str, dict[str, str]] = {}
    problems = []
    for number in range(kills):
        process = start(command, output / "process.log")
        delay = rng.uniform(10, 60)  # start-up (imports, world, two pool workers) takes about 15 s
        time.sleep(delay)
        if not kill(process, output):
            print(f"study kill {number + 1}: the study had ended before it", flush=True)
            break
        done = fingerprints(jobs)
        found = study_problems(output, jobs)
        problems += found
        for key, outputs in done.items():
            seen.setdefault(key, outputs)
        print(f"study kill {number + 1} after {delay:.1f} s: {len(done)}/{len(jobs)} jobs done; "
              f"{'ok' if not found else '; '.join(found)}", flush=True)
    if start(command, output / "process.log").wait():
        sys.exit(f"the study failed after its kills: {output / 'process.log'}")
    final = fingerprints(jobs)
    problems += [f"{key} was marked done with other outputs than it ended with" for key, outputs in seen.items()
                 if final.get(key) != outputs]
    results = json.loads((output / "results.json").read_text())
    main = {(r["model"], r["result"]["dataset"]) for r in results["records"] if r["kind"] == "main"}
    models = [*WORLD_MODELS, *(f"{run.name}/seed0" for run in RUNS)]
    if main != {(model, task) for model in models for task in read_world(home)["tasks"]}:
        problems.append("results.json lacks main records")

    # Deleted outputs: exactly their jobs are redone, to the same bytes and numbers.
    train = rng.choice([job for job in jobs if isinstance(job, TrainJob)])
    evaluation = rng.choice([job for job in jobs if isinstance(job, EvalJob) and job.needs != train.key])
    weights = train.outputs()[1]
    before = weights.read_bytes()
    weights.unlink()
    rng.choice(evaluation.outputs()).unlink()
    markers = {job.key: (Path(job.folder) / MARKER).stat().st_mtime_ns for job in jobs}
    if start(command, output / "process.log").wait():
        sys.exit(f"the study failed after the deletions: {output / 'process.log'}")
    redone = sorted(job.key for job in jobs if (Path(job.folder) / MARKER).stat().st_mtime_ns != markers[job.key])
    if redone != sorted([train.key, evaluation.key]):
        problems.append(f"deleting outputs of {train.key} and {evaluation.key} redid {redone}")
    if weights.read_bytes() != before:
        problems.append(f"{train.key} retrained to other weights")
    keys = ("dataset", "attack", "eps", "n_samples", "clean_acc", "robust_acc", "worst_case_acc")
    numbers = lambda raw: [[r["model"], *(r["result"][k] for k in keys)] for r in raw["records"]]
    if numbers(json.loads((output / "results.json").read_text())) != numbers(results):
        problems.append("results.json's numbers changed after the redo")
    print(f"study: deleted {weights.name} of {train.key} and a record of {evaluation.key}: redid {redone}")
    print(f"study: {'ok' if not problems else '; '.join(problems)}", flush=True)
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="runs/kill-resume", help="scratch folder (replaced)")
    parser.add_argument("--home", help="a built world for part 1 (default and part 2: a tiny one built in WORK/home)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the alignment run")
    parser.add_argument("--demo-kills", type=int, default=5, help="SIGKILLs of the study (0: skip part 2)")
    parser.add_argument("--seed", type=int, help="replay these kill moments (default: a fresh seed)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="more alignment settings")
    parser.add_argument("--study-child", help=argparse.SUPPRESS)  # the study process part 2 kills
    args = parser.parse_args()
    if args.study_child:
        study_child(Path(args.study_child), Path(args.home))
        return 0

    from robust_w2s.world.stages import build_world

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 32)
    print(f"seed {seed} (replay: --seed {seed})", flush=True)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    tiny = work / "home"
    if args.demo_kills or not args.home:
        with open(work / "world-build.log", "w") as log, contextlib.redirect_stderr(log):
            build_world(tiny, tiny_world())
    home = Path(args.home).resolve() if args.home else tiny
    student = random_student(home, work / "random-student")
    rng = random.Random(seed)
    started = time.time()
    exact, made, identical = part_align(work, home, student, args.overrides, args.kills, rng)
    print(f"part 1: {time.time() - started:.0f} s", flush=True)
    study_ok = True
    if args.demo_kills:
        started = time.time()
        study_ok = part_study(work, tiny, args.demo_kills, rng)
        print(f"part 2: {time.time() - started:.0f} s", flush=True)
    print(f"{exact}/{made} exact" + ("" if made == args.kills else f" ({args.kills - made} kills missed: the run had ended)"))
    return 0 if exact == made == args.kills and identical and study_ok else 1


if __name__ == "__main__":
    sys.exit(main())

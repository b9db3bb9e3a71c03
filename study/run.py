"""Running the study: jobs (train one run for one seed, evaluate one model), cached, run by a pool.

Each job writes into its own folder and, last, a marker with its fingerprint (the job's fields,
the world's fingerprint and the fingerprint of the job it needs) and the size of each output the
study reads, so a killed or repeated study redoes only what is missing or stale: a job killed
before its marker, and a finished job whose outputs were deleted or replaced since. A killed
training resumes from its ``state/``.
"""
from __future__ import annotations

import concurrent.futures as futures
import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from robust_w2s.checkpoints import CONFIG_FILE, WEIGHTS_FILE, atomic_write_text
from robust_w2s.errors import UserError
from robust_w2s.layout import model_spec
from robust_w2s.world.stages import WorldConfig, build_world

from .plan import CURVE_MODELS, RUNS, TABLE_B, StudySettings, run_overrides, study_models

MARKER = "study-job.json"
# Every model's main evaluation: PGD-20, then APGD-CE (100 steps) on the samples PGD-20 left robust; claims
# are judged by the per-sample worst case of the two, never by PGD-20 alone.
MAIN_ATTACKS = ("pgd", "apgd-ce")
PRIORITY = {"autoattack": 0, "train": 1, "main": 2, "curve": 3}  # long jobs first, so the pool ends level


@dataclass(frozen=True)
class TrainJob:
    key: str
    model: str               # study model id, e.g. "adv-w2s/seed1"
    folder: str
    config: str              # YAML file
    overrides: tuple[str, ...]
    upstream: str            # the world's fingerprint
    needs: str | None = None
    kind: str = "train"

    def run(self, home) -> None:
        from robust_w2s.align import load_config, train_or_resume

        # A killed run continues where it stopped; one of another config or world starts over.
        train_or_resume(load_config(self.config, list(self.overrides)), self.folder, home=home,
                        depends_on=self.upstream)

    def outputs(self) -> list[Path]:
        """What the study reads of a finished training (:func:`collect`, the evaluations)."""
        folder = Path(self.folder)
        return [folder / "checkpoint" / CONFIG_FILE, folder / "checkpoint" / WEIGHTS_FILE, folder / "log.jsonl"]


@dataclass(frozen=True)
class EvalJob:
    key: str
    model: str               # study model id
    folder: str
    kind: str                # "main" (clean + PGD), "autoattack" (Table B) or "curve" (epsilon curve)
    spec: str                # model spec or checkpoint folder
    attacks: tuple[str, ...]
    eps: tuple[float, ...]
    n_samples: int
    eval_seed: int
    audit_samples: int
    upstream: str            # fingerprint of the training job (or of the world)
    tasks: tuple[str, ...] = ()  # () = every task of the world
    needs: str | None = None
    cascade: bool = False    # later attacks only on what earlier ones left robust (EvalSettings.cascade)

    def run(self, home) -> None:
        from robust_w2s.eval.benchmarks import EMBEDDED_PGD_STEPS, resolve
        from robust_w2s.eval.runner import EvalSettings
        from robust_w2s.eval.suite import run_eval
        from robust_w2s.eval.zeroshot import task_name

        folder = Path(self.folder)
        for stale in folder.glob("*.json"):
            stale.unlink()
        benchmarks = [b for b in resolve("embedded", None, home) if not self.tasks or task_name(b) in self.tasks]
        settings = EvalSettings(attacks=self.attacks, eps=self.eps, pgd_steps=EMBEDDED_PGD_STEPS,
                                n_samples=self.n_samples, seed=self.eval_seed, audit_samples=self.audit_samples,
                                cascade=self.cascade)
        run_eval(self.spec, benchmarks, settings, folder, home=home, protocol="embedded")

    def outputs(self) -> list[Path]:
        """The evaluation records (one JSON per task, attack and eps), as :func:`collect` reads them."""
        return sorted(path for path in Path(self.folder).glob("*.json") if path.name != MARKER)


Job = TrainJob | EvalJob


def fingerprint(job: Job) -> str:
    return hashlib.sha256(json.dumps(asdict(job), sort_keys=True).encode()).hexdigest()[:16]


def is_done(job: Job) -> bool:
    """Whether ``job`` finished with its current fingerprint and every output it wrote is still
    there, of the size it had (a deleted or rewritten output: the job runs again)."""
    marker = Path(job.folder) / MARKER
    if not marker.is_file():
        return False
    record = json.loads(marker.read_text())
    outputs = record.get("outputs")  # {path relative to the job's folder: size in bytes}
    return (record.get("fingerprint") == fingerprint(job) and bool(outputs)
            and all(_size(Path(job.folder) / name) == size for name, size in outputs.items()))


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def job_seconds(job: Job) -> float:
    marker = Path(job.folder) / MARKER
    return json.loads(marker.read_text())["seconds"] if marker.is_file() else 0.0


def plan_jobs(settings: StudySettings, work: Path, world: dict) -> list[Job]:
    """Every job of the study, each after the job it needs; Table B runs of the first seed first."""
    from robust_w2s.attacks import parse_eps

    world_fp, eps = world["fingerprint"], float(world["epsilon"])
    curve_eps = tuple(sorted(parse_eps(e) for e in settings.curve_eps))
    order = sorted(RUNS, key=lambda run: run.name not in TABLE_B)
    jobs: list[Job] = []
    trained: dict[str, TrainJob] = {}
    for seed in settings.seeds:
        for run in order:
            model = f"{run.name}/seed{seed}"
            job = TrainJob(key=f"train {model}", model=model, folder=str(work / "runs" / run.name / f"seed{seed}"),
                           config=str(run.config_path), overrides=tuple(run_overrides(run, seed, settings)),
                           upstream=world_fp)
            trained[model] = job
            jobs.append(job)

    def evaluation(model, kind, *, attacks, eps_values, n_samples, tasks=(), cascade=False):
        source = trained.get(model.id)
        suffix = f"/{tasks[0]}" if tasks else ""
        return EvalJob(key=f"{kind} {model.id}{suffix}", model=model.id,
                       folder=str(work / "eval" / kind / f"{model.id}{suffix}"), kind=kind,
                       spec=str(Path(source.folder) / "checkpoint") if source else model_spec(model.id),
                       attacks=attacks, eps=eps_values, n_samples=n_samples, eval_seed=settings.eval_seed,
                       audit_samples=settings.audit_samples, upstream=fingerprint(source) if source else world_fp,
                       tasks=tasks, needs=source.key if source else None, cascade=cascade)

    autoattack_seeds = set(settings.seeds[:settings.autoattack_seeds])
    for model in study_models(settings):
        jobs.append(evaluation(model, "main", attacks=MAIN_ATTACKS, eps_values=(eps,), n_samples=settings.n_eval,
                               cascade=True))
        if model.group in TABLE_B and (model.seed is None or model.seed in autoattack_seeds):
            # One job per task: standard AutoAttack is the study's longest work; finer jobs balance the pool.
            tasks = world["tasks"] if settings.autoattack_all_tasks else [world["alignment_task"]]
            jobs += [evaluation(model, "autoattack", attacks=("pgd", "autoattack"), eps_values=(eps,),
                                n_samples=settings.n_autoattack, tasks=(task,)) for task in tasks]
        if model.group in CURVE_MODELS:
            jobs.append(evaluation(model, "curve", attacks=("pgd",), eps_values=curve_eps, n_samples=settings.n_curve))
    return jobs


def _init_worker(threads: int, parent: int) -> None:
    import torch
    torch.set_num_threads(threads)
    # Killing the study's main process alone (SIGTERM to its PID, not Ctrl-C to the process group) would
    # leave each worker to finish its job, while a restarted study runs the same job in the same folder.
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _exit_when_orphaned(parent: int, poll_seconds: float = 0.5) -> None:
    """End this worker as soon as ``parent`` (the study's PID) is no longer its parent. Its job is lost
    (its marker is written last, so the next study redoes it; a training resumes from its state/)."""
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    os._exit(1)


def _execute(job: Job, home) -> float:
    """Run ``job`` with its output (progress bars, warnings) in ``folder/job.log``, then mark it done."""
    started = time.time()
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).unlink(missing_ok=True)  # a job redone is not done until it finishes again
    with open(folder / "job.log", "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        job.run(home)
    seconds = time.time() - started
    outputs = {str(path.relative_to(folder)): path.stat().st_size for path in job.outputs()}
    atomic_write_text(folder / MARKER, json.dumps({"fingerprint": fingerprint(job), "key": job.key,
                                                   "seconds": seconds, "outputs": outputs}, indent=2))
    return seconds


class _InProcess(futures.Executor):
    """One worker: run each job here, at submit time (no process start-up, the caller's threads)."""

    def submit(self, fn, /, *args, **kwargs):
        future = futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # reported by the caller, like a pool's failed job
            future.set_exception(error)
        return future


def execute(jobs: list[Job], home, workers: int) -> dict[str, str]:
    """Run every job that is not done, ``workers`` at a time; returns {job key: error} of failures."""
    todo = [job for job in jobs if not is_done(job)]
    finished = {job.key for job in jobs if job not in todo}
    failed: dict[str, str] = {}
    if not todo:
        return failed
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = (futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker, initargs=(threads, os.getpid()))
            if workers > 1 else _InProcess())
    bar = tqdm(total=len(todo), desc="study", unit="job", dynamic_ncols=True)
    try:
        _schedule(todo, finished=finished, failed=failed, pool=pool, workers=workers, home=home, bar=bar)
    except futures.process.BrokenProcessPool:
        raise UserError("a worker process died (out of memory?); finished jobs are kept, "
                        "run the same command again (or with --workers 1)") from None
    finally:
        bar.close()
    return failed


def _schedule(todo: list[Job], *, finished: set[str], failed: dict[str, str], pool, workers: int, home,
              bar) -> None:
    """Keep ``workers`` jobs running, a job only after the one it needs; record what fails."""
    running: dict[futures.Future, Job] = {}
    with pool:
        while todo or running:
            for job in sorted(todo, key=lambda j: PRIORITY[j.kind]):
                if len(running) >= workers:
                    break
                if job.needs in failed:
                    failed[job.key] = f"skipped: {job.needs} failed"
                    todo.remove(job)
                    bar.update(1)
                elif job.needs is None or job.needs in finished:
                    todo.remove(job)
                    running[pool.submit(_execute, job, home)] = job
            if not running:
                continue
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                error = future.exception()
                if error is None:
                    finished.add(job.key)
                    bar.set_postfix_str(f"{job.key} {future.result():.0f}s")
                else:
                    failed[job.key] = f"{type(error).__name__}: {error}"
                    tqdm.write(f"study: {job.key} failed: {failed[job.key]} (log: {job.folder}/job.log)",
                               file=sys.stderr)
                bar.update(1)


def collect(jobs: list[Job], settings: StudySettings, world: dict, *, wall_seconds: float, workers: int,
            command: str) -> dict:
    """results.json: the study's settings, the world, every training's config and every eval record."""
    from robust_w2s.eval.records import load_records
    from robust_w2s.eval.versions import package_versions
    from robust_w2s.checkpoints import read_checkpoint_config

    groups = {model.id: model for model in study_models(settings)}
    records, training = [], {}
    for job in jobs:
        if isinstance(job, TrainJob):
            checkpoint = read_checkpoint_config(Path(job.folder) / "checkpoint")["robust_w2s"]
            log = [json.loads(line) for line in (Path(job.folder) / "log.jsonl").read_text().splitlines()]
            last = [line for line in log if "loss" in line][-1]
            start = next(line for line in log if line.get("event") == "start")
            training[job.model] = {"config": checkpoint["config"], "steps": checkpoint["step"],
                                   "final_loss": last["loss"], "seconds": job_seconds(job),
                                   # RAVEN's learned weights by teacher; P(IK)'s held-out record
                                   "teacher_weights": checkpoint.get("teacher_weights"), "pik": start.get("pik")}
            continue
        model = groups[job.model]
        # The eval suite's record as written, under the study's own keys for the model and the job.
        records += [{"model": job.model, "group": model.group, "seed": model.seed, "kind": job.kind,
                     "result": record.to_dict()} for record in load_records(job.folder)]
    records.sort(key=lambda r: (r["kind"], r["model"], r["result"]["dataset"], r["result"]["eps"],
                                r["result"]["attack"]))
    return {
        "study": {"settings": asdict(settings), "runs": [asdict(run) for run in RUNS],
                  "command": command,
                  "wall_seconds": wall_seconds, "job_seconds": sum(job_seconds(job) for job in jobs),
                  "workers": workers, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                  "versions": package_versions()},
        "world": {key: world.get(key) for key in ("epsilon", "teacher_train_epsilon", "alignment_task", "tasks",
                                                 "seed", "fingerprint", "measured")},
        "training": training,
        "records": records,
    }


def run_study(settings: StudySettings, output_dir: str | Path, *, home=None, workers: int = 1,
              report_dir: str | Path | None = None, command: str = "robust-w2s demo",
              world_config: WorldConfig = WorldConfig()) -> Path:
    """Build or reuse the world, run every missing job, write results.json and the report; return
    the report's path. Raises UserError if a job failed (the others are kept for the next call)."""

    from .report import write_report

    started = time.time()
    if not all(run.config_path.is_file() for run in RUNS):
        raise UserError(f"the study's configs are missing under {RUNS[0].config_path.parent}: "
                        "reinstall robust-w2s")
    output_dir = Path(output_dir)
    world = build_world(home, world_config)
    jobs = plan_jobs(settings, output_dir / "work", world)
    failed = execute(jobs, home, workers)
    if failed:
        first = next(iter(failed.items()))
        raise UserError(f"{len(failed)} study jobs failed (first: {first[0]}: {first[1]}); "
                        "finished jobs are kept, run the same command again to retry")
    results = collect(jobs, settings, world, wall_seconds=time.time() - started, workers=workers, command=command)
    report_dir = Path(report_dir or output_dir)
    return write_report(results, report_dir)


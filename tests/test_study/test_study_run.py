"""The study's plan and runner on the tiny world: every model evaluated, finished jobs kept."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import robust_w2s.study.plan as study_plan
from robust_w2s.study.plan import SEED_METHODS
import robust_w2s.study.run as study_run
from robust_w2s.align import load_config
from robust_w2s.align.config import to_dict
from robust_w2s.checkpoints import WEIGHTS_FILE
from robust_w2s.errors import UserError
from robust_w2s.layout import WORLD_MODELS
from robust_w2s.study.plan import QUICK, RUNS, run_overrides
from robust_w2s.study.run import EvalJob, TrainJob, fingerprint, plan_jobs

TINY_STUDY = dataclasses.replace(
    QUICK, overrides=("train.steps=2", "train.batch_size=16", "train.checkpoint_every=2", "attack.steps=1",
                      "attack.refine_steps=1", "optim.warmup_steps=1", "method.pik.labels=32",
                      "method.graph.neighbours=4"),
    n_eval=6, n_autoattack=2, n_curve=4, curve_eps=("2/255", "4/255"), audit_samples=4)
TABLE_D_RUNS = {name for pair in SEED_METHODS for name in pair}
WORLD = {"fingerprint": "world-1", "epsilon": 4 / 255, "tasks": ["shape", "colour"], "alignment_task": "shape"}


def test_natural_teacher_runs_differ_from_their_robust_twin_only_in_the_teacher():
    by_name = {run.name: run for run in RUNS}
    for natural, robust in (("vanilla-w2s-natural", "vanilla-w2s"), ("adv-w2s-base-natural", "adv-w2s-base")):
        configs = [to_dict(load_config(by_name[name].config_path, run_overrides(by_name[name], 0, QUICK)))
                   for name in (natural, robust)]
        assert configs[0]["teacher"] == "embedded:weak" and configs[1]["teacher"] == "embedded:weak-robust"
        assert {**configs[0], "teacher": None} == {**configs[1], "teacher": None}


def test_every_run_config_builds_its_method():
    from robust_w2s.align.methods import Plan
    for run in RUNS:
        config = load_config(run.config_path, run_overrides(run, 0, QUICK))
        Plan.build(config.method)  # raises for an unknown re-weighting or guidance
        assert (len(config.teachers) >= 2) == (config.method.guidance in ("average", "raven")), run.name
        assert config.data.dataset == f"embedded:{run.split or 'alignment'}", run.name


def test_every_method_of_the_registry_is_in_the_study():
    from robust_w2s.align import METHODS
    methods = {load_config(run.config_path).method.name for run in RUNS}
    assert methods == set(METHODS)


def test_plan_orders_jobs_after_what_they_need_and_chains_fingerprints(tmp_path):
    jobs = plan_jobs(TINY_STUDY, tmp_path, WORLD)
    keys = [job.key for job in jobs]
    for index, job in enumerate(jobs):
        if job.needs is not None:
            assert keys.index(job.needs) < index
    trains = [job for job in jobs if isinstance(job, TrainJob)]
    assert len(trains) == len(RUNS) * len(TINY_STUDY.seeds)
    evals = {job.key: job for job in jobs if isinstance(job, EvalJob)}
    assert {f"main {name}" for name in WORLD_MODELS} <= evals.keys()
    # quick study: AutoAttack only on the alignment task
    assert {job.tasks for job in evals.values() if job.kind == "autoattack"} == {("shape",)}
    # a changed training changes the fingerprint of every evaluation of its checkpoint
    other = plan_jobs(dataclasses.replace(TINY_STUDY, overrides=TINY_STUDY.overrides + ("optim.lr=1e-3",)),
                      tmp_path, WORLD)
    before = {job.key: fingerprint(job) for job in jobs}
    after = {job.key: fingerprint(job) for job in other}
    assert before["main tecoa/seed0"] != after["main tecoa/seed0"]
    assert before["main strong"] == after["main strong"]


def test_study_runs_every_job_keeps_finished_ones_and_retries_a_failure(world_home, tiny_world_config, tmp_path,
                                                                      monkeypatch, single_thread):
    def run_study():
        return study_run.run_study(TINY_STUDY, tmp_path / "demo", home=world_home, world_config=tiny_world_config)

    monkeypatch.setattr(study_run, "TABLE_B", ("strong", "adv-w2s"))  # AutoAttack: the costly part
    # The runs of claims (a)-(d) and Table B, and one of each Table D kind (the rest repeat them on
    # another split or variant): the default suite's budget. test_every_run_config_builds covers all.
    table_d = ("average", "raven", "average-shifted", "raven-shifted", "selective", "adv-raven-natural-robust")
    kept = tuple(run for run in RUNS if run.name in table_d or not (run.split or run.name in TABLE_D_RUNS))
    monkeypatch.setattr(study_run, "RUNS", kept)
    monkeypatch.setattr(study_plan, "RUNS", kept)
    original = TrainJob.run

    def fail_fare(self, home):
        if self.model.startswith("fare/"):
            raise RuntimeError("injected")
        original(self, home)

    monkeypatch.setattr(TrainJob, "run", fail_fare)
    with pytest.raises(UserError, match="failed"):
        run_study()
    monkeypatch.setattr(TrainJob, "run", original)

    executed = []
    real_execute = study_run._execute
    monkeypatch.setattr(study_run, "_execute", lambda job, home: executed.append(job.key) or real_execute(job, home))
    report = run_study()
    # the retry ran the failed training and the evaluations that needed it, nothing else
    assert sorted(executed) == ["curve fare/seed0", "main fare/seed0", "train fare/seed0"]

    results = json.loads((report.parent / "results.json").read_text())
    tasks = json.loads((world_home / "world" / "world.json").read_text())["tasks"]
    main = {(r["model"], r["result"]["dataset"]) for r in results["records"] if r["kind"] == "main"}
    models = [*WORLD_MODELS, *(f"{run.name}/seed0" for run in kept)]
    assert main == {(model, task) for model in models for task in tasks}
    assert all(r["result"]["n_samples"] == TINY_STUDY.n_eval for r in results["records"] if r["kind"] == "main")
    assert results["training"]["adv-w2s/seed0"]["config"]["train"]["steps"] == 2
    text = report.read_text()
    assert all(f"**({key})" in text for key in "abcdefghi")
    assert "| `alignment-shifted` | RAVEN | clean |" in text and "| `alignment` | Selective W2SG | clean |" in text
    assert "no Table D runs" not in text  # (e)-(i) had their runs
    weights = results["training"]["raven-shifted/seed0"]["teacher_weights"]
    assert len(weights) == 4 and sum(weights.values()) == pytest.approx(1.0)
    assert results["training"]["selective/seed0"]["pik"]["n_labels"] == 32
    assert {r["result"]["attack"] for r in results["records"] if r["kind"] == "main"} == {"pgd", "apgd-ce"}

    executed.clear()
    run_study()
    assert executed == []

    # Outputs deleted after their jobs finished: exactly those jobs run again, to the same results.
    work = tmp_path / "demo" / "work"
    weights = work / "runs" / "fare" / "seed0" / "checkpoint" / WEIGHTS_FILE
    trained = weights.read_bytes()
    weights.unlink()
    record = next(path for path in sorted((work / "eval" / "main" / "adv-w2s" / "seed0").glob("*.json"))
                  if path.name != study_run.MARKER)
    record.unlink()
    report = run_study()
    assert sorted(executed) == ["main adv-w2s/seed0", "train fare/seed0"]
    assert weights.read_bytes() == trained and record.is_file()
    again = json.loads((report.parent / "results.json").read_text())
    keys = ("model", "dataset", "attack", "eps", "n_samples", "clean_acc", "robust_acc", "worst_case_acc")
    numbers = lambda r: [[x["model"], *(x["result"][k] for k in keys)] for x in r["records"]]
    assert numbers(again) == numbers(results)


@pytest.mark.parametrize("arguments, named", [
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--set", "optim.nope=1"], "unknown config key 'optim.nope'"),
    (["--set", "optim.lr=fast"], "optim.lr"),
])
def test_demo_bad_input_exits_2_with_one_line(tmp_path, arguments, named):
    result = subprocess.run([sys.executable, "-m", "robust_w2s.cli", "demo", *arguments, "--home", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and named in result.stderr, result.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads a process's state from /proc")
def test_a_worker_ends_when_the_study_process_is_killed_alone():
    """SIGKILL to the study's PID only: its pool worker, mid-job (a 2-minute one here), must exit within
    seconds, not finish the job alongside a restarted study (before the fix it ran on to the job's end)."""
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import concurrent.futures as futures, multiprocessing, os, time
        from robust_w2s.study.run import _init_worker
        pool = futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_init_worker, initargs=(1, os.getpid()))
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 120)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(1)  # the worker is in its long job
    assert _running(worker)
    parent.kill()
    parent.wait()
    deadline = time.time() + 15
    while _running(worker) and time.time() < deadline:
        time.sleep(0.2)
    assert not _running(worker)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's exit is reaped by whoever adopts it, maybe late)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"

"""The reference study (``robust-w2s demo``): every method on the embedded world, one report.

Above both ``robust_w2s.align`` (training) and ``robust_w2s.eval`` (attacks and audits): it only plans jobs,
runs them and writes ``results.md`` from the ``results.json`` it collects.
"""
from .plan import FULL, QUICK, RUNS, StudySettings, check_runs
from .run import run_study

__all__ = ["FULL", "QUICK", "RUNS", "StudySettings", "check_runs", "run_study"]

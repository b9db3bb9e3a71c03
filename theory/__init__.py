"""The theory lab: three theoretical results on weak-to-strong generalization as small synthetic
experiments, each checked against the paper's predictions (torch and numpy only, nothing of CLIP).

    linear_to_nonlinear   Oh, Song and Yun: linear CNN teacher, two-layer ReLU CNN student
    mechanisms            Moniri and Hassani: ridge, weighted ridge, multi-index
    feature_elicitation   Awano and Suzuki: W2S versus supervised fine-tuning of pretrained features
    lab, report           the registry, --set overrides, the files of a run, docs/theory.md

Imported by the CLI only (``robust-w2s theory NAME``); it imports nothing of the project but its
errors (``.importlinter``).
"""
from .lab import EXPERIMENTS, parse_overrides, run_all, run_experiment

__all__ = ["EXPERIMENTS", "parse_overrides", "run_all", "run_experiment"]

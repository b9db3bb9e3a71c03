"""Alignment: train a strong CLIP's image tower from a weak teacher (Adv-W2S) or a baseline.

    config = load_config("configs/embedded/adv-w2s.yaml", ["optim.lr=1e-4"])
    train(config, "runs/adv-w2s")      # runs/adv-w2s/{checkpoint,state,log.jsonl}
"""
from .config import (AlignConfig, AttackSettings, CheckSettings, DataSettings, OptimSettings, TrainSettings,
                     load_config)
from .loop import train, train_or_resume
from .methods import INPUTS, METHODS, Method, MethodSettings, Plan, get_method
from .setup import optimizer_and_schedule

__all__ = ["AlignConfig", "AttackSettings", "CheckSettings", "DataSettings", "INPUTS", "METHODS", "Method",
           "MethodSettings", "OptimSettings", "Plan", "TrainSettings", "get_method", "load_config",
           "optimizer_and_schedule", "train", "train_or_resume"]

"""Alignment: train a strong CLIP's image tower from a weak teacher (Adv-W2S) or a baseline.

    config = load_config("configs/embedded/adv-w2s.yaml", ["optim.lr=1e-4"])
    train(config, "runs/adv-w2s")      # runs/adv-w2s/{checkpoint,state,log.jsonl}
"""
from .config import AlignConfig, load_config
from .loop import train
from .methods import INPUTS, METHODS, Method, MethodSettings, Plan, get_method

__all__ = ["AlignConfig", "INPUTS", "METHODS", "Method", "MethodSettings", "Plan", "get_method",
           "load_config", "train"]

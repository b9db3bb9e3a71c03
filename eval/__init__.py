"""Zero-shot adversarial evaluation: benchmark registry, runner, soundness audits, reports.

Knows nothing of training (it never imports robust_w2s.align: a contract of .importlinter). The
registry names import eagerly; the runner's are imported on first use, so a registry lookup does
not pay for importing torch.
"""
from importlib import import_module

from .registry import BENCHMARKS, PROTOCOLS, SUITES, Benchmark, Protocol, get_benchmark, get_protocol, suite_benchmarks

_LAZY = {"EvalRecord": "records", "EvalSettings": "runner", "evaluate_benchmark": "runner", "load_records": "records",
         "run_eval": "suite", "write_report": "report"}

__all__ = ["BENCHMARKS", "PROTOCOLS", "SUITES", "Benchmark", "Protocol", "get_benchmark", "get_protocol",
           "suite_benchmarks", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'robust_w2s.eval' has no attribute {name!r}")

"""Nothing a user gives is run as code: the project's source is scanned (its syntax tree, so aliases
and keyword spellings count) for the calls that would unpickle arbitrary objects, run remote code
or evaluate text. That configs and --set values never run is checked end to end by the rows
config-python-tag, set-python-tag and set-python-expression* of docs/bad-inputs.md."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
SOURCE = ("robust_w2s", "attacks", "eval", "study", "theory", "bench", "configs")

# Calls that unpickle (or otherwise run code from) their input, whatever their arguments.
UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "dill.load",
              "dill.loads", "cloudpickle.load", "cloudpickle.loads", "joblib.load", "pandas.read_pickle",
              "marshal.load", "marshal.loads", "shelve.open", "torch.jit.load", "yaml.unsafe_load",
              "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all"}
EVALUATORS = {"eval", "exec", "compile", "builtins.eval", "builtins.exec", "builtins.compile"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """``"FILE:LINE: what"`` for each call in ``source`` that could run code from data."""
    tree = ast.parse(source, filename)
    aliases = _imported_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        where = f"{filename}:{node.lineno}"
        if name == "torch.load" and not _is_constant(keywords.get("weights_only"), True):
            found.append(f"{where}: torch.load without weights_only=True")
        elif "weights_only" in keywords and not _is_constant(keywords["weights_only"], True):
            found.append(f"{where}: {name}(weights_only=...) not True")
        if "trust_remote_code" in keywords and not _is_constant(keywords["trust_remote_code"], False):
            found.append(f"{where}: trust_remote_code not False")
        if name in ("numpy.load", "np.load") and not _is_constant(keywords.get("allow_pickle", ast.Constant(False)),
                                                                    False):
            found.append(f"{where}: numpy.load with allow_pickle")
        if name in UNPICKLERS:
            found.append(f"{where}: {name}")
        if name in EVALUATORS:
            found.append(f"{where}: {name}() of text")
        if name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or (_dotted(loader, aliases) or "").rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
                found.append(f"{where}: {name} without a safe Loader")
    return found


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> what it was imported as (``import numpy as np``: np -> numpy; ``from pickle
    import loads``: loads -> pickle.loads). Relative imports are the project's own: not mapped."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:  # "import a.b" binds a; "import a.b as c" binds c to a.b
                top = alias.name.split(".")[0]
                aliases[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` of a call's function, its first name resolved through the imports; None otherwise."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def _is_constant(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def test_the_scan_finds_each_unsafe_call_and_passes_the_safe_ones():
    source = """\
import pickle, yaml, builtins
import torch as t
import numpy as np
from pickle import loads as unpickle
from datasets import load_dataset
t.load(path)                                      # 6
t.load(path, weights_only=False)                  # 7
unpickle(data)                                    # 8
yaml.load(text)                                   # 9
yaml.load(text, Loader=yaml.Loader)               # 10
yaml.full_load(text)                              # 11
eval("1 + 1")                                     # 12
builtins.exec("x = 1")                            # 13
load_dataset("org/name", trust_remote_code=True)  # 14
np.load(file, allow_pickle=True)                  # 15
pickle.Unpickler(handle).load()                   # 16
t.jit.load(path)                                  # 17
t.load(path, map_location="cpu", weights_only=True)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
yaml.load(text, yaml.CSafeLoader)
model.eval()
re.compile("x")
load_dataset("org/name", trust_remote_code=False)
np.load(file)
pickle.UnpicklingError
"""
    lines = sorted(int(finding.split(":")[1]) for finding in unsafe_calls(source))
    assert lines == list(range(6, 18))  # each once


def test_no_source_file_unpickles_runs_remote_code_or_evaluates_text():
    files = sorted(file for folder in SOURCE for file in (ROOT / folder).rglob("*.py"))
    assert len(files) > 50 and (ROOT / "robust_w2s" / "published.py") in files  # the scan sees the project
    found = [finding for file in files for finding in unsafe_calls(file.read_text(), str(file.relative_to(ROOT)))]
    assert found == []

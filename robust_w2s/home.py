"""Where robust-w2s keeps what it builds: ``--home``, else ``$RW2S_HOME``, else the user cache."""
from __future__ import annotations

import os
from pathlib import Path


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    if home:
        return Path(home).expanduser()
    if os.environ.get("RW2S_HOME"):
        return Path(os.environ["RW2S_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "robust_w2s"

"""Package versions recorded in every result file, so a number can be traced to its code."""
from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("robust-w2s", "torch", "open_clip_torch", "torchattacks", "datasets", "timm")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions

"""A dict of named choices (objectives, AutoAttack versions) for configs and the CLI."""

from __future__ import annotations


class Registry(dict):
    """Dict whose unknown keys raise ValueError naming the valid ones.

    A plain dict raises KeyError('foo'), which tells a user of a config file nothing about
    what they could have written instead.
    """

    def __init__(self, kind: str, items: dict) -> None:
        super().__init__(items)
        self.kind = kind

    def __missing__(self, key):
        valid = ", ".join(repr(name) for name in self)
        raise ValueError(f"unknown {self.kind} {key!r}; valid: {valid}")

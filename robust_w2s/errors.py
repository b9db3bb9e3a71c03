"""The exceptions for bad input: the CLI prints their message on one line and exits 2."""
from __future__ import annotations

import difflib
import errno
from typing import Iterable

MAX_LISTED = 30  # longer lists of valid names (open_clip's models) show only the closest ones
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # a full disk or quota: the CLI exits 1 (a failed run), not 2


class UserError(Exception):
    """Bad input from the user (a path, a spec, a config key): not a bug in robust-w2s."""


class UnknownNameError(UserError, KeyError):
    """An unknown name (a method, a benchmark, a config key...). Also a ``KeyError``, so registry
    look-ups behave like mappings; its message is one line, not KeyError's quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0])


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> UnknownNameError:
    """The error for ``name`` not among ``valid``: "unknown KIND 'NAME'; did you mean X? (valid: ...)".

    The one place that words this error. The closest valid names come from ``difflib``; the full
    list is shown unless it is longer than ``MAX_LISTED``. Example::

        >>> str(unknown_name("method", "adv_w2s", ["adv-w2s", "tecoa"]))
        "unknown method 'adv_w2s'; did you mean adv-w2s? (valid: adv-w2s, tecoa)"
    """
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
    listed = f"valid: {', '.join(valid)}" if len(valid) <= MAX_LISTED else f"{len(valid)} valid names"
    hint = f"did you mean {' or '.join(close)}? ({listed})" if close else listed
    return UnknownNameError(f"unknown {kind} {name!r}; {hint}")

"""Perturbation budgets: configs and the command line write them as "4/255"."""

from __future__ import annotations

import math
import numbers


def parse_eps(value: float | int | str, *, upper: float | None = 1.0) -> float:
    """Return a perturbation budget as a float in ``[0, upper]`` (pixel units, images in [0, 1]).

    Accepts ints, floats, numeric strings (``"0.01"``, ``"1e-3"``) and fractions
    (``"4/255"``). ``upper=None`` removes the upper bound (an L2 budget may exceed 1).
    Raises ValueError with a one-line message naming the bad value otherwise.

    >>> parse_eps("4/255") == 4 / 255
    True
    """
    number = _to_number(value)
    if not math.isfinite(number):
        raise ValueError(f"invalid epsilon {value!r}: not a finite number")
    if number < 0:
        raise ValueError(f"invalid epsilon {value!r}: must be >= 0")
    if upper is not None and number > upper:
        raise ValueError(f"invalid epsilon {value!r}: must be <= {upper:g} (pixel units in [0, 1])")
    return number


def _to_number(value) -> float:
    # bool is an int subclass: `eps=True` is a bug in the caller, not a budget of 1.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid epsilon {value!r}: expected a number or a string like '4/255'")
    parts = value.split("/")
    if len(parts) > 2:
        raise ValueError(f"invalid epsilon {value!r}: expected a number or a fraction like '4/255'")
    try:
        numbers_ = [float(part) for part in parts]
    except ValueError:
        raise ValueError(
            f"invalid epsilon {value!r}: expected a number or a fraction like '4/255'"
        ) from None
    if len(numbers_) == 1:
        return numbers_[0]
    numerator, denominator = numbers_
    if denominator == 0:
        raise ValueError(f"invalid epsilon {value!r}: denominator is zero")
    return numerator / denominator

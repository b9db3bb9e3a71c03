"""Label schemas: how a dataset's label column becomes class indices. Plain data, no heavy imports
(the benchmark registry holds one per dataset and is read by ``--help``)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .errors import UserError, unknown_name

LABEL_TYPES = ("classlabel", "int", "bool", "string")


@dataclass(frozen=True)
class LabelSchema:
    """How a label column's values become class indices 0..K-1 (chosen by type, never by dataset).

    ``type``: ``classlabel`` (a ClassLabel: index = value), ``int`` (a plain integer: index =
    value - ``offset``, e.g. 1 for 1-based labels), ``bool`` (False = 0, True = 1) or ``string``
    (index = position of the value in ``ids``, e.g. ImageNet-R's sorted WordNet ids).
    """
    column: str = "label"
    type: str = "classlabel"
    offset: int = 0
    ids: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "ids", tuple(self.ids))
        if self.type not in LABEL_TYPES:
            raise unknown_name("label type", self.type, LABEL_TYPES)
        if self.type == "string" and not self.ids:
            raise ValueError("a string label column needs its ids in class order")

    @cached_property
    def _index(self) -> dict[str, int]:
        """id -> class index, built once: alignment maps one row at a time."""
        return {label: k for k, label in enumerate(self.ids)}

    def indices(self, values) -> "torch.Tensor":
        """int64 [B] class indices of a batch of raw label values."""
        import torch  # here, so that the registry (which holds schemas) imports without torch

        if self.type == "string":
            index = self._index
            unknown = [v for v in values if v not in index]
            if unknown:
                raise UserError(f"label {unknown[0]!r} of column {self.column!r} is not among the {len(self.ids)} "
                                f"class ids")
            return torch.tensor([index[v] for v in values], dtype=torch.int64)
        return torch.tensor([int(v) - self.offset for v in values], dtype=torch.int64)

"""A fixed selection of input features, put by :func:`regtorch.shrink` in front of a Linear layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["SelectFeatures"]


class SelectFeatures(nn.Module):
    """Keep a fixed subset of the features along the last dimension: ``y = x[..., index]``.

    :func:`regtorch.shrink` with ``remove_inputs=True`` places one in front of a Linear layer whose
    input columns are all zero, so the model keeps taking the same inputs (an MNIST image of shape
    ``(N, 1, 28, 28)`` through ``Flatten``) while the layer only stores the columns it uses. The
    index is a buffer (in ``state_dict`` as ``index``), and the forward pass is one
    ``index_select``, which ``torch.export`` and ``torch.compile`` handle.

    Args:
        index: The kept feature positions, in the order the next layer expects them: a 1-D
            sequence or tensor of distinct non-negative integers.
        in_features: The number of features of the input, if known (validated against ``index``
            and shown in the repr).

    Raises:
        ValueError: If ``index`` is not 1-D, has negative or repeated entries, or an entry
            ``>= in_features``.
        TypeError: If ``index`` holds non-integers.

    Examples:
        >>> select = SelectFeatures([0, 2], in_features=3)
        >>> select(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[1., 3.]])
    """

    index: torch.Tensor

    def __init__(self, index: Any, in_features: int | None = None) -> None:
        super().__init__()
        tensor = torch.as_tensor(index)
        if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(
                f"The 'index' argument of SelectFeatures must hold integers; got dtype {tensor.dtype}."
            )
        tensor = tensor.to(torch.int64)
        if tensor.ndim != 1:
            raise ValueError(
                f"The 'index' argument of SelectFeatures must be 1-D; got shape {tuple(tensor.shape)}."
            )
        if tensor.numel() and (int(tensor.min()) < 0 or tensor.unique().numel() != tensor.numel()):
            raise ValueError(
                "The 'index' argument of SelectFeatures must hold distinct non-negative positions; got "
                f"{tensor.tolist()[:10]}{'...' if tensor.numel() > 10 else ''}."
            )
        if in_features is not None and (not isinstance(in_features, int) or in_features < 0 or (
            tensor.numel() and int(tensor.max()) >= in_features
        )):  # fmt: skip
            raise ValueError(
                f"The 'in_features' argument of SelectFeatures must be an int larger than every index "
                f"(max {int(tensor.max()) if tensor.numel() else None}); got {in_features!r}."
            )
        self.in_features = in_features
        self.register_buffer("index", tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x[..., index]``."""
        return x.index_select(-1, self.index)

    def extra_repr(self) -> str:
        total = "?" if self.in_features is None else self.in_features
        return f"{self.index.numel()} of {total} features"

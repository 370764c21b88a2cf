"""Recognising FSDP2 ``DTensor`` parameters without importing ``torch.distributed``.

A ``DTensor`` can only exist once ``torch.distributed.tensor`` has been imported, so these checks
look the class up in ``sys.modules``: plain tensors cost one dictionary lookup per call.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["dtensor_type", "fully_sharded", "has_dtensor", "is_dtensor"]


def dtensor_type() -> type | None:
    """Return the ``DTensor`` class, or ``None`` if no ``DTensor`` can exist in this process yet."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else getattr(module, "DTensor", None)


def is_dtensor(tensor: object) -> bool:
    """Return whether ``tensor`` is a ``DTensor``."""
    cls = dtensor_type()
    return cls is not None and isinstance(tensor, cls)


def has_dtensor(tensors: Sequence[object]) -> bool:
    """Return whether any of ``tensors`` is a ``DTensor``: the one check plain-tensor code pays."""
    cls = dtensor_type()
    return cls is not None and any(issubclass(kind, cls) for kind in set(map(type, tensors)))


def fully_sharded(module: Any) -> bool:
    """Return whether ``module`` or a submodule went through FSDP2's ``fully_shard``."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    cls = None if fsdp is None else getattr(fsdp, "FSDPModule", None)
    return cls is not None and any(isinstance(m, cls) for m in module.modules())

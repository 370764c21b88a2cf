"""regtorch's kernels: each formula family in one module, in up to three implementations.

* :mod:`regtorch.kernels.elastic_net` — ``λ₁|w| + λ₂w²`` (L1, L2, elastic net and the element-wise
  part of every closed-form prox, Adam's diagonal metric included);
* :mod:`regtorch.kernels.power` — ``λ|w|^p`` and ``λ‖w‖_p`` (Lp);
* :mod:`regtorch.kernels.group` — group norms and block soft-thresholding (group lasso);

and the non-convex penalties keep their kernels beside their class (:mod:`regtorch.penalties`).
:func:`choose` is the one place that decides which implementation runs.
"""

from regtorch.kernels._choose import (
    COMPILED_MIN_NUMEL,
    COMPILED_MIN_TENSOR,
    FAILED,
    SMALL_TENSOR,
    Impl,
    choose,
    compiled,
    compiled_available,
    compiled_eligible,
    group_by_device_and_dtype,
    scalar_like,
)
from regtorch.kernels._elementwise import ElementwiseKernels
from regtorch.kernels._sums import accumulation_dtype, result_dtype, sum_abs, sum_abs_pow, sum_square

__all__ = [
    "COMPILED_MIN_NUMEL",
    "COMPILED_MIN_TENSOR",
    "FAILED",
    "SMALL_TENSOR",
    "ElementwiseKernels",
    "Impl",
    "accumulation_dtype",
    "choose",
    "compiled",
    "compiled_available",
    "compiled_eligible",
    "group_by_device_and_dtype",
    "result_dtype",
    "scalar_like",
    "sum_abs",
    "sum_abs_pow",
    "sum_square",
]

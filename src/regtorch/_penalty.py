"""The penalty protocol: small stateless objects with ``value``, ``grad`` and ``prox`` on tensor lists.

A penalty ``R`` maps a list of tensors ``[w₁, …, w_k]`` to ``Σᵢ R(wᵢ)``. Every penalty offers

* :meth:`Penalty.value` — ``R`` as a 0-dim tensor, differentiable (the (sub)gradient is written in
  one pass per tensor: no parameter-sized temporaries beyond the gradient);
* :meth:`Penalty.grad` / :meth:`Penalty.add_grad_` — the (sub)gradient, 0 at kinks;
* :meth:`Penalty.prox` — ``w ← argmin_x ½‖x − w‖² + t·R(x)``, in place;
* :meth:`Penalty.get_config` / :func:`penalty_from_config` — a JSON round trip.

Penalties add (``L1(a) + L2(b)``) and scale (``0.5 * L1(a)``).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch.autograd.function import once_differentiable

from regtorch import _distributed, _native
from regtorch._buffers import gradient_buffer
from regtorch._distributed import has_dtensor
from regtorch._fused import fused_add_grad_, fused_eligible, fused_new_grad, fused_value_grad, use_fused
from regtorch._proximal import ProxPlan, apply_prox_plan, group_reduce_dims, without_grad
from regtorch._reductions import CHUNK, group_by_device_and_dtype, result_dtype
from regtorch._validation import Interval, check_real

__all__ = ["Penalty", "Sum", "list_penalties", "penalty_from_config"]

_REGISTRY: dict[str, type[Penalty]] = {}

NON_NEGATIVE = Interval(low=0.0)


def _as_list(tensors: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(tensors, torch.Tensor):
        return [tensors]
    return list(tensors)


SMALL_TENSOR = 1 << 16
"""On CPU, lists of tensors all below this size take the multi-tensor path (less Python per step)."""


def _default_foreach(tensors: Sequence[torch.Tensor]) -> bool:
    """Multi-tensor kernels pay off on accelerators, and on CPU for small tensors (fewer Python
    calls); for large CPU tensors a per-tensor loop is faster (no list-sized temporaries)."""
    if not tensors:
        return False
    if all(t.device.type != "cpu" for t in tensors):
        return True
    return all(t.numel() < SMALL_TENSOR for t in tensors)


def _small_cpu_group(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether all tensors are small CPU tensors of one dtype: one multi-tensor group, and too small
    for the compiled kernels whatever ``fused`` says (checked in one loop: this is the common case
    of small models, called every step)."""
    dtype = tensors[0].dtype
    return all(t.is_cpu and t.dtype == dtype and t.numel() < SMALL_TENSOR for t in tensors)


def _default_foreach_prox(tensors: Sequence[torch.Tensor]) -> bool:
    """Multi-tensor prox kernels pay off on accelerators only: on CPU the per-tensor path (in-place
    ``softshrink``, one pass) beats the multi-tensor one (clamp, clamp, subtract: three passes and a
    temporary) from three tensors of 4K elements up, and ties with it on many tiny tensors."""
    return bool(tensors) and all(t.device.type != "cpu" for t in tensors)


def _batch_small(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate small float32/float64 tensors per device and dtype (for separable penalties).

    ``R(w₁) + R(w₂) = R([w₁, w₂])`` for an element-wise penalty, and one reduction over a small
    concatenation costs far less Python than one per tensor. Large tensors pass through.
    """
    small: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    pieces: list[torch.Tensor] = []
    for t in tensors:
        if t.numel() <= CHUNK and t.dtype in (torch.float32, torch.float64):
            small.setdefault((t.device, t.dtype), []).append(t.reshape(-1))
        else:
            pieces.append(t)
    for group in small.values():
        pieces.append(group[0] if len(group) == 1 else torch.cat(group))
    return pieces


def _foreach_elementwise_grads(tensors: list[torch.Tensor], a1: float, a2: float) -> list[torch.Tensor]:
    """Return ``a₁·sign(wᵢ) + a₂·wᵢ`` for each tensor with multi-tensor kernels per device/dtype."""
    grads: list[torch.Tensor] = [tensors[0]] * len(tensors)
    for indices in group_by_device_and_dtype(tensors).values():
        group = [tensors[i] for i in indices]
        if a1:
            out = torch._foreach_sign(group)
            torch._foreach_mul_(out, a1)
            if a2:
                torch._foreach_add_(out, group, alpha=a2)
        else:
            out = torch._foreach_mul(group, a2)
        for i, g in zip(indices, out, strict=True):
            grads[i] = g
    return grads


class _PenaltyValue(torch.autograd.Function):
    """``R(w₁, …, w_k)`` whose backward hands autograd ``∂R`` without extra passes.

    For an element-wise penalty on the compiled path, the forward writes each large tensor's
    gradient in the same pass that sums the value (into a reusable buffer on CPU, see
    :mod:`regtorch._buffers`), and the backward returns it, scaled unless ``grad_output`` is 1. Other
    tensors get their gradient computed in the backward, in one pass each.
    """

    @staticmethod
    def forward(ctx: Any, penalty: Penalty, foreach: bool | None, fused: bool | None, *tensors: torch.Tensor):
        ctx.penalty = penalty
        ctx.foreach = foreach
        ctx.fused = fused
        ctx.save_for_backward(*tensors)
        ctx.grads = None
        ctx.native = None
        plan = penalty._native_plan(tensors, foreach, fused)  # (None while torch.compile traces)
        if plan is not None:  # small CPU tensors: the value and every gradient in one C call
            ctx.native = (plan.l1, 2.0 * plan.l2)
            ctx.grads = [_native_grad_buffer(t) for t in tensors]
            return _native_value(tensors, plan, ctx.grads)
        plan = penalty._elementwise_plan()
        # (inside torch.compile the reference path is traced instead: the buffers are eager-only)
        if plan is None or torch.compiler.is_compiling():
            return penalty._value_no_grad(tensors)
        if use_fused(tensors, fused):
            value, grads = _value_and_grads(penalty, tensors, plan)
            if value is not None:
                ctx.grads = grads
                return value
        return penalty._value_no_grad(tensors)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor):
        tensors = ctx.saved_tensors  # raises if a tensor was modified in place since the forward
        ready, ctx.grads = ctx.grads, None  # a second backward (retain_graph) recomputes
        if ready is None and ctx.native is not None:  # the same kernel: the same bits as the first
            ready = [torch.empty_like(t) for t in tensors]
            _native.add_grad_(tensors, ready, *ctx.native, accumulate=False)
        scale = 1.0
        if grad_output.device.type == "cpu":
            scale, grad_output = float(grad_output), None
        if ready is None:
            ready = [None] * len(tensors)
        elif scale != 1.0:
            for g in ready:
                if g is not None:
                    g.mul_(scale)
        todo = [i for i, g in enumerate(ready) if g is None]
        if todo:
            computed = ctx.penalty.grad(
                [tensors[i] for i in todo], foreach=ctx.foreach, fused=ctx.fused, scale=scale
            )
            for i, g in zip(todo, computed, strict=True):
                ready[i] = g
        if grad_output is not None:  # on an accelerator: no host sync, scale on the device
            for g in ready:
                g.mul_(grad_output.to(device=g.device, dtype=g.dtype))
        return (None, None, None, *ready)


_FRESH_PAGES_BYTES = 1 << 17
"""glibc serves allocations from this size up with fresh pages (``mmap``): a page fault per 4 KiB."""


def _native_grad_buffer(tensor: torch.Tensor) -> torch.Tensor:
    """A buffer for ``tensor``'s gradient: its reusable one when fresh pages would cost page faults."""
    if tensor.numel() * tensor.element_size() >= _FRESH_PAGES_BYTES:
        return gradient_buffer(tensor)
    return torch.empty_like(tensor, memory_format=torch.contiguous_format)


def _native_value(
    tensors: Sequence[torch.Tensor], plan: ProxPlan, grads: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """``λ₁·Σ|w| + λ₂·Σw²`` summed in float64 by the C kernel (with ``grads``: each gradient
    ``λ₁·sign(w) + 2λ₂·w`` written in the same pass), in :func:`result_dtype`."""
    abs_sum, square_sum = _native.value_grad(tensors, plan.l1, 2.0 * plan.l2, grads)
    return torch.tensor(plan.l1 * abs_sum + plan.l2 * square_sum, dtype=result_dtype(tensors))


def _value_and_grads(
    penalty: Penalty, tensors: Sequence[torch.Tensor], plan: ProxPlan
) -> tuple[torch.Tensor | None, list[torch.Tensor | None]]:
    """``R`` over ``tensors`` and ``∂R = λ₁·sign(w) + 2λ₂·w`` for the tensors the compiled kernel takes.

    ``R = λ₁Σ|w| + λ₂Σw²`` (the element-wise ``plan``). Each eligible tensor is read once
    (:func:`regtorch._fused.fused_value_grad`); the others' values come from the reference
    reductions and their gradients are ``None``. Returns ``(None, [])`` if no tensor was eligible.
    """
    grads: list[torch.Tensor | None] = [None] * len(tensors)
    device = tensors[0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    rest = []
    with torch.no_grad():
        for i, tensor in enumerate(tensors):
            w = tensor.detach()
            sums = None
            if fused_eligible(w):  # the buffer belongs to the tensor itself, not to this detached view
                out = gradient_buffer(tensor) if w.device.type == "cpu" else torch.empty_like(w)
                sums = fused_value_grad(w, out, plan.l1, 2.0 * plan.l2)
            if sums is None:
                rest.append(w)
                continue
            grads[i] = out
            total = total + (plan.l1 * sums[0] + plan.l2 * sums[1]).to(device)
        if all(g is None for g in grads):
            return None, []
        if rest:
            total = total + penalty._value_wide(rest)
    return total.to(result_dtype(tensors)), grads


class Penalty:
    """Base class of every penalty. Subclasses implement the per-tensor reference methods.

    Subclasses define ``_value_one`` (float64 0-dim tensor), ``_grad_one`` (a new tensor), and
    either ``prox_plan`` (closed form from :mod:`regtorch._proximal`) or ``_prox_one_``. They may
    override ``_add_grad_many_`` with a multi-tensor path that tests hold to the reference.
    """

    name: ClassVar[str] = "Penalty"
    homogeneous: ClassVar[bool] = False
    """Whether ``R(c·w) = c·R(w)`` for ``c >= 0`` (then an added L2 term keeps a closed-form prox)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _REGISTRY[cls.name] = cls

    # ----------------------------------------------------------------- per-tensor reference
    def _value_one(self, tensor: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _grad_one(self, tensor: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _prox_one_(self, tensor: torch.Tensor, step: float) -> None:
        plan = self.prox_plan()
        if plan is None:
            raise ValueError(self._no_prox_message())
        apply_prox_plan([tensor], step, plan)

    def _add_grad_many_(self, tensors: list[torch.Tensor], grads: list[torch.Tensor], alpha: float) -> None:
        for w, g in zip(tensors, grads, strict=False):
            g.add_(self._grad_one(w), alpha=alpha)

    def prox_plan(self) -> ProxPlan | None:
        """Return the closed-form prox of this penalty as a :class:`ProxPlan`, if it has one."""
        return None

    def check_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Raise ``ValueError`` if this penalty cannot act on ``tensor`` (e.g. too few dims)."""

    @property
    def supports_prox(self) -> bool:
        """Whether :meth:`prox` can be computed (a closed form or an exact per-element solve)."""
        return self.prox_plan() is not None

    def _no_prox_message(self) -> str:
        return (
            f"{self!r} has no closed-form proximal operator, so mode='prox' cannot apply it; "
            "use mode='loss' or mode='grad'."
        )

    # ----------------------------------------------------------------- public API
    def _value_no_grad(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        if not tensors:
            return torch.zeros(())
        plan = self._native_plan(tensors)
        if plan is not None:  # small CPU tensors: one C call
            return _native_value(tensors, plan)
        return self._value_wide(tensors).to(result_dtype(tensors))

    def _value_wide(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """``R`` over a non-empty list of tensors as a float64 0-dim tensor on the first one's device."""
        device = tensors[0].device
        with torch.no_grad():
            pieces = _batch_small(tensors) if self._elementwise_plan() is not None else tensors
            total = self._value_one(pieces[0]).to(device)
            for w in pieces[1:]:
                total = total + self._value_one(w).to(device)
        return total

    def value(
        self,
        tensors: torch.Tensor | Sequence[torch.Tensor],
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> torch.Tensor:
        """Return ``R(w₁, …, w_k) = Σᵢ R(wᵢ)`` as a 0-dim tensor.

        The value is accumulated in float64 and returned in float32 (float64 if any tensor is
        float64), so bf16/fp16 parameters get an accurate penalty. It is differentiable when a
        tensor requires grad and grad mode is on. On the compiled path (an element-wise penalty,
        large tensors) the forward reads each tensor once for both the value and the gradient
        ``λ₁·sign(w) + 2λ₂·w``, which the backward hands to autograd (on CPU in a buffer reused
        from step to step: ``1×`` the tensor's bytes kept per tensor); otherwise the backward
        writes each gradient in one pass.

        Args:
            tensors: A tensor or a list of tensors.
            foreach: Use multi-tensor kernels in the backward (default: on accelerators).
            fused: Use compiled kernels in the backward (default: for large tensors, see
                :mod:`regtorch._fused`).
        """
        tensors = _as_list(tensors)
        if has_dtensor(tensors):  # FSDP2: local shards, one all-reduce
            return _distributed.value([self] * len(tensors), tensors, foreach, fused)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return _PenaltyValue.apply(self, foreach, fused, *tensors)
        return self._value_no_grad(tensors)

    __call__ = value

    def _native_plan(
        self,
        tensors: Sequence[torch.Tensor],
        foreach: bool | None = None,
        fused: bool | None = None,
        grads: Sequence[torch.Tensor] | None = None,
    ) -> ProxPlan | None:
        """The element-wise plan when the C kernels of :mod:`regtorch._native` apply: the kernel
        choice is automatic (``foreach`` None, ``fused`` not False) and they take the tensors."""
        if foreach is not None or fused is False or not _native.takes(tensors, grads):
            return None
        return self._elementwise_plan()

    def _elementwise_plan(self) -> ProxPlan | None:
        """The plan if this penalty is element-wise (L1/L2 terms only): then fused kernels apply."""
        plan = self.prox_plan()
        return plan if plan is not None and not plan.group else None

    # ----------------------------------------------------------------- structure (sharded tensors)
    @property
    def separable(self) -> bool:
        """Whether ``R(w) = Σⱼ r(wⱼ)`` entry by entry, so a shard's value, gradient and prox are its own.

        By default: a closed form with L1/L2 terms only. Sharded parameters (FSDP2) then need one
        all-reduce of the values and no communication for gradients and proxes.
        """
        return self._elementwise_plan() is not None

    def group_dims(self, ndim: int) -> tuple[int, ...] | None:
        """For ``R(w) = Σ_g φ(‖w_g‖₂)``, the dims of an ``ndim``-dim tensor each group norm reduces.

        ``None`` for other penalties. By default from a closed form with a group term only. On
        sharded parameters the group norms are summed over the ranks a group spans, then
        :meth:`_value_from_norms` and :meth:`_grad_from_norms` give the value and the gradient.
        """
        plan = self.prox_plan()
        if plan is None or not plan.group or plan.l1 or plan.l2 or plan.group_spec is None:
            return None
        return group_reduce_dims(plan.group_spec, ndim)

    def _group_strength(self) -> float:
        plan = self.prox_plan()
        if plan is None or not plan.group:
            raise NotImplementedError(f"{self!r} is not a group penalty: it has no group norms.")
        return plan.group

    def _value_from_norms(self, norms: torch.Tensor) -> torch.Tensor:
        """``R`` from the group norms of one tensor (a group penalty): ``λ_g Σ_g ‖w_g‖₂`` in float64."""
        return self._group_strength() * norms.to(torch.float64).sum()

    def _grad_from_norms(self, tensor: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """``∂R`` from the group norms (dims kept): ``λ_g·w_g/‖w_g‖₂``, 0 for a zero group."""
        scale = torch.where(norms > 0, self._group_strength() / norms.clamp_min(1e-38), 0.0)
        return tensor * scale.to(tensor.dtype)

    def grad(
        self,
        tensors: torch.Tensor | Sequence[torch.Tensor],
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        scale: float = 1.0,
    ) -> list[torch.Tensor]:
        """Return ``scale·∂R/∂wᵢ`` for each tensor (0 at non-differentiable points)."""
        tensors = [t.detach() for t in _as_list(tensors)]
        if has_dtensor(tensors):  # DTensor gradients with the parameters' layouts
            return _distributed.gradients([self] * len(tensors), tensors, foreach, fused, scale=scale)
        if foreach is None:
            foreach = _default_foreach(tensors)
        plan = self._elementwise_plan()
        with torch.no_grad():
            if plan is not None and use_fused(tensors, fused):
                grads = []
                for w in tensors:
                    g = fused_new_grad(w, scale * plan.l1, 2.0 * scale * plan.l2)
                    grads.append(g if g is not None else self._grad_one(w).mul_(scale))
                return grads
            if not foreach:
                grads = [self._grad_one(w) for w in tensors]
                if scale != 1.0:
                    for g in grads:
                        g.mul_(scale)
                return grads
            if plan is not None:  # element-wise: a₁·sign(w) + a₂·w in three multi-tensor calls
                return _foreach_elementwise_grads(tensors, scale * plan.l1, 2.0 * scale * plan.l2)
            grads = [torch.zeros_like(w) for w in tensors]
            self.add_grad_(tensors, grads, alpha=scale, foreach=True, fused=False)
        return grads

    def add_grad_(
        self,
        tensors: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        *,
        alpha: float = 1.0,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        """Add ``alpha·∂R/∂wᵢ`` to ``grads[i]`` in place (what grad mode does to ``.grad``)."""
        tensors = _as_list(tensors)  # no detach(): the kernels run under no_grad
        grads = grads if isinstance(grads, list) else list(grads)
        plan = self._native_plan(tensors, foreach, fused, grads)
        if plan is not None:  # small CPU tensors: one C call for the whole list
            _native.add_grad_(tensors, grads, alpha * plan.l1, 2.0 * alpha * plan.l2)
            return
        if has_dtensor(tensors):
            tensors = [t.detach() for t in tensors]
            _distributed.add_grads_([self] * len(tensors), tensors, grads, alpha, foreach, fused)
            return
        if not tensors:
            return
        with without_grad():
            if foreach is not False and _small_cpu_group(tensors):  # small models: no more checks
                self._add_grad_many_(tensors, grads, alpha)
                return
            if foreach is None:
                foreach = _default_foreach(tensors)
            plan = self._elementwise_plan()
            if plan is not None and use_fused(tensors, fused):
                left = fused_add_grad_(tensors, grads, alpha * plan.l1, 2.0 * alpha * plan.l2)
                tensors, grads = [tensors[i] for i in left], [grads[i] for i in left]
            if not foreach:
                for w, g in zip(tensors, grads, strict=True):
                    self._add_grad_one_(w, g, alpha)
                return
            groups = group_by_device_and_dtype(tensors)
            if len(groups) == 1:  # the common case: no new lists
                self._add_grad_many_(tensors, grads, alpha)
                return
            for indices in groups.values():
                self._add_grad_many_([tensors[i] for i in indices], [grads[i] for i in indices], alpha)

    def _add_grad_one_(self, tensor: torch.Tensor, grad: torch.Tensor, alpha: float) -> None:
        grad.add_(self._grad_one(tensor), alpha=alpha)

    def prox(
        self,
        tensors: torch.Tensor | Sequence[torch.Tensor],
        step: float,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        """Apply the proximal operator in place: ``wᵢ ← argmin_x ½‖x − wᵢ‖² + step·R(x)``.

        Args:
            tensors: The tensors to update in place.
            step: The step ``t >= 0`` (in prox mode: the optimizer's current learning rate).
            foreach: Use multi-tensor kernels (default: on accelerators).
            fused: Use compiled kernels for the element-wise part (default: for large tensors).

        Raises:
            ValueError: If ``step`` is negative or not finite, or the penalty has no closed-form
                prox.
        """
        step = check_real(type(self).__name__ + ".prox", "step", step, NON_NEGATIVE)
        tensors = _as_list(tensors)  # no detach(): the kernels run under no_grad
        plan = self._native_plan(tensors, foreach, fused)
        if plan is not None:  # small CPU tensors: one C call for the whole list
            _native.prox_(tensors, step * plan.l1, 1.0 + 2.0 * step * plan.l2)
            return
        if foreach is None:
            foreach = _default_foreach_prox(tensors)
        if has_dtensor(tensors):  # shard by shard; group norms summed over the ranks they span
            _distributed.prox_(self, [t.detach() for t in tensors], step, foreach, fused)
            return
        plan = self.prox_plan()
        with without_grad():
            if plan is not None:
                fast = bool(plan.l1 or plan.l2) and use_fused(tensors, fused)
                apply_prox_plan(tensors, step, plan, foreach=foreach, fused=fast)
            else:
                for w in tensors:
                    self._prox_one_(w, step)

    # ----------------------------------------------------------------- algebra and config
    def scaled(self, factor: float) -> Penalty:
        """Return this penalty with every strength multiplied by ``factor >= 0``."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """Return a JSON-serializable description; :func:`penalty_from_config` inverts it."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Penalty:
        """Build a penalty from :meth:`get_config`'s output."""
        return penalty_from_config(config)

    def terms(self) -> list[Penalty]:
        """Return the penalties this one adds up (itself for a single penalty)."""
        return [self]

    def __add__(self, other: object) -> Penalty:
        if isinstance(other, numbers.Number) and other == 0:
            return self  # lets sum([...]) work
        if not isinstance(other, Penalty):
            return NotImplemented
        return Sum([*self.terms(), *other.terms()])

    __radd__ = __add__

    def __mul__(self, factor: object) -> Penalty:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            return NotImplemented
        return self.scaled(check_real(type(self).__name__, "factor", factor, NON_NEGATIVE))

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Penalty) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(repr(self))

    def __repr__(self) -> str:
        config = self.get_config()
        args = ", ".join(f"{k}={v!r}" for k, v in config.items() if k != "name")
        return f"{config['name']}({args})"


class Sum(Penalty):
    """The sum of penalties ``R = Σⱼ Rⱼ`` (what ``+`` builds).

    ``value`` and ``grad`` add the terms'. ``prox`` uses the closed form of the sum where one exists:
    any mix of L1, L2, ElasticNet and at most one group structure (GroupLasso with one ``groups``
    setting, or ``Lp(2, root=True)``), e.g. ``L1(a) + GroupLasso(b)`` is the sparse group lasso.
    Other sums raise ``ValueError`` in prox mode.

    Args:
        terms: The penalties to add (nested sums are flattened).
    """

    name = "Sum"

    def __init__(self, terms: Sequence[Penalty]) -> None:
        flat: list[Penalty] = []
        for term in terms:
            if not isinstance(term, Penalty):
                raise TypeError(
                    f"The 'terms' argument of Sum must hold penalties; got {term!r} of type "
                    f"{type(term).__name__}."
                )
            flat.extend(term.terms())
        if not flat:
            raise ValueError("The 'terms' argument of Sum must hold at least one penalty; got none.")
        self._terms = flat

    @property
    def homogeneous(self) -> bool:  # type: ignore[override]
        return all(t.homogeneous for t in self._terms)

    def terms(self) -> list[Penalty]:
        return list(self._terms)

    def _value_one(self, tensor: torch.Tensor) -> torch.Tensor:
        total = self._terms[0]._value_one(tensor)
        for term in self._terms[1:]:
            total = total + term._value_one(tensor)
        return total

    def _grad_one(self, tensor: torch.Tensor) -> torch.Tensor:
        grad = self._terms[0]._grad_one(tensor)
        for term in self._terms[1:]:
            grad.add_(term._grad_one(tensor))
        return grad

    def _add_grad_one_(self, tensor: torch.Tensor, grad: torch.Tensor, alpha: float) -> None:
        for term in self._terms:
            term._add_grad_one_(tensor, grad, alpha)

    def _add_grad_many_(self, tensors: list[torch.Tensor], grads: list[torch.Tensor], alpha: float) -> None:
        for term in self._terms:
            term._add_grad_many_(tensors, grads, alpha)

    def prox_plan(self) -> ProxPlan | None:
        plan: ProxPlan | None = ProxPlan()
        for term in self._terms:
            term_plan = term.prox_plan()
            if term_plan is None or plan is None:
                return None
            plan = plan.merge(term_plan)
        return plan

    def _prox_one_(self, tensor: torch.Tensor, step: float) -> None:
        if len(self._terms) == 1:
            self._terms[0]._prox_one_(tensor, step)
            return
        raise ValueError(
            f"The sum {self!r} has no closed-form proximal operator here (closed forms exist for "
            "sums of L1, L2, ElasticNet and one GroupLasso grouping), so mode='prox' cannot apply "
            "it; use mode='loss' or mode='grad'."
        )

    @property
    def supports_prox(self) -> bool:
        if len(self._terms) == 1:
            return self._terms[0].supports_prox
        return self.prox_plan() is not None

    def check_tensor(self, name: str, tensor: torch.Tensor) -> None:
        for term in self._terms:
            term.check_tensor(name, tensor)

    def scaled(self, factor: float) -> Penalty:
        return Sum([t.scaled(factor) for t in self._terms])

    def get_config(self) -> dict[str, Any]:
        return {"name": "Sum", "terms": [t.get_config() for t in self._terms]}

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self._terms)


def penalty_from_config(config: dict[str, Any]) -> Penalty:
    """Rebuild a penalty from :meth:`Penalty.get_config`'s output.

    Raises:
        ValueError: If ``config`` names no known penalty.
    """
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(
            f"The 'config' argument of penalty_from_config must be a dict with a 'name' key; got {config!r}."
        )
    name = config["name"]
    if name not in _REGISTRY:
        raise ValueError(
            f"The 'config' argument of penalty_from_config names an unknown penalty {name!r}; "
            f"known: {', '.join(sorted(_REGISTRY))}."
        )
    kwargs = {k: v for k, v in config.items() if k != "name"}
    if name == "Sum":
        return Sum([penalty_from_config(c) for c in kwargs["terms"]])
    return _REGISTRY[name](**kwargs)


def list_penalties() -> list[str]:
    """Return the names of the registered penalties (``Sum`` excluded), sorted."""
    return sorted(n for n in _REGISTRY if n != "Sum")

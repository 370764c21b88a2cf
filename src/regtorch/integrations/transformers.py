"""Hugging Face integration: :class:`RegularizationCallback` for ``transformers.Trainer``.

Requires transformers and accelerate (``pip install 'regtorch[hf]'``).

Examples:
    >>> from transformers import Trainer
    >>> from regtorch import L1
    >>> from regtorch.integrations.transformers import RegularizationCallback
    >>> trainer = Trainer(model, args, train_dataset=data,  # doctest: +SKIP
    ...                   callbacks=[RegularizationCallback(L1(1e-5), mode="prox")])
"""

from __future__ import annotations

import itertools
import json
import warnings
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from regtorch import Penalty, Regularizer, penalty_from_config
from regtorch.integrations._common import (
    add_penalty_gradient_,
    check_mode,
    check_penalty,
    has_l2_term,
    import_framework,
    unwrap_optimizer,
    zero_fraction,
)

_callbacks = import_framework(
    "transformers.trainer_callback",
    owner="regtorch.integrations.transformers",
    extra="hf",
    what="Hugging Face transformers",
)

if TYPE_CHECKING:
    from transformers.trainer_callback import ExportableState as _ExportableState
    from transformers.trainer_callback import TrainerCallback as _TrainerCallback
else:
    _ExportableState = _callbacks.ExportableState
    _TrainerCallback = _callbacks.TrainerCallback

__all__ = ["RegularizationCallback"]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _penalty_from_spec(penalty: Any) -> Any:
    """Accept penalty configs (as saved in ``trainer_state.json``) besides Penalty objects."""
    if isinstance(penalty, dict):
        return penalty_from_config(penalty)
    if isinstance(penalty, (list, tuple)):
        return [
            (sel, penalty_from_config(p) if isinstance(p, dict) else p)
            for sel, p in (tuple(rule) for rule in penalty)
        ]
    return penalty


class RegularizationCallback(_TrainerCallback, _ExportableState):
    """A ``transformers.TrainerCallback`` that regularizes the model the ``Trainer`` trains.

    At ``on_train_begin`` — the Trainer has created its optimizer by then — it builds a
    :class:`regtorch.Regularizer` on the model and hooks it into the ``torch.optim`` optimizer
    inside Accelerate's wrapper. The Trainer calls ``optimizer.step()`` after the backward
    pass(es), the gradient all-reduce, fp16 unscaling and gradient clipping (``max_grad_norm``):

    * ``mode="prox"``: after each optimizer step the selected weights become
      ``prox_{lr·s·R}(w)`` (exact zeros with L1 or group lasso). Skipped steps (fp16 overflow)
      apply no prox.
    * ``mode="grad"``: before each optimizer step ``s·∂R(w)`` is added to the gradients, as
      :class:`regtorch.Regularizer`'s grad mode does.
    * ``mode="loss"``: the Trainer computes the loss in ``Trainer.compute_loss``, which a callback
      cannot change. The callback adds the penalty's gradient at the same point as grad mode, also
      to selected parameters that got no gradient. This equals adding ``s·R`` to the loss except
      that gradient clipping does not see the penalty. To put the penalty in the loss itself,
      subclass ``Trainer`` and add ``callback.penalty()`` in ``compute_loss`` (then use
      ``mode="grad"`` or no callback at all).

    **Weight decay.** The callback leaves the Trainer's optimizer alone: ``weight_decay`` in
    ``TrainingArguments`` (0 by default) still applies AdamW's decoupled decay to the Trainer's
    own selection (every parameter except biases and normalization weights). The callback's
    penalty uses its own selection, ``params="weights"`` by default: the weights of layers
    (Linear, Conv, ``Conv1D`` and token-embedding matrices), not biases, normalization layers,
    position embeddings or learned tokens (see :func:`regtorch.explain_selection`). This matches
    the Trainer's decay set on standard transformer blocks, except 1-dimensional non-bias
    parameters and position embeddings, which the Trainer decays and ``"weights"`` skips.
    Replacing the Trainer's decay by a regtorch L2 penalty means setting ``weight_decay=0.0``; the
    callback warns when both are on with an L2 term.

    **Logging.** At each ``on_log`` the callback adds ``{prefix}penalty`` (``s·R(w)``) and
    ``{prefix}zero_fraction`` (exact zeros among the regularized entries) to the entry the Trainer
    just appended to ``trainer.state.log_history``, and to the ``logs`` dict seen by the callbacks
    after this one. The Trainer runs its ``report_to`` integrations (TensorBoard, W&B, …) *before*
    user callbacks; to have them record these values, move this callback first:
    ``trainer.callback_handler.callbacks.insert(0, trainer.pop_callback(RegularizationCallback))``.

    **Checkpoints.** The regularizer's state (strengths, scale, step count) is saved in each
    checkpoint's ``trainer_state.json`` and restored by ``trainer.train(resume_from_checkpoint=…)``
    at ``on_train_begin``. With ``restore_callback_states_from_checkpoint=True`` the Trainer replaces
    this callback by a new one built from its saved, JSON-representable arguments (penalty configs,
    string selections, numbers). The new one finds the callback it replaced (the most recent one not
    yet training another model): if that one has the same penalty, selection and mode, it takes its
    arguments (types, callables, ``schedule=`` included); otherwise it keeps the checkpoint's and
    warns. Either way it hands its regularizer to the replaced callback, so your handle's
    ``callback.regularizer`` and ``callback.penalty()`` reach the live regularizer, and the logged
    keys keep the saved ``prefix``.

    Args:
        penalty: A :class:`regtorch.Penalty` (or its config dict), or a list of
            ``(selection, penalty)`` rules.
        params: Which parameters (default ``"weights"``); see :func:`regtorch.select_parameters`.
            Leave it at the default with rules.
        mode: ``"prox"`` (default), ``"grad"`` or ``"loss"``.
        prefix: Prefix of the logged names.
        **regularizer_kwargs: Passed to :class:`regtorch.Regularizer` (``exclude``,
            ``step_factor``, ``schedule``, ``foreach``).

    Raises:
        ValueError: For an unknown ``mode``.
        TypeError: For a ``penalty`` that is neither a Penalty nor a list of rules.
    """

    def __init__(
        self,
        penalty: Penalty | dict[str, Any] | Sequence[tuple[Any, Penalty]],
        params: Any = "weights",
        mode: str = "prox",
        *,
        prefix: str = "regtorch/",
        **regularizer_kwargs: Any,
    ) -> None:
        spec = check_penalty("RegularizationCallback", _penalty_from_spec(penalty))
        self.mode = check_mode("RegularizationCallback", mode)
        if "mode" in regularizer_kwargs:
            raise TypeError("RegularizationCallback got 'mode' twice.")
        self.penalty_spec = spec
        self.params = None if not isinstance(spec, Penalty) and params == "weights" else params
        self.prefix = str(prefix)
        self.regularizer_kwargs = dict(regularizer_kwargs)
        self.regularizer: Regularizer | None = None
        self.restored_state: dict[str, Any] | None = None
        self._key = json.dumps([repr(spec), repr(self.params), mode])
        self._model: torch.nn.Module | None = None
        self._handles: list[Any] = []
        self._rebuilt = False  # set (through the saved attributes) when the Trainer rebuilds it
        self._replaced: RegularizationCallback | None = None
        self._serial = next(RegularizationCallback._serials)
        RegularizationCallback._instances.append(weakref.ref(self))

    _instances: ClassVar[list[weakref.ref[RegularizationCallback]]] = []
    _serials: ClassVar[itertools.count[int]] = itertools.count()

    def penalty(self) -> torch.Tensor:
        """Return the current penalty ``s·R(w)`` (0-dim tensor); valid once training has begun.

        Raises:
            RuntimeError: Before ``on_train_begin`` built the regularizer.
        """
        if self.regularizer is None:
            raise RuntimeError(
                "RegularizationCallback has no regularizer yet: it is built when trainer.train() starts."
            )
        return self.regularizer.penalty()

    # ----------------------------------------------------------------- training lifecycle
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Build the regularizer on the model, restore a resumed state, hook the optimizer."""
        model = kwargs.get("model")
        optimizer = kwargs.get("optimizer")
        if model is None or optimizer is None:
            raise RuntimeError(
                "RegularizationCallback needs the Trainer's model and optimizer at on_train_begin; "
                "this Trainer passed none (an optimizer created later, e.g. by DeepSpeed, is not "
                "supported)."
            )
        if self._rebuilt and self._replaced is None:
            self._adopt(model)
        if self.regularizer is None or self._model is not model:
            self.regularizer = Regularizer(
                model,
                self.penalty_spec,
                params=self.params,
                mode=self.mode,
                **self.regularizer_kwargs,
            )
            self._model = model
        saved = self.restored_state or self._saved_state(state)
        if saved is not None:
            self.regularizer.load_state_dict(saved)
        self.restored_state = None
        weight_decay = float(getattr(args, "weight_decay", 0.0) or 0.0)
        if weight_decay > 0 and has_l2_term(self.penalty_spec):
            warnings.warn(
                f"TrainingArguments.weight_decay={weight_decay:g} already decays the weights (AdamW's "
                "decoupled decay) and the RegularizationCallback penalty has an L2 term as well; set "
                "weight_decay=0.0 to let regtorch's penalty replace it.",
                UserWarning,
                stacklevel=2,
            )
        if self._replaced is not None:
            self._replaced.regularizer, self._replaced._model = self.regularizer, model
        self._detach()
        inner = unwrap_optimizer(optimizer)
        if self.mode == "loss":
            self._handles.append(inner.register_step_pre_hook(self._loss_gradient_hook))
        self._handles.append(self.regularizer.attach(inner))

    def _adopt(self, model: torch.nn.Module) -> None:
        """Find the callback the Trainer replaced by this one; take its arguments if they match."""
        live = [c for c in (ref() for ref in RegularizationCallback._instances) if c is not None]
        RegularizationCallback._instances[:] = [weakref.ref(c) for c in live]
        candidates = sorted(
            (c for c in live if c is not self and not c._rebuilt and (c._model is None or c._model is model)),
            key=lambda c: c._serial,
            reverse=True,
        )
        if not candidates:
            return
        same = [c for c in candidates if c._key == self._key]
        replaced = (same or candidates)[0]
        if same:
            self.penalty_spec, self.params = replaced.penalty_spec, replaced.params
            self.regularizer_kwargs = dict(replaced.regularizer_kwargs)
        else:
            warnings.warn(
                "Trainer(restore_callback_states_from_checkpoint=True) replaced the RegularizationCallback "
                f"({replaced._key}) by the checkpoint's ({self._key}); training continues with the "
                "checkpoint's settings.",
                UserWarning,
                stacklevel=3,
            )
        self._replaced = replaced

    def _loss_gradient_hook(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Loss mode: add the penalty's gradient to every selected parameter before the step."""
        if self.regularizer is not None:
            add_penalty_gradient_(self.regularizer, optimizer, create=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Remove the optimizer hooks."""
        self._detach()

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ----------------------------------------------------------------- logging
    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        """Add the penalty and the fraction of exact zeros to the Trainer's logs."""
        if self.regularizer is None:
            return
        with torch.no_grad():
            penalty = float(self.regularizer.penalty())
        values = {
            f"{self.prefix}penalty": penalty,
            f"{self.prefix}zero_fraction": float(zero_fraction(self.regularizer)),
        }
        if logs is not None:
            logs.update(values)
        history = getattr(state, "log_history", None)
        if history:
            history[-1].update(values)

    # ----------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        """Return the JSON state the Trainer stores in ``trainer_state.json`` (``ExportableState``)."""
        args: dict[str, Any] = {"mode": self.mode, "prefix": self.prefix}
        if isinstance(self.penalty_spec, Penalty):
            args["penalty"] = self.penalty_spec.get_config()
        else:
            args["penalty"] = [[sel, pen.get_config()] for sel, pen in self.penalty_spec]
        if self.params is not None:
            args["params"] = self.params
        args.update(self.regularizer_kwargs)
        args = {k: v for k, v in args.items() if _jsonable(v)}
        if not _jsonable(args.get("penalty")):
            args.pop("penalty", None)
        current = self.regularizer.state_dict() if self.regularizer is not None else None
        attributes = {"restored_state": current, "_key": self._key, "_rebuilt": True}
        return {"args": args, "attributes": attributes}

    def _saved_state(self, state: Any) -> dict[str, Any] | None:
        stored = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        if stored is None:
            return None
        entries = stored if isinstance(stored, list) else [stored]
        for entry in reversed(entries):
            attributes = entry.get("attributes", {}) if isinstance(entry, dict) else {}
            if attributes.get("_key") == self._key and attributes.get("restored_state") is not None:
                return attributes["restored_state"]
        return None

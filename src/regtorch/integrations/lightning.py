"""Lightning integration: the :class:`Regularization` callback.

Requires Lightning (``pip install 'regtorch[lightning]'``). Use it with ``lightning.pytorch``
(``import lightning.pytorch as pl``); the older standalone ``pytorch_lightning`` package has its
own ``Callback`` class, which this callback does not subclass.

Examples:
    >>> import lightning.pytorch as pl
    >>> from regtorch import L1
    >>> from regtorch.integrations.lightning import Regularization
    >>> trainer = pl.Trainer(max_epochs=3, callbacks=[Regularization(L1(1e-4), mode="prox")])
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from regtorch import Penalty, Regularizer
from regtorch.integrations._common import (
    add_penalty_gradient_,
    check_mode,
    check_penalty,
    import_framework,
    optimizers_holding,
    unwrap_optimizer,
    zero_fraction,
)

_pl = import_framework(
    "lightning.pytorch",
    owner="regtorch.integrations.lightning",
    extra="lightning",
    what="Lightning (the 'lightning' package)",
)

if TYPE_CHECKING:
    from lightning.pytorch import Callback as _Callback
else:
    _Callback = _pl.Callback

__all__ = ["Regularization"]


class Regularization(_Callback):
    """A Lightning callback that regularizes the ``LightningModule`` being fitted.

    At ``on_fit_start`` it builds a :class:`regtorch.Regularizer` on the module (parameter names
    are the module's own: ``layer.weight``) and hooks it into the optimizer(s) that
    ``configure_optimizers`` returned:

    * ``mode="prox"``: the regularizer is attached to each optimizer holding regularized
      parameters (``partial=True`` when there are several); after every ``optimizer.step()`` the
      selected weights are replaced by ``prox_{lr·s·R}(w)`` — exact zeros with L1 or group lasso.
    * ``mode="loss"`` and ``mode="grad"``: Lightning computes the loss inside the optimizer's
      closure and gives callbacks no way to change it, so the callback adds the penalty's gradient
      ``s·∂R(w)`` to the parameters' ``.grad`` in ``on_before_optimizer_step``: after the backward
      pass(es) and DDP's gradient all-reduce, before gradient clipping, once per optimizer step.
      Since Lightning divides the loss by ``accumulate_grad_batches``, this is the gradient of
      ``loss + s·R`` under gradient accumulation too; the loss that ``training_step`` returns and
      Lightning logs excludes the penalty (it is logged on its own). ``"loss"`` also gives a
      gradient to selected parameters that received none this step; ``"grad"`` skips them, as
      :class:`regtorch.Regularizer`'s grad mode does. Both work with automatic and manual
      optimization (in manual optimization the gradient is added inside each
      ``optimizer.step()``, for that optimizer's parameters only).

    Every training batch it logs, through ``pl_module.log`` (``on_step`` and ``on_epoch``),
    ``{prefix}penalty`` (``s·R(w)``) and ``{prefix}zero_fraction`` (exact zeros among the
    regularized entries); at the end of each training epoch also ``{prefix}zero_groups`` (all-zero
    rows, filters or penalty groups). Its state — the penalties' strengths, the scale and the step
    count of :meth:`regtorch.Regularizer.state_dict` — is saved in Lightning checkpoints and
    restored with ``trainer.fit(..., ckpt_path=...)``; a checkpoint saved by a callback in another
    mode is refused with a ``ValueError`` (see :meth:`on_load_checkpoint`).

    Under ``strategy="ddp"`` every process holds the same parameters, so every process applies the
    same penalty and the replicas stay equal. Sharded strategies (FSDP, DeepSpeed) are not
    tested through this callback: DeepSpeed and FSDP1 flatten the parameters, so the selection by
    module type and shape does not see the user's tensors.

    Args:
        penalty: A :class:`regtorch.Penalty`, or a list of ``(selection, penalty)`` rules.
        params: Which parameters (default ``"weights"``: the weights of layers, without biases,
            normalization layers, position embeddings or tokens); see
            :func:`regtorch.select_parameters` and :func:`regtorch.explain_selection`. Leave it
            ``None`` with rules.
        mode: ``"prox"`` (default), ``"grad"`` or ``"loss"``.
        log: Log penalty and sparsity through ``pl_module.log``.
        prefix: Prefix of the logged names.
        prog_bar: Show the penalty in the progress bar.
        **regularizer_kwargs: Passed to :class:`regtorch.Regularizer` (``exclude``,
            ``step_factor``, ``schedule``, ``foreach``).

    Raises:
        ValueError: For an unknown ``mode``.
        TypeError: For a ``penalty`` that is neither a Penalty nor a list of rules.

    Examples:
        >>> from regtorch import GroupLasso
        >>> cb = Regularization(GroupLasso(1e-3, groups="rows"), mode="prox")
        >>> trainer = pl.Trainer(max_epochs=5, callbacks=[cb])  # doctest: +SKIP
        >>> trainer.fit(module)  # doctest: +SKIP
        >>> print(cb.regularizer.stats().format())  # doctest: +SKIP
    """

    def __init__(
        self,
        penalty: Penalty | Sequence[tuple[Any, Penalty]],
        params: Any = "weights",
        mode: str = "prox",
        *,
        log: bool = True,
        prefix: str = "regtorch/",
        prog_bar: bool = False,
        **regularizer_kwargs: Any,
    ) -> None:
        super().__init__()
        check_penalty("Regularization", penalty)
        self.mode = check_mode("Regularization", mode)
        if "mode" in regularizer_kwargs:
            raise TypeError("Regularization got 'mode' twice.")
        self.penalty_spec = penalty
        self.params = None if not isinstance(penalty, Penalty) and params == "weights" else params
        self.log_metrics = bool(log)
        self.prefix = str(prefix)
        self.prog_bar = bool(prog_bar)
        self.regularizer_kwargs = dict(regularizer_kwargs)
        # Fixed at construction: the penalties' strengths may change during training.
        self._key_parts = {"penalty": repr(penalty), "params": repr(self.params)}
        self._state_key = self._generate_state_key(**self._key_parts, mode=mode)
        self.regularizer: Regularizer | None = None
        self._module: torch.nn.Module | None = None
        self._pending_state: dict[str, Any] | None = None
        self._handles: list[Any] = []
        self._optimizers: list[torch.optim.Optimizer] = []

    # ----------------------------------------------------------------- identity
    @property
    def state_key(self) -> str:
        """Key of this callback's state in checkpoints (distinct for different settings)."""
        return self._state_key

    def penalty(self) -> torch.Tensor:
        """Return the current penalty ``s·R(w)`` (0-dim tensor); valid once fitting has started.

        Raises:
            RuntimeError: Before ``on_fit_start`` built the regularizer.
        """
        return self._built().penalty()

    def _built(self) -> Regularizer:
        if self.regularizer is None:
            raise RuntimeError(
                "Regularization has no regularizer yet: it is built when trainer.fit() starts."
            )
        return self.regularizer

    # ----------------------------------------------------------------- fit lifecycle
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Build the regularizer on ``pl_module`` (once) and hook it into the optimizers."""
        if self.regularizer is None or self._module is not pl_module:
            self.regularizer = Regularizer(
                pl_module,
                self.penalty_spec,
                params=self.params,
                mode="prox" if self.mode == "prox" else "loss",
                **self.regularizer_kwargs,
            )
            self._module = pl_module
        if self._pending_state is not None:
            self.regularizer.load_state_dict(self._pending_state)
            self._pending_state = None
        self._detach()
        optimizers = [unwrap_optimizer(o) for o in trainer.optimizers]
        if not optimizers:
            raise ValueError(
                "Regularization found no optimizer: configure_optimizers() must return at least one."
            )
        self._optimizers = optimizers_holding(self.regularizer, optimizers, owner="Regularization")
        partial = len(optimizers) > 1
        # In loss and grad modes attach() only counts steps (for 'schedule'); the gradient is
        # added in on_before_optimizer_step.
        self._handles = [self.regularizer.attach(o, partial=partial) for o in self._optimizers]

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """In loss and grad modes, add the penalty's gradient for this optimizer's parameters."""
        if self.mode == "prox" or self.regularizer is None:
            return
        add_penalty_gradient_(self.regularizer, unwrap_optimizer(optimizer), create=self.mode == "loss")

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the penalty and the fraction of exact zeros."""
        if not self.log_metrics or self.regularizer is None:
            return
        with torch.no_grad():
            value = self.regularizer.penalty().detach()
        # Every process holds the same parameters, so the reduction only silences Lightning's
        # warning about unsynchronised epoch-level values (one scalar all-reduce per value).
        options = {"on_step": True, "on_epoch": True, "batch_size": 1, "sync_dist": trainer.world_size > 1}
        pl_module.log(f"{self.prefix}penalty", value, prog_bar=self.prog_bar, **options)
        pl_module.log(f"{self.prefix}zero_fraction", zero_fraction(self.regularizer), **options)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Log the number of all-zero groups (rows, filters or the penalty's groups)."""
        if not self.log_metrics or self.regularizer is None:
            return
        stats = self.regularizer.stats()
        pl_module.log(
            f"{self.prefix}zero_groups",
            float(stats.zero_groups),
            on_epoch=True,
            batch_size=1,
            sync_dist=trainer.world_size > 1,
        )

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Remove the optimizer hooks when fitting ends."""
        if stage == "fit":
            self._detach()

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ----------------------------------------------------------------- checkpoints
    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose regularization state was saved in another mode.

        Lightning restores a callback's state by its :attr:`state_key`, which includes the mode, so
        without this check a checkpoint from another mode would silently start the regularizer
        afresh. A checkpoint with Regularization states for other penalties or selections only
        warns (this callback then starts from its own settings).

        Raises:
            ValueError: If the checkpoint holds this callback's state under another mode.
        """
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        for mode in ("loss", "grad", "prox"):
            if mode != self.mode and self._generate_state_key(**self._key_parts, mode=mode) in states:
                raise ValueError(
                    f"The checkpoint's Regularization state was saved with mode={mode!r}; this callback "
                    f"has mode={self.mode!r}. Resume with Regularization(..., mode={mode!r}), or start "
                    "from the weights alone (load them into the module and call fit without ckpt_path) "
                    "to change the mode."
                )
        others = [k for k in states if isinstance(k, str) and k.startswith(f"{type(self).__qualname__}{{")]
        if others:
            warnings.warn(
                f"The checkpoint holds Regularization state for other settings ({', '.join(others)}), none "
                f"for this callback ({self.state_key}); its regularizer starts from its own settings.",
                UserWarning,
                stacklevel=2,
            )

    def state_dict(self) -> dict[str, Any]:
        """Return the callback's state for Lightning checkpoints."""
        state = self.regularizer.state_dict() if self.regularizer is not None else self._pending_state
        return {"mode": self.mode, "regularizer": state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (now, or when the regularizer is built).

        Raises:
            ValueError: If the checkpoint was saved by a callback in another mode.
        """
        if state_dict.get("mode") != self.mode:
            raise ValueError(
                "The checkpoint's Regularization state was saved with "
                f"mode={state_dict.get('mode')!r}; this callback has mode={self.mode!r}."
            )
        state = state_dict.get("regularizer")
        if state is None:
            return
        if self.regularizer is not None:
            self.regularizer.load_state_dict(state)
        else:
            self._pending_state = state

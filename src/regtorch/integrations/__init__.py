"""Optional integrations of regtorch with training frameworks and loggers.

Each submodule imports its framework only when it is itself imported, and raises an
``ImportError`` naming the extra to install when the framework is missing:

* :mod:`regtorch.integrations.lightning` — :class:`~regtorch.integrations.lightning.Regularization`,
  a Lightning callback (``pip install 'regtorch[lightning]'``);
* :mod:`regtorch.integrations.transformers` —
  :class:`~regtorch.integrations.transformers.RegularizationCallback`, a Hugging Face ``Trainer``
  callback (``pip install 'regtorch[hf]'``);
* :mod:`regtorch.integrations.tensorboard` —
  :class:`~regtorch.integrations.tensorboard.TensorBoardLogger`, scalars and weight histograms
  (``pip install tensorboard``).

Importing this package imports none of them.
"""

__all__: list[str] = []

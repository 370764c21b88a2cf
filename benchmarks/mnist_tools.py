"""What the MNIST sparsity benchmarks share: pixel data, shifts, training with distillation, export.

* :func:`load_pixels` returns the images as float32 ``(N, 1, 28, 28)`` in ``[0, 1]`` (``k/255``
  exactly), the format the exported programs take; the normalization lives in the model
  (:class:`Normalize`), so the exported file is the whole classifier.
* :func:`random_shift` translates each image by up to ``s`` pixels (zero fill): the standard MNIST
  augmentation.
* :func:`train_epochs` trains with cross-entropy (optionally label-smoothed) and, given a teacher,
  with Hinton et al.'s distillation loss ``(1 − α)·CE + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``.
* :func:`export_and_measure` saves the model with ``torch.export.save`` (batch dimension dynamic),
  loads the file back with ``torch.export.load`` and measures zeros, weights and errors on the
  loaded program, so the reported numbers are those of the file.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from regtorch.data import iterate_batches, load_dataset

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass
class Splits:
    """Images in ``[0, 1]`` with labels; ``x_val`` is ``None`` without a validation split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor
    dataset: str


def load_pixels(
    dataset: str, data_dir: str | None, val_fraction: float, seed: int, limit: int | None
) -> Splits:
    """Load MNIST (or, to check the pipeline without it, scikit-learn's digits) as pixels in [0, 1].

    ``dataset="mnist"`` reads the IDX files through :func:`regtorch.data.load_dataset` and undoes its
    normalization (rounded back to ``k/255``). ``dataset="digits"`` takes scikit-learn's 8×8 digits
    (``x/16``), upsampled bilinearly to 28×28, split 75/25 by a fixed seed: numbers from it are not
    comparable to MNIST's, it only lets the scripts run where the MNIST files are absent.
    ``val_fraction`` moves that share of the training images to a validation split, drawn with
    ``seed``; ``limit`` keeps the first ``limit`` training and test images (smoke tests).
    """
    if dataset == "mnist":
        ds = load_dataset("mnist", data_dir=data_dir, val_fraction=val_fraction, seed=seed, limit=limit)

        def pixels(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else torch.round((x * MNIST_STD + MNIST_MEAN) * 255).clamp(0, 255) / 255

        return Splits(
            pixels(ds.x_train), ds.y_train, pixels(ds.x_val), ds.y_val, pixels(ds.x_test), ds.y_test, "mnist"
        )
    if dataset != "digits":
        raise ValueError(f"The 'dataset' argument must be 'mnist' or 'digits'; got {dataset!r}.")
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.as_tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.as_tensor(raw.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_test = len(x) // 4
    test, train = order[:n_test], order[n_test:]
    if limit is not None:
        train, test = train[:limit], test[:limit]
    n_val = round(val_fraction * len(train))
    perm = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))]
    val, train = perm[:n_val], perm[n_val:]
    return Splits(
        x[train], y[train], x[val] if n_val else None, y[val] if n_val else None, x[test], y[test], "digits"
    )


class Normalize(nn.Module):
    """``(x − mean)/std`` with constants (no buffers, so nothing extra in the state dict)."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def lenet_300_100(normalize: nn.Module) -> nn.Sequential:
    """LeNet-300-100 (784-300-100-10, ReLU) after ``normalize``; weights ``2``, ``4``, ``6``."""
    return nn.Sequential(
        normalize, nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def lenet5(normalize: nn.Module) -> nn.Sequential:
    """LeNet-5 as in Han et al. 2015 (Caffe's): conv 20@5×5, max-pool 2, conv 50@5×5, max-pool 2,
    fc 500, fc 10 — 430,500 weights; weights ``1``, ``4``, ``8``, ``10``. A ReLU follows each pooling
    layer and fc 500 (Caffe's has one after fc 500 only; the weights are the same)."""
    return nn.Sequential(
        normalize,
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )  # fmt: skip


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` (``(N, 1, H, W)``) by its own random integer offset in
    ``[−max_shift, max_shift]²``, filling with zeros (the background)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x[:, 0], (max_shift, max_shift, max_shift, max_shift))
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], rows, cols].unsqueeze(1)


def cosine(start: float, end: float, total: int) -> Callable[[int], float]:
    """``step -> end + (start − end)·(1 + cos(π·step/total))/2`` (``end`` from ``total`` steps on)."""

    def value(step: int) -> float:
        progress = min(step / max(total, 1), 1.0)
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return value


def ramp(warmup: int, length: int, shape: str) -> Callable[[int], float]:
    """Strength factor per step: 0 for ``warmup`` steps, then up to 1 over ``length`` steps.

    ``shape="linear"``: ``(step − warmup)/length``; ``"geometric"``: ``0.01^(1 − (step − warmup)/length)``
    (1% to 100%, the same factor per step); ``"cubic"``: ``1 − (1 − (step − warmup)/length)³`` (fast
    first, slow at the end, Zhu & Gupta's gradual-pruning curve).
    """

    def value(step: int) -> float:
        if step < warmup:
            return 0.0
        progress = 1.0 if length <= 0 else min((step - warmup + 1) / length, 1.0)
        if shape == "linear":
            return progress
        if shape == "cubic":
            return 1.0 - (1.0 - progress) ** 3
        return 0.01 ** (1.0 - progress)

    return value


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
    """Logits of ``model`` on ``x``, computed in chunks."""
    return torch.cat([model(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def error_rate(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor | None, y: torch.Tensor | None
) -> float | None:
    """Fraction of misclassified examples (``None`` without data).

    An ``nn.Module`` in training mode is evaluated in eval mode and put back; pass an exported
    program's module (which has no train/eval switch) wrapped in a plain function.
    """
    if x is None or y is None or len(x) == 0:
        return None
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()
    wrong = int((predict(model, x).argmax(1) != y).sum())
    if was_training:
        model.train()
    return wrong / len(x)


@dataclass
class TrainConfig:
    """How :func:`train_epochs` trains: batch size, augmentation and the loss."""

    batch_size: int = 128
    shift: int = 0
    label_smoothing: float = 0.0
    distill_alpha: float = 0.0
    temperature: float = 4.0


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    epochs: int,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    teacher: nn.Module | None = None,
    log: Callable[[int, float], None] | None = None,
) -> None:
    """Train ``epochs`` epochs, setting every group's lr to ``lr_at(step)`` before each step.

    The loss is ``CE(model(x̃), y)`` with ``x̃`` the shifted batch and ``config.label_smoothing``;
    with a teacher and ``config.distill_alpha = α > 0`` it is
    ``(1 − α)·CE + α·T²·KL(softmax(teacher(x̃)/T) ‖ softmax(model(x̃)/T))`` (``T = config.temperature``).
    """
    use_teacher = teacher is not None and config.distill_alpha > 0
    if use_teacher:
        teacher.eval()
    temp = config.temperature
    step = 0
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for idx in iterate_batches(len(x), config.batch_size, shuffle=True, generator=generator):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            xb = random_shift(x[idx], config.shift, generator)
            logits = model(xb)
            loss = F.cross_entropy(logits, y[idx], label_smoothing=config.label_smoothing)
            if use_teacher:
                with torch.no_grad():
                    target = F.softmax(teacher(xb) / temp, dim=1)
                kd = F.kl_div(F.log_softmax(logits / temp, dim=1), target, reduction="batchmean")
                loss = (1 - config.distill_alpha) * loss + config.distill_alpha * temp * temp * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            step += 1
        if log is not None:
            log(epoch, total / len(x))


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum and coupled weight decay on every parameter."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def export_and_measure(model: nn.Module, path: str | None, splits: Splits, evaluate_test: bool) -> dict[str, Any]:
    """Save ``model`` with ``torch.export.save``, load the file back and measure the loaded program.

    The program takes float32 ``(N, 1, 28, 28)`` pixels in [0, 1] (``N`` dynamic) and returns logits.
    Weights are the program's parameters with two or more dimensions (Linear and Conv weights;
    biases are not counted, as in Han et al.); zeros are their entries equal to 0.

    Returns:
        ``weights`` (entries), ``nonzero_weights``, ``zeros``, ``zero_fraction``, ``per_layer``
        (name to ``[zeros, entries]``), ``val_error``, ``test_error`` (``None`` when
        ``evaluate_test`` is false), ``export_max_abs_diff`` (largest difference between the
        program's logits and the model's on 256 training images) and ``export_path``.
    """
    model.eval()
    example = splits.x_train[:8].contiguous()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    keep = path is not None
    if not keep:
        handle, path = tempfile.mkstemp(suffix=".pt2")
        os.close(handle)
    try:
        torch.export.save(program, path)
        loaded = torch.export.load(path)
    finally:
        if not keep:
            os.unlink(path)
    params = set(loaded.graph_signature.parameters)
    per_layer = {
        name: [int((t == 0).sum()), t.numel()]
        for name, t in loaded.state_dict.items()
        if name in params and t.ndim >= 2
    }
    weights = sum(n for _, n in per_layer.values())
    zeros = sum(z for z, _ in per_layer.values())
    program_module = loaded.module()

    def program(batch: torch.Tensor) -> torch.Tensor:  # a plain function: the module has no eval()
        return program_module(batch)

    probe = splits.x_train[:256]
    with torch.no_grad():
        diff = float((program(probe) - model(probe)).abs().max())
    return {
        "weights": weights,
        "nonzero_weights": weights - zeros,
        "zeros": zeros,
        "zero_fraction": zeros / weights if weights else 0.0,
        "per_layer": per_layer,
        "val_error": error_rate(program, splits.x_val, splits.y_val),
        "test_error": error_rate(program, splits.x_test, splits.y_test) if evaluate_test else None,
        "export_max_abs_diff": diff,
        "export_path": path if keep else None,
    }

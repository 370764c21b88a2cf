"""The configuration of one training run, its defaults and its validation."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from regtorch.training._errors import UsageError
from regtorch.training._penalty_spec import DEFAULT_STRENGTH, PenaltySpec, flag_options, parse_spec

__all__ = [
    "DEFAULT_LR",
    "DEFAULT_STRENGTH",
    "MODELS",
    "MODES",
    "OPTIMIZERS",
    "PROX_METRICS",
    "SCHEDULES",
    "TrainConfig",
    "parse_layer_l1",
]

MODELS = ("mlp", "cnn")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("none", "cosine", "step")
MODES = ("loss", "grad", "prox")
GROUPINGS = ("rows", "columns", "filters", "channels", "tensor")
DEVICES = ("cpu", "cuda", "auto")
PROX_METRICS = ("euclidean", "adam")


def parse_layer_l1(text: str) -> list[tuple[str, float]]:
    """Parse ``--layer-l1``: ``'fc1.*=1e-3,fc3.*=1e-5'`` → ``[("fc1.*", 1e-3), ("fc3.*", 1e-5)]``.

    Raises:
        UsageError: For an item without ``=``, an empty pattern, or a strength that is not a
            finite number >= 0.
    """
    rules = []
    for item in text.split(","):
        if not item.strip():
            continue
        pattern, sep, value = item.partition("=")
        pattern = pattern.strip()
        try:
            strength = float(value)
        except ValueError:
            strength = math.nan
        if not sep or not pattern or not math.isfinite(strength) or strength < 0:
            raise UsageError(
                f"--layer-l1 expects PATTERN=STRENGTH items separated by commas, strengths "
                f">= 0, e.g. 'fc1.*=1e-3,fc3.*=1e-5'; got {item.strip()!r}"
            )
        rules.append((pattern, strength))
    if not rules:
        raise UsageError("--layer-l1 expects at least one PATTERN=STRENGTH item, e.g. 'fc1.*=1e-3'")
    return rules

DEFAULT_LR = {"adam": 1e-3, "adamw": 1e-3, "sgd": 0.05, "rmsprop": 1e-3}
DEFAULT_HIDDEN = {"mlp": (64, 32), "cnn": (64,)}

STRENGTH_OPTIONS = ("l1", "l2", "alpha", "l1_ratio", "p", "strength", "groups")


@dataclass
class TrainConfig:
    """Everything that defines a training run; ``config.json`` holds it, resolved.

    Strengths are for penalties summed over all regularized weights and added to the mean
    cross-entropy of a mini-batch: ``loss = CE + l1·Σ|w| + l2·Σw²`` (no ½, as in Keras).
    ``None`` means "the default" (see :meth:`resolved`).
    """

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    target: str | None = None
    val_fraction: float = 0.1
    limit: int | None = None
    # model
    model: str = "mlp"
    hidden: tuple[int, ...] | None = None
    # optimization
    optimizer: str = "adam"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    batch_size: int = 32
    epochs: int = 10
    schedule: str = "none"
    step_size: int | None = None
    gamma: float = 0.1
    seed: int = 0
    # regularization
    penalty: str = "none"
    """A penalty spec: ``NAME`` or ``NAME:KEY=VALUE,...`` (see :mod:`regtorch.training._penalty_spec`)."""
    l1: float | None = None
    l2: float | None = None
    alpha: float | None = None
    l1_ratio: float | None = None
    p: float | None = None
    strength: float | None = None
    groups: str = "rows"
    params: str = "weights"
    mode: str = "loss"
    step_factor: float = 1.0
    layer_l1: str | None = None
    """Per-layer L1 strengths, ``PATTERN=STRENGTH,...`` (fnmatch patterns over parameter names)."""
    prox_metric: str = "euclidean"
    finetune_epochs: int = 0
    """Epochs of masked fine-tuning after ``epochs``: zeros frozen, no penalty."""
    # execution
    log_every: int | None = None
    threads: int | None = None
    device: str = "cpu"
    fused: bool | None = None
    compile: bool = False
    flush_denormal: bool = True
    """Flush denormal floats to zero while training (``torch.set_flush_denormal``): see Trainer."""
    label: str = field(default="")

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dict (``hidden`` as a list)."""
        data = dataclasses.asdict(self)
        data["hidden"] = None if self.hidden is None else list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a config from :meth:`to_dict`'s output; unknown keys are an error.

        Raises:
            UsageError: If ``data`` holds a key that is not a field.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"unknown configuration key(s): {', '.join(unknown)}")
        values = dict(data)
        if values.get("hidden") is not None:
            values["hidden"] = tuple(int(h) for h in values["hidden"])
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ defaults
    def resolved(self) -> TrainConfig:
        """Return a validated copy with every ``None`` default filled in.

        Raises:
            UsageError: If a value is out of range or options contradict each other.
        """
        self.validate()
        cfg = self.replace()
        if cfg.hidden is None:
            cfg.hidden = DEFAULT_HIDDEN[cfg.model]
        if cfg.lr is None:
            cfg.lr = DEFAULT_LR[cfg.optimizer]
        if cfg.weight_decay is None:
            cfg.weight_decay = 0.01 if cfg.optimizer == "adamw" else 0.0
        if cfg.step_size is None:
            cfg.step_size = max(1, cfg.epochs // 3)
        spec = parse_spec(cfg.penalty)
        uses = flag_options(spec)
        if spec.name == "ElasticNet" and cfg.alpha is not None:
            cfg.l1_ratio = DEFAULT_STRENGTH["l1_ratio"] if cfg.l1_ratio is None else cfg.l1_ratio
        else:
            for name in ("l1", "l2", "strength", "p"):
                if name in uses and getattr(cfg, name) is None:
                    setattr(cfg, name, DEFAULT_STRENGTH[name])
        return cfg

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every value; raise :class:`UsageError` naming the command-line option."""
        _choice("--model", self.model, MODELS)
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--schedule", self.schedule, SCHEDULES)
        spec = parse_spec(self.penalty)
        _choice("--mode", self.mode, MODES)
        _choice("--groups", self.groups, GROUPINGS)
        _choice("--device", self.device, DEVICES)
        _choice("--prox-metric", self.prox_metric, PROX_METRICS)
        _integer("--finetune-epochs", self.finetune_epochs, low=0)
        if self.layer_l1 is not None:
            parse_layer_l1(self.layer_l1)
        _number("--val-fraction", self.val_fraction, low=0.0, high=1.0, high_open=True)
        _number("--lr", self.lr, low=0.0, low_open=True)
        _number("--momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _number("--weight-decay", self.weight_decay, low=0.0)
        _number("--gamma", self.gamma, low=0.0, low_open=True)
        _number("--step-factor", self.step_factor, low=0.0)
        for name in ("l1", "l2", "alpha", "strength"):
            _number("--" + name, getattr(self, name), low=0.0)
        _number("--l1-ratio", self.l1_ratio, low=0.0, high=1.0)
        _number("--p", self.p, low=1.0)
        _integer("--batch-size", self.batch_size, low=1)
        _integer("--epochs", self.epochs, low=1)
        _integer("--step-size", self.step_size, low=1)
        _integer("--seed", self.seed, low=0, high=2**64 - 1)
        _integer("--limit", self.limit, low=1)
        _integer("--log-every", self.log_every, low=0)
        cores = os.cpu_count() or 1
        _integer("--threads", self.threads, low=1, high=4 * cores, why=f" (4 x the {cores} CPU cores here)")
        if self.hidden is not None:
            if not self.hidden:
                raise UsageError("--hidden must list at least one layer size, e.g. 64,32")
            for size in self.hidden:
                _integer("--hidden", size, low=1)
        if (
            spec.name == "ElasticNet"
            and self.alpha is not None
            and (self.l1 is not None or self.l2 is not None)
        ):
            raise UsageError(
                "--alpha/--l1-ratio and --l1/--l2 are two ways to set the elastic net's "
                "strengths; give one of them"
            )
        if self.target is not None and not self.dataset.startswith("csv:"):
            raise UsageError(f"--target is only used with --dataset csv:PATH; got {self.dataset!r}")

    def check_unused_strengths(self) -> None:
        """Reject strength options the chosen penalty does not read (``regtorch train``).

        Raises:
            UsageError: For example ``--l1`` with ``--penalty l2``.
        """
        spec = parse_spec(self.penalty)
        uses = flag_options(spec)
        for name in STRENGTH_OPTIONS:
            value = getattr(self, name)
            if name == "groups" and value == "rows":
                continue
            if value is not None and name not in uses:
                if name in flag_options(PenaltySpec(spec.name)):
                    raise UsageError(
                        f"--{name.replace('_', '-')} sets what --penalty {self.penalty!r} already gives; "
                        "give it once"
                    )
                raise UsageError(
                    f"--{name.replace('_', '-')} is not used by --penalty {self.penalty}; it "
                    f"is an option of --penalty {' or '.join(_users(name))}"
                )


def _users(option: str) -> list[str]:
    names = ["l1", "l2", "elasticnet", "lp", "group", "sparse-group"]
    return [n for n in names if option in flag_options(parse_spec(n))]


def _choice(option: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}; got {value!r}")


def _number(
    option: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number; got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise UsageError(f"{option} must be {'>' if low_open else '>='} {low:g}; got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise UsageError(f"{option} must be {'<' if high_open else '<='} {high:g}; got {value!r}")


def _integer(option: str, value: object, *, low: int, high: int | None = None, why: str = "") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{option} must be an integer; got {value!r}")
    if value < low:
        raise UsageError(f"{option} must be >= {low}; got {value!r}")
    if high is not None and value > high:
        raise UsageError(f"{option} must be <= {high}{why}; got {value!r}")

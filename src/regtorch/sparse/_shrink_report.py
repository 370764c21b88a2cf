"""What :func:`regtorch.shrink` removes: per layer, per coupled group, and in total."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

__all__ = ["GroupShrink", "LayerShrink", "ShrinkReport"]


@dataclass(frozen=True)
class LayerShrink:
    """What shrinking does to one layer.

    Attributes:
        name: Qualified module name (``""`` for a model that is a single layer).
        type: Module type name (``"Linear"``, ``"Conv2d"``, ``"BatchNorm1d"``...).
        unit: What a unit is: ``"neurons"`` (Linear, Hugging Face ``Conv1D``), ``"filters"``
            (convolutions), ``"channels"`` or ``"features"`` (BatchNorm before or after a
            ``Flatten``; Embedding columns are ``"features"``).
        units_before: Output units before shrinking.
        units_after: Output units after shrinking.
        removed: Indices (in the original layer) of the removed output units.
        folded: The removed units whose constant output was added to the next layer's bias.
        inputs_before: Input units (features / channels) before shrinking.
        inputs_after: Input units after shrinking.
        params_before: Parameters of this layer before shrinking.
        params_after: Parameters of this layer after shrinking.
    """

    name: str
    type: str
    unit: str
    units_before: int
    units_after: int
    removed: tuple[int, ...]
    folded: tuple[int, ...]
    inputs_before: int
    inputs_after: int
    params_before: int
    params_after: int


@dataclass(frozen=True)
class GroupShrink:
    """An all-zero coupled group found by the dependency-graph path of :func:`regtorch.shrink`.

    Attributes:
        label: The group's label (``"layer1.0.conv1 out 5"``, ``"encoder.layer.0.attention.self head 3"``).
        params: Parameter entries in the group.
        removed: Whether it was removed.
        reason: Why it was kept (``""`` when removed).
    """

    label: str
    params: int
    removed: bool
    reason: str = ""


@dataclass
class ShrinkReport:
    """What :func:`regtorch.shrink` removes from a model (see :func:`regtorch.shrink_report`).

    Attributes:
        layers: One entry per weight layer of the analysed chain and per BatchNorm between two
            of them, in forward order (chain path); one entry per sliced layer (graph path).
        params_before: Parameters of the whole model (shared ones once).
        params_after: Parameters after shrinking.
        bytes_before: Bytes of all parameters and buffers stored densely.
        bytes_after: The same after shrinking.
        skipped: What could not be shrunk, and why; those parts are left unchanged.
        notes: Other remarks (a unit kept so that a layer is not empty, a bias added to hold
            folded constants, groups that are zero only in part).
        method: ``"chain"`` (the layer-chain analysis) or ``"graph"`` (coupled groups traced with
            Torch-Pruning); see :func:`regtorch.shrink`.
        groups: Graph path: every all-zero coupled group, removed or kept (with the reason).
        max_abs_diff: Graph path: the largest absolute difference between the eval outputs of the
            original and the shrunk model on ``example_input`` (``None`` on the chain path).
    """

    layers: list[LayerShrink] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    method: str = "chain"
    groups: list[GroupShrink] = field(default_factory=list)
    max_abs_diff: float | None = None

    @property
    def removed_units(self) -> int:
        """Output units removed from the weight layers (BatchNorm entries not counted)."""
        return sum(len(x.removed) for x in self.layers if x.unit in ("neurons", "filters"))

    @property
    def removed_groups(self) -> int:
        """Coupled groups removed (graph path)."""
        return sum(g.removed for g in self.groups)

    @property
    def kept_groups(self) -> list[GroupShrink]:
        """All-zero coupled groups that were kept, each with its reason (graph path)."""
        return [g for g in self.groups if not g.removed]

    def format(self, max_indices: int = 8) -> str:
        """Return a readable text table.

        Args:
            max_indices: How many removed indices (and kept groups per reason) to print before
                ``+N more``.
        """
        rows = [("layer", "type", "units", "removed", "inputs", "params")]
        for x in self.layers:
            shown = ", ".join(str(i) for i in x.removed[:max_indices])
            extra = len(x.removed) - max_indices
            removed = f"[{shown}{f', +{extra} more' if extra > 0 else ''}]" if x.removed else "-"
            rows.append((
                x.name or "(model)", x.type, f"{x.unit} {x.units_before} -> {x.units_after}",
                removed, f"{x.inputs_before} -> {x.inputs_after}",
                f"{x.params_before:,} -> {x.params_after:,}",
            ))  # fmt: skip
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        saved = 1 - self.params_after / self.params_before if self.params_before else 0.0
        lines.append(
            f"total: params {self.params_before:,} -> {self.params_after:,} ({saved:.1%} fewer), "
            f"bytes {self.bytes_before:,} -> {self.bytes_after:,}"
        )
        if self.method == "graph":
            kept = self.kept_groups
            difference = (
                "" if self.max_abs_diff is None else f"; max |output difference| {self.max_abs_diff:.3g}"
            )
            lines.append(
                f"coupled groups (dependency graph): {len(self.groups)} all zero, "
                f"{self.removed_groups} removed, {len(kept)} kept{difference}"
            )
            by_reason: dict[str, list[str]] = defaultdict(list)
            for group in kept:
                by_reason[group.reason].append(group.label)
            if by_reason:
                lines.append("kept zero groups:")
            for reason, labels in by_reason.items():
                extra = len(labels) - max_indices
                shown = ", ".join(labels[:max_indices]) + (f", +{extra} more" if extra > 0 else "")
                lines.append(f"  - {reason}: {shown}")
        for title, items in (("skipped", self.skipped), ("notes", self.notes)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  - {item}" for item in items)
        return "\n".join(lines)

"""Plot the MNIST sparsity frontier (test error against exact zeros or weights) next to the anchors.

Reads the result lines committed under ``benchmarks/results/<benchmark>/<config>-seed<N>.json``
(each the last stdout line of a final run, ``--val-fraction 0``) and draws one panel per
benchmark: every seed as a small dot, the mean over seeds as a larger marker joined into a
frontier, the published points as labelled stars and the target as a shaded region. The test
error of the dense network trained the same way (``benchmarks/results/baselines/<name>.json``,
the same script with zero strengths and no pruning) is a dotted line where it exists.

Usage:
    python benchmarks/plot_sparsity_frontier.py [--results benchmarks/results] [--out docs/images/sparsity_frontier.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (label, x, test error %) — x is % zeros or weights. Sources: Han et al. 2015 (Table 1); for the
# structured panel Louizos et al. 2018 (L0), Neklyudov et al. 2017 (SBP), Dai et al. 2018 (VIB) as
# "best test error seen in training" (1.6%), Evci et al. 2020 (RigL+, 1.69% final); and this
# repository's earlier quick tries described with the targets.
PANELS = {
    "sparsity_lenet300": {
        "title": "LeNet-300-100, unstructured",
        "x": "zero_fraction",
        "xlabel": "exact zeros (% of 266,200 weights)",
        "anchors": [("Han et al. 2015", 92.0, 1.59)],
        "target": ("zeros", 95.0, 1.64),
        "baseline": ("dense_lenet300", "dense LeNet-300-100, same training"),
    },
    "sparsity_lenet5": {
        "title": "LeNet-5, unstructured",
        "x": "zero_fraction",
        "xlabel": "exact zeros (% of 430,500 weights)",
        "anchors": [
            ("Han et al. 2015", 92.0, 0.77),
            ("earlier quick try", 95.8, 0.88),
            ("earlier quick try", 98.3, 1.04),
        ],
        "target": ("zeros", 95.0, 0.80),
        "baseline": ("dense_lenet5", "dense LeNet-5, same training"),
    },
    "structured_lenet300": {
        "title": "LeNet-300-100 shrunk to a dense network",
        "x": "weights",
        "xlabel": "weights of the dense network (log scale)",
        "anchors": [
            ("SBP 245-160-55\n(best seen)", 48550, 1.6),
            ("L0 266-88-33 (best seen)", 26642, 1.6),
            ("VIB 97-71-33 (best seen)", 9560, 1.6),
            ("RigL+ 375-62-51 (final)", 26922, 1.69),
            ("earlier quick try", 23250, 1.90),
            ("earlier quick try", 9507, 2.34),
        ],
        "target": ("weights", 26642, 1.70),
        "baseline": ("dense_lenet300", "dense LeNet-300-100 (unstructured recipe)"),
    },
}


def load_results(folder: Path) -> dict[str, dict[str, list[dict]]]:
    """``benchmark -> config -> [result, ...]`` from ``folder/<benchmark>/<config>-seed<N>.json``."""
    runs: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(folder.glob("*/*-seed*.json")):
        config = path.stem.rsplit("-seed", 1)[0]
        runs[path.parent.name][config].append(json.loads(path.read_text()))
    return runs


def x_value(result: dict, key: str) -> float:
    """Percent zeros, or weights."""
    return 100 * result[key] if key == "zero_fraction" else result[key]


def markdown_table(bench: str, configs: dict[str, list[dict]]) -> str:
    """One row per configuration: size, the test error of each seed, their mean, the runtime."""
    structured = PANELS[bench]["x"] == "weights"
    head = "| config | architecture | weights | " if structured else "| config | exact zeros | nonzero weights | "
    lines = [head + "test error per seed | mean | runtime per seed (threads; 5-minute load) |", "|---|---|---|---|---|---|"]
    for config, results in sorted(configs.items(), key=lambda kv: kv[1][0]["weights"] - kv[1][0]["zeros"]):
        results = sorted(results, key=lambda r: r["settings"]["seed"])
        errors = ", ".join(f"{100 * r['test_error']:.2f}% (seed {r['settings']['seed']})" for r in results)
        mean = statistics.mean(100 * r["test_error"] for r in results)
        times = ", ".join(
            f"{r['timings_s']['total']:.0f} s ({r['torch_threads']}; load {r['machine']['load_average'][1]:.1f})"
            for r in results
        )
        sizes = {(tuple(r.get("architecture", ())), r["weights"], r["zeros"]) for r in results}
        if structured:
            size = "; ".join(f"{'-'.join(map(str, a))} | {w:,}" for a, w, _ in sorted(sizes))
        else:
            size = "; ".join(f"{100 * z / w:.2f}% | {w - z:,}" for _, w, z in sorted(sizes))
        lines.append(f"| {config} | {size} | {errors} | {mean:.2f}% | {times} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Draw the panels and save the PNG (``--table``: print the Markdown tables instead)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "images" / "sparsity_frontier.png")
    parser.add_argument("--table", action="store_true", help="print one Markdown table per benchmark")
    args = parser.parse_args(argv)
    if args.table:
        for bench, configs in sorted(load_results(args.results).items()):
            print(f"### {bench}\n\n{markdown_table(bench, configs)}\n")
        return

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_results(args.results)
    fig, axes = plt.subplots(1, 3, figsize=(17, 6.0))
    for ax, (bench, panel) in zip(axes, PANELS.items(), strict=True):
        key = panel["x"]
        means = []
        for config, results in sorted(runs.get(bench, {}).items()):
            xs = [x_value(r, key) for r in results]
            ys = [100 * r["test_error"] for r in results]
            ax.scatter(xs, ys, s=12, color="tab:blue", alpha=0.45, zorder=3)
            means.append((statistics.mean(xs), statistics.mean(ys), config, len(results)))
        means.sort()
        if means:
            ax.plot([m[0] for m in means], [m[1] for m in means], "o-", color="tab:blue", zorder=4,
                    label="regtorch (mean of seeds; dots: each seed)")  # fmt: skip
            for mx, my, config, n in means:
                ax.annotate(f"{config} ({n})", (mx, my), textcoords="offset points", xytext=(4, 6), fontsize=7)
        for label, ax_x, ax_y in panel["anchors"]:
            ax.scatter([ax_x], [ax_y], marker="*", s=110, color="tab:red", zorder=5)
            below = label.startswith("L0")  # L0 and RigL+ sit close together: one label above, one below
            ax.annotate(label, (ax_x, ax_y), textcoords="offset points", xytext=(4, -11 if below else 5),
                        fontsize=7, color="tab:red", ha="left" if "SBP" not in label else "right")  # fmt: skip
        name, what = panel["baseline"]
        baseline = args.results / "baselines" / f"{name}.json"
        if baseline.is_file():
            dense = 100 * json.loads(baseline.read_text())["test_error"]
            ax.axhline(dense, color="gray", linestyle=":", label=f"{what} ({dense:.2f}%)")
        kind, tx, ty = panel["target"]
        if kind == "zeros":
            ax.fill_between([tx, 100], 0, ty, color="tab:green", alpha=0.15, label="target")
            ax.set_xlim(left=min([88.0] + [m[0] - 1 for m in means]), right=100)
        else:
            ax.set_xscale("log")
            ax.fill_between([1000, tx], 0, ty, color="tab:green", alpha=0.15, label="target")
            ax.set_xlim(min([5000.0] + [m[0] * 0.8 for m in means]), 60000)
        ys_all = [m[1] for m in means] + [a[2] for a in panel["anchors"]]
        if baseline.is_file():
            ys_all.append(dense)
        ax.set_ylim(min(ys_all) * 0.85, max(ys_all) * 1.08)
        ax.set_title(panel["title"])
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel("final test error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle("MNIST sparsity frontier: regtorch recipes (exported models) and published points", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

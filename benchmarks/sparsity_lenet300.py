"""Sparse LeNet-300-100 on MNIST with regtorch: L1 prox training, magnitude clean-up, masked fine-tuning.

Target: at least 95% of LeNet-300-100's 266,200 weights (784·300 + 300·100 + 100·10; the 410 biases
are not counted and stay dense, as in Han et al. 2015) exactly zero at no more than 1.64% test error
(Han et al.: 92% zeros at 1.59%, dense 1.64%).

The recipe is :mod:`unstructured_recipe`'s (teacher, L1 prox sparse phase, magnitude clean-up
rounds with masked fine-tuning, export); the defaults below are the settings chosen on a
validation split. Inputs are pixels in [0, 1]; the network divides them by 0.3081 itself
(``--input uncentered``: the background stays exactly 0, so weights of always-blank pixels get no
gradient and the L1 prox zeroes them).

Usage:
    python benchmarks/sparsity_lenet300.py --data-dir /path/to/mnist --json --export lenet300.pt2
"""

from __future__ import annotations

import sys

import unstructured_recipe
from mnist_tools import lenet5, lenet_300_100

LAYERS = ("2.weight", "4.weight", "6.weight")

DEFAULTS = {
    "shift": 2,
    "strength": [1e-3, 3e-4, 3e-5],
    "prune_to": [0.975, 0.94, 0.75],
    "stages": 3,
    "stage_epochs": 10,
    "finetune_epochs": 30,
}

TARGET = {"zero_fraction_min": 0.95, "test_error_max": 0.0164}

if __name__ == "__main__":
    unstructured_recipe.main(
        sys.argv[1:], __doc__.split("\n\n")[0], lenet_300_100, LAYERS, DEFAULTS, TARGET,
        teachers={"lenet300": lenet_300_100, "lenet5": lenet5},
    )  # fmt: skip

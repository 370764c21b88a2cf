"""Sparse LeNet-5 on MNIST with regtorch: L1 prox training, magnitude clean-up, masked fine-tuning.

Target: at least 95% of the 430,500 weights of LeNet-5 as in Han et al. 2015 (conv 20@5×5,
max-pool, conv 50@5×5, max-pool, fc 500, fc 10: 500 + 25,000 + 400,000 + 5,000 weights; the 580
biases are not counted and stay dense) exactly zero at no more than 0.80% test error (Han et al.:
92% zeros at 0.77%, dense 0.80%).

The recipe is :mod:`unstructured_recipe`'s (L1 prox sparse phase with per-layer strengths,
magnitude clean-up rounds with masked fine-tuning, export); the defaults below are the settings
chosen on a validation split. Inputs are pixels in [0, 1]; the network divides them by 0.3081
itself.

Usage:
    python benchmarks/sparsity_lenet5.py --data-dir /path/to/mnist --json --export lenet5.pt2
"""

from __future__ import annotations

import sys

import unstructured_recipe
from mnist_tools import lenet5

LAYERS = ("1.weight", "4.weight", "8.weight", "10.weight")

DEFAULTS = {
    "strength": [0.0, 3e-4, 1e-3, 1e-4],
    "prune_to": [0.40, 0.90, 0.985, 0.85],
    "epochs": 20,
    "ramp_epochs": 15,
    "finetune_epochs": 15,
    "shift": 2,
}

TARGET = {"zero_fraction_min": 0.95, "test_error_max": 0.0080}

if __name__ == "__main__":
    unstructured_recipe.main(
        sys.argv[1:], __doc__.split("\n\n")[0], lenet5, LAYERS, DEFAULTS, TARGET, teachers={"lenet5": lenet5}
    )

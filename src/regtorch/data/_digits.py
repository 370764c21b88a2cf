"""scikit-learn's bundled 8x8 digits, split 75/25 stratified with a fixed seed."""

from __future__ import annotations

import numpy as np

from ._dataset import RawSplits, stratified_split
from ._errors import DataError

__all__ = ["load_digits_raw"]

# Fixed split of the digits data set, so test accuracy is comparable between runs.
_DIGITS_TEST_FRACTION = 0.25
_DIGITS_SPLIT_SEED = 0


def load_digits_raw() -> RawSplits:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(
            "The 'digits' data set needs scikit-learn, which is not installed; install it "
            "with: pip install 'regtorch[cli]' (or pip install scikit-learn)."
        ) from exc
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(y, _DIGITS_TEST_FRACTION, _DIGITS_SPLIT_SEED)
    return RawSplits(
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        num_classes=10,
        input_shape=(1, 8, 8),
        class_names=tuple(str(d) for d in range(10)),
        channel_stats=None,
    )

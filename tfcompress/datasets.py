"""Bundled data sets: nothing is downloaded at run time."""

import numpy as np


def load_digits(test_size=0.2, seed=0, shape="flat"):
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1] and split by class.

    Args:
        test_size: share of each class held out for testing, in (0, 1).
        seed: seed of the split; the same seed always gives the same split.
        shape: `"flat"` gives images of shape (N, 64) for MLPs, `"image"`
            gives (N, 8, 8, 1) for CNNs.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, images float32 in [0, 1] and
        labels int32 in 0..9.

    Example:
        >>> (x_tr, y_tr), (x_te, y_te) = load_digits()
        >>> x_tr.shape, x_te.shape
        ((1437, 64), (360, 64))
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"`test_size` must be in (0, 1). Received: test_size={test_size}")
    if shape not in ("flat", "image"):
        raise ValueError(f"`shape` must be 'flat' or 'image'. Received: shape={shape!r}")
    from sklearn.datasets import load_digits as _sk_load_digits

    data = _sk_load_digits()
    x = (data.data / 16.0).astype("float32")
    y = data.target.astype("int32")
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(idx) * test_size))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    if shape == "image":
        x = x.reshape(-1, 8, 8, 1)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])

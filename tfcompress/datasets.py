"""Bundled data sets: nothing is downloaded at run time."""

import numpy as np


def load_digits(test_size=0.2, seed=0, shape="flat", size=8, channels=1):
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1] and split by class.

    Args:
        test_size: share of each class held out for testing, in (0, 1).
        seed: seed of the split; the same seed always gives the same split.
        shape: `"flat"` gives images of shape (N, 64) for MLPs, `"image"`
            gives (N, size, size, channels) for CNNs, `"sequence"` gives
            (N, 8, 8) for recurrent nets and transformers: 8 time steps (the
            rows, top to bottom) of 8 features.
        size: with `"image"`, the side of the images: 8, or larger for
            networks that need a bigger input (`keras.applications` models
            take 32 and up); the 8x8 pixels are upscaled bilinearly
            (pixel centres aligned, edges clamped).
        channels: with `"image"`, 1, or 3 for RGB networks (the gray image
            repeated).

    Returns:
        `((x_train, y_train), (x_test, y_test))`, images float32 in [0, 1] and
        labels int32 in 0..9.

    Example:
        >>> (x_tr, y_tr), (x_te, y_te) = load_digits()
        >>> x_tr.shape, x_te.shape
        ((1438, 64), (359, 64))
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"`test_size` must be in (0, 1). Received: test_size={test_size}")
    if shape not in ("flat", "image", "sequence"):
        raise ValueError(
            f"`shape` must be 'flat', 'image' or 'sequence'. Received: shape={shape!r}"
        )
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"`size` must be an integer >= 8. Received: size={size!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    if shape != "image" and (size, channels) != (8, 1):
        raise ValueError(
            "`size` and `channels` only apply to shape='image'. "
            f"Received: shape={shape!r}, size={size!r}, channels={channels!r}"
        )
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
        x = _upscale(x.reshape(-1, 8, 8), int(size))
        x = np.repeat(x[..., None], channels, axis=-1)
    elif shape == "sequence":
        x = x.reshape(-1, 8, 8)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def _upscale(images, size):
    """Bilinear resize of (N, 8, 8) images to (N, size, size), half-pixel centres."""
    if size == 8:
        return images
    coords = np.clip((np.arange(size) + 0.5) * 8 / size - 0.5, 0, 7)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, 7)
    frac = (coords - low).astype("float32")
    rows = images[:, low, :] * (1 - frac)[:, None] + images[:, high, :] * frac[:, None]
    return (rows[:, :, low] * (1 - frac) + rows[:, :, high] * frac).astype("float32")

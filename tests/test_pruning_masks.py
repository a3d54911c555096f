"""Mask maths against NumPy references (argsort, per-group sorting, pooling)."""

import math
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

from tfcompress.pruning import masks


def _fewest_reaching(size, sparsity):
    """Fewest k with float32(k / size) >= float32(sparsity), by search."""
    target = np.float32(sparsity)
    k = math.ceil(float(target) * size)
    while k > 0 and np.float32((k - 1) / size) >= target:
        k -= 1
    return k


def _argsort_reference(w, sparsity):
    """Prune the ceil(s * n) smallest |w|, ties broken by position (stable argsort)."""
    flat = np.abs(w).ravel()
    k = _fewest_reaching(flat.size, sparsity)
    mask = np.ones(flat.size, np.float32)
    mask[np.argsort(flat, kind="stable")[:k]] = 0
    return mask.reshape(w.shape)


@pytest.mark.parametrize("shape", [(7,), (64, 32), (3, 3, 8, 16), (1000,)])
def test_magnitude_mask_matches_argsort(shape):
    w = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    for sparsity in (0.0, 0.1, 0.5, 0.8, 0.97):
        got = masks.magnitude_mask(w, sparsity).numpy()
        np.testing.assert_array_equal(got, _argsort_reference(w, sparsity))


@pytest.mark.parametrize("sparsity", [0.3, 0.55, 0.9])
def test_ties_never_leave_sparsity_below_target(sparsity):
    # Few distinct magnitudes: thresholds fall inside large groups of ties.
    w = np.random.default_rng(2).integers(-3, 4, size=(40, 25)).astype(np.float32) / 4
    got = masks.magnitude_mask(w, sparsity).numpy()
    np.testing.assert_array_equal(got, _argsort_reference(w, sparsity))
    assert (got == 0).mean() >= sparsity


def test_all_equal_and_zero_weights():
    w = np.zeros((10, 10), np.float32)
    assert (masks.magnitude_mask(w, 0.37).numpy() == 0).sum() == 37
    w = np.full((4, 5), -2.0, np.float32)
    np.testing.assert_array_equal(masks.magnitude_mask(w, 0.5).numpy(), _argsort_reference(w, 0.5))


def test_extreme_values():
    w = np.array([np.inf, -1e-38, 3e38, 0.0, -7.0, 1e-45], np.float32)
    np.testing.assert_array_equal(masks.magnitude_mask(w, 0.5).numpy(), _argsort_reference(w, 0.5))


@pytest.mark.parametrize("k", [1, 2, 17, 500, 999, 1000])
def test_kth_smallest_bits_matches_sort(k):
    values = np.abs(np.random.default_rng(3).standard_normal(1000)).astype(np.float32)
    bits = tf.bitcast(tf.constant(values), tf.int32)
    got = tf.bitcast(masks.kth_smallest_bits(bits, tf.constant(k)), tf.float32).numpy()
    assert got == np.sort(values)[k - 1]


@pytest.mark.parametrize(
    "size,sparsity,expected", [(1000, 0.8, 800), (2048, 0.8, 1639), (10, 0.0, 0), (3, 0.5, 2)]
)
def test_num_to_prune(size, sparsity, expected):
    assert int(masks.num_to_prune(size, np.float32(sparsity))) == expected


@pytest.mark.parametrize(
    "size,sparsity", [(30522 * 768, 0.8), (8_000_001, 0.5), (4_194_307, 0.75), (3_000_001, 0.9)]
)
def test_num_to_prune_large_weights_reach_the_target(size, sparsity):
    # A BERT-size embedding at 0.8 and odd sizes at 0.5 were left a few weights short.
    got = int(masks.num_to_prune(size, np.float32(sparsity)))
    assert got == math.ceil(Fraction(str(sparsity)) * size)


def test_num_to_prune_is_the_fewest_reaching_the_float32_target():
    rng = np.random.default_rng(4)
    cases = zip(rng.integers(1, 1 << 24, 40).tolist(), rng.uniform(0.0, 1.0, 40).astype(np.float32))
    for size, sparsity in cases:
        assert int(masks.num_to_prune(size, sparsity)) == _fewest_reaching(size, sparsity)


def _nearest_blocks(n, sparsity):
    """Brute force: the k in [0, n - 1] nearest sparsity * n; the smaller on a tie.

    The float32 target stands for every decimal in its rounding interval; the lowest of them
    is used, so a tie (k + 1/2) anywhere in that interval also goes to the smaller k.
    """
    f = np.float32(sparsity)
    lowest = (Fraction(float(f)) + Fraction(float(np.nextafter(f, np.float32(0))))) / 2
    return min(range(max(n, 1)), key=lambda k: (abs(k - lowest * n), k))


def _block_reference(w, sparsity, block, pooling):
    matrix = np.abs(w.reshape(-1, w.shape[-1]))
    rows, cols = block
    n_r, n_c = -(-matrix.shape[0] // rows), -(-matrix.shape[1] // cols)
    scores = np.zeros((n_r, n_c), np.float32)
    for i in range(n_r):
        for j in range(n_c):
            patch = matrix[i * rows : (i + 1) * rows, j * cols : (j + 1) * cols]
            scores[i, j] = patch.max() if pooling == "MAX" else patch.mean()
    keep = np.ones(scores.size, np.float32)
    keep[np.argsort(scores.ravel(), kind="stable")[: _nearest_blocks(scores.size, sparsity)]] = 0
    keep = keep.reshape(scores.shape)
    full = np.repeat(np.repeat(keep, rows, 0), cols, 1)[: matrix.shape[0], : matrix.shape[1]]
    return full.reshape(w.shape)


@pytest.mark.parametrize(
    "shape,block",
    [((8, 6), (2, 3)), ((7, 5), (2, 2)), ((3, 3, 4, 6), (4, 1)), ((64, 32), (32, 16))],
)
@pytest.mark.parametrize("pooling", ["AVG", "MAX"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_block_mask_matches_reference(shape, block, pooling, sparsity):
    w = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    got = masks.block_mask(w, sparsity, block, pooling).numpy()
    np.testing.assert_allclose(got, _block_reference(w, sparsity, block, pooling))


@pytest.mark.parametrize(
    "n,sparsity,expected",
    [
        (1, 0.3, 0),  # one block: never the whole weight (ceil gave 1: a zero kernel)
        (1, 0.8, 0),
        (8, 0.3, 2),  # 2.4: ceil gave 3 (0.375, 0.075 over the target)
        (4, 0.3, 1),
        (10, 0.3, 3),  # float32 0.3 * 10 is 3.0000001: still 3, not 4
        (10, 0.35, 3),  # an exact tie (3.5) rounds down
        (2, 0.25, 0),
        (2, 0.8, 1),
        (512, 0.8, 410),
        (100, 0.996, 99),  # never all blocks
        (10, 0.0, 0),
        (0, 0.5, 0),
    ],
)
def test_num_blocks_to_prune_cases(n, sparsity, expected):
    assert _nearest_blocks(n, sparsity) == expected  # the reference agrees with the hand count
    assert int(masks.num_blocks_to_prune(n, np.float32(sparsity))) == expected


@pytest.mark.slow
def test_num_blocks_to_prune_is_nearest_and_never_a_block_over():
    rng = np.random.default_rng(6)
    sizes = rng.integers(1, 5000, 300).tolist() + list(range(1, 41))
    targets = [float(str(np.float32(s))) for s in rng.uniform(0.0, 1.0, 340)]
    for n, s in zip(sizes, targets):
        k = int(masks.num_blocks_to_prune(n, np.float32(s)))
        assert k == _nearest_blocks(n, s), (n, s)
        assert 0 <= k <= n - 1
        assert k / n - Fraction(str(s)) <= Fraction(1, n)  # never over by a block or more
        if k < n - 1:  # away from the cap: within half a block (at float32 precision)
            assert abs(Fraction(k, n) - Fraction(str(s))) <= Fraction(1, 2 * n) + Fraction(1, 2**24)
    for n in range(1, 41):  # every tie k + 1/2 (as decimals that float32 holds closely)
        for k in range(n - 1):
            s = Fraction(2 * k + 1, 2 * n)
            got = int(masks.num_blocks_to_prune(n, np.float32(float(s))))
            assert got == k, (n, s)


def test_block_mask_realised_sparsity_against_reference():
    # Whole blocks: the fraction of zero weights is exactly the block fraction.
    w = np.random.default_rng(7).standard_normal((48, 20)).astype(np.float32)
    n = (48 // 4) * (20 // 5)
    for s in np.linspace(0.0, 0.99, 34, dtype=np.float32):
        zeros = (masks.block_mask(w, s, (4, 5)).numpy() == 0).mean()
        assert zeros == _nearest_blocks(n, float(str(s))) / n
        assert zeros - float(s) <= 1 / n


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_size=(0, 2)), r"Received: block_size=\(0, 2\)"),
        (dict(block_size=3), "Received: block_size=3"),
        (dict(block_size=(2, 2.0)), r"Received: block_size=\(2, 2.0\)"),
        (dict(block_size=(2, 2), pooling="MEAN"), "Received: pooling=MEAN"),
    ],
)
def test_block_mask_bad_arguments(kwargs, match):
    w = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match=match):
        masks.block_mask(w, 0.5, **kwargs)


@pytest.mark.parametrize(
    "shape,m,n", [((16, 8), 2, 4), ((3, 3, 8, 5), 2, 4), ((12, 3), 1, 3), ((8,), 3, 4)]
)
def test_m_by_n_every_group(shape, m, n):
    rng = np.random.default_rng(5)
    w = rng.integers(-4, 5, size=shape).astype(np.float32)  # many ties
    got = masks.m_by_n_mask(w, m, n).numpy()
    axis = len(shape) - 2 if len(shape) >= 2 else 0
    groups_w = np.moveaxis(w, axis, -1).reshape(-1, n)
    groups_m = np.moveaxis(got, axis, -1).reshape(-1, n)
    for gw, gm in zip(groups_w, groups_m):
        assert gm.sum() == m
        kept = np.argsort(-np.abs(gw), kind="stable")[:m]
        np.testing.assert_array_equal(np.sort(np.nonzero(gm)[0]), np.sort(kept))

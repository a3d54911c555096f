"""Mask maths for magnitude pruning: pure functions of a weight tensor.

The k-th smallest magnitude is found by a radix select on the float bits of
|w| (two histogram passes, O(n)), never by a full sort: non-negative IEEE
floats order like their bit patterns read as integers. TensorFlow ops are used
directly because bit casts and bounded histograms are the point here and run
inside the mask-update graph on any device.

A mask is 1.0 where a weight is kept and 0.0 where it is pruned, with the
weight's shape and dtype.
"""

import numbers

import tensorflow as tf

POOLING_TYPES = ("AVG", "MAX")
_HI_BINS = 1 << 15  # bits >> 16 of a non-negative float32 (sign bit clear)
_LO_BINS = 1 << 16


def check_block_size(block_size):
    """`block_size` as a tuple of two positive ints.

    Raises:
        ValueError: anything else, naming the received value.
    """
    ok = (
        isinstance(block_size, (tuple, list))
        and len(block_size) == 2
        and all(
            isinstance(b, numbers.Integral) and not isinstance(b, bool) and b >= 1
            for b in block_size
        )
    )
    if not ok:
        raise ValueError(
            "`block_size` must be two positive integers (rows, cols). "
            f"Received: block_size={block_size}"
        )
    return tuple(int(b) for b in block_size)


def check_pooling(pooling, name="pooling"):
    """Raises ValueError, naming argument `name`, unless `pooling` is "AVG" or "MAX"."""
    if pooling not in POOLING_TYPES:
        raise ValueError(f"`{name}` must be one of {POOLING_TYPES}. Received: {name}={pooling}")


def _scaled_lower_edge(size, sparsity):
    """`(target, size, edge)`: edge is `size` times the lower end of the float32
    rounding interval of `sparsity`, so a float32 target counts as its decimal
    value (0.8 as 4/5, not 0.800000012)."""
    target = tf.cast(sparsity, tf.float32)
    below = tf.math.nextafter(target, tf.zeros_like(target))
    size = tf.cast(size, tf.float64)
    edge = (tf.cast(target, tf.float64) + tf.cast(below, tf.float64)) / 2.0 * size
    return target, size, edge


def num_to_prune(size, sparsity):
    """Number of weights to prune: ceil(sparsity * size), at float32 tolerance.

    The fewest k whose fraction k / size rounds (in float32) to no less than the
    float32 `sparsity`: ties and rounding never leave the sparsity below its
    target, and the float32 0.8 (0.800000012) still gives 800 of 1000, not 801.
    The tolerance is half an ulp of `sparsity` times `size`, so a large weight
    (an embedding of millions of entries) is not left a few weights short.

    Args:
        size: Number of weights (int or scalar tensor).
        sparsity: Target fraction of zeros (float or scalar tensor) in [0, 1).

    Returns:
        Scalar int32 tensor.
    """
    target, size, edge = _scaled_lower_edge(size, sparsity)
    k = tf.where(target > 0, tf.floor(edge) + 1.0, 0.0)
    return tf.cast(tf.clip_by_value(k, 0.0, size), tf.int32)


def num_blocks_to_prune(num_blocks, sparsity):
    r"""Number of blocks to prune: the nearest to `sparsity * num_blocks`, never all.

    .. math::
        k = \min\left(\left\lceil s\,n - \tfrac{1}{2} \right\rceil,\; n - 1\right)

    Blocks are coarse, so the count is rounded to the nearest integer (a tie,
    such as 0.25 of 2 blocks, rounds down) instead of up as for single weights:
    the realised fraction `k / n` is the closest to the target and never above
    it by more than half a block. A target below 1 never prunes every block, so
    a weight that is a single block (`block_size` as large as the kernel) is
    left whole instead of zeroed. Same float32 tolerance as `num_to_prune`.

    Args:
        num_blocks: Number of blocks `n` (int or scalar tensor).
        sparsity: Target fraction of pruned blocks `s` in [0, 1).

    Returns:
        Scalar int32 tensor in [0, n - 1] (0 when n is 0).

    Example:
        >>> [int(num_blocks_to_prune(n, 0.3)) for n in (1, 4, 10)]
        [0, 1, 3]
    """
    _, size, edge = _scaled_lower_edge(num_blocks, sparsity)
    k = tf.floor(edge - 0.5) + 1.0
    return tf.cast(tf.clip_by_value(k, 0.0, tf.maximum(size - 1.0, 0.0)), tf.int32)


def _first_reaching(hist, k):
    """Index of the first bin whose cumulative count reaches k, and the count before it."""
    cum = tf.cumsum(hist)
    idx = tf.argmax(tf.cast(cum >= k, tf.int32), output_type=tf.int32)
    return idx, cum[idx] - hist[idx]


def kth_smallest_bits(bits, k):
    """The k-th smallest (1-based) of non-negative int32 float bit patterns.

    Args:
        bits: 1-D int32 tensor, bit patterns of non-negative float32 values.
        k: Scalar int32 tensor in [1, len(bits)].

    Returns:
        Scalar int32 tensor: the bit pattern of the k-th smallest value.
    """
    hi = tf.bitwise.right_shift(bits, 16)
    hist = tf.math.bincount(hi, minlength=_HI_BINS, maxlength=_HI_BINS, dtype=tf.int32)
    top, before = _first_reaching(hist, k)
    lo = tf.where(tf.equal(hi, top), tf.bitwise.bitwise_and(bits, 0xFFFF), _LO_BINS)
    lo_hist = tf.math.bincount(lo, minlength=_LO_BINS, maxlength=_LO_BINS, dtype=tf.int32)
    low, _ = _first_reaching(lo_hist, k - before)
    return tf.bitwise.bitwise_or(tf.bitwise.left_shift(top, 16), low)


def _smallest_k_flat(scores, k):
    """Bool mask over 1-D `scores` (>= 0) marking exactly k smallest; ties by index."""
    bits = tf.bitcast(tf.cast(scores, tf.float32), tf.int32)
    threshold = kth_smallest_bits(bits, tf.maximum(k, 1))
    at_most = bits <= threshold
    surplus = tf.reduce_sum(tf.cast(at_most, tf.int32)) - k

    def drop_surplus_ties():
        # Only when several weights share the threshold: keep the last `surplus` of them.
        tied = tf.equal(bits, threshold)
        tie_rank_from_end = tf.cumsum(tf.cast(tied, tf.int32), reverse=True)
        return tf.logical_and(
            at_most, tf.logical_not(tf.logical_and(tied, tie_rank_from_end <= surplus))
        )

    chosen = tf.cond(surplus > 0, drop_surplus_ties, lambda: at_most)
    return tf.logical_and(chosen, k > 0)


def magnitude_mask(weights, sparsity):
    """Unstructured mask pruning exactly `num_to_prune(size, sparsity)` weights.

    The smallest magnitudes are pruned; among equal magnitudes the first in
    row-major order go first, so ties never leave the sparsity below target.

    Args:
        weights: Weight tensor of any shape.
        sparsity: Target fraction of zeros in [0, 1).

    Returns:
        Mask tensor (1 keep, 0 prune) with the shape and dtype of `weights`.

    Example:
        >>> m = magnitude_mask(tf.constant([0.3, -0.1, 0.2, 0.4]), 0.5)
        >>> m.numpy().tolist()
        [1.0, 0.0, 0.0, 1.0]
    """
    weights = tf.convert_to_tensor(weights)
    flat = tf.abs(tf.reshape(weights, [-1]))
    k = num_to_prune(tf.size(flat), sparsity)
    pruned = _smallest_k_flat(flat, k)
    return tf.reshape(tf.cast(tf.logical_not(pruned), weights.dtype), tf.shape(weights))


def _as_matrix(weights):
    shape = tf.shape(weights)
    if weights.shape.rank == 1:
        return tf.reshape(weights, [1, -1])
    return tf.reshape(weights, [-1, shape[-1]])


def block_mask(weights, sparsity, block_size, pooling="AVG"):
    """Mask pruning whole `block_size` blocks with the smallest pooled magnitude.

    The weight is viewed as a matrix (all leading axes by the last one) and
    padded to whole blocks; a padded block pools only its real entries. An
    exact `num_blocks_to_prune(num_blocks, sparsity)` blocks are pruned: the
    count nearest the target, never all of them, so a block as large as the
    weight leaves it whole.

    Args:
        weights: Weight tensor of any shape.
        sparsity: Target fraction of pruned blocks in [0, 1).
        block_size: `(rows, cols)` of a block, positive ints.
        pooling: "AVG" or "MAX" pooling of |w| over a block.

    Returns:
        Mask tensor with the shape and dtype of `weights`.

    Raises:
        ValueError: a bad `block_size` or `pooling`.

    Example:
        >>> w = tf.constant([[0.1, 0.2], [0.9, 0.8], [0.3, 0.1], [0.7, 0.6]])
        >>> block_mask(w, 0.5, (1, 2)).numpy()[:, 0].tolist()
        [0.0, 1.0, 0.0, 1.0]
    """
    block_size = check_block_size(block_size)
    check_pooling(pooling)
    weights = tf.convert_to_tensor(weights)
    matrix = tf.abs(tf.cast(_as_matrix(weights), tf.float32))
    rows, cols = block_size
    n_r = -(-tf.shape(matrix)[0] // rows)
    n_c = -(-tf.shape(matrix)[1] // cols)
    pad = [[0, n_r * rows - tf.shape(matrix)[0]], [0, n_c * cols - tf.shape(matrix)[1]]]
    blocks = tf.reshape(tf.pad(matrix, pad), [n_r, rows, n_c, cols])
    if pooling == "MAX":
        scores = tf.reduce_max(blocks, axis=[1, 3])
    else:
        counts = tf.reshape(tf.pad(tf.ones_like(matrix), pad), [n_r, rows, n_c, cols])
        scores = tf.reduce_sum(blocks, axis=[1, 3]) / tf.reduce_sum(counts, axis=[1, 3])
    flat = tf.reshape(scores, [-1])
    keep = tf.logical_not(_smallest_k_flat(flat, num_blocks_to_prune(tf.size(flat), sparsity)))
    keep = tf.reshape(tf.cast(keep, weights.dtype), [n_r, 1, n_c, 1])
    full = tf.reshape(tf.tile(keep, [1, rows, 1, cols]), [n_r * rows, n_c * cols])
    full = full[: tf.shape(matrix)[0], : tf.shape(matrix)[1]]
    return tf.reshape(full, tf.shape(weights))


def m_by_n_mask(weights, m, n):
    """Mask keeping the `m` largest of every `n` consecutive input-channel weights.

    Groups run along axis -2 (the input axis of Dense and Conv kernels, the
    reduction axis of the matmul, as sparse tensor cores expect); axis 0 for a
    1-D weight. Exactly `m` weights survive in every group, ties broken by
    position.

    Args:
        weights: Weight tensor whose grouping axis is divisible by `n`.
        m: Weights kept per group, 0 < m < n.
        n: Group length.

    Returns:
        Mask tensor with the shape and dtype of `weights`.

    Example:
        >>> m_by_n_mask(tf.constant([[0.1], [0.5], [-0.7], [0.2]]), 2, 4).numpy().ravel().tolist()
        [0.0, 1.0, 1.0, 0.0]

    Reference:
        Mishra et al. 2021, "Accelerating sparse deep neural networks",
        arXiv:2104.08378.
    """
    weights = tf.convert_to_tensor(weights)
    rank = weights.shape.rank
    axis = rank - 2 if rank >= 2 else 0
    perm = [i for i in range(rank) if i != axis] + [axis]
    moved = tf.transpose(tf.abs(weights), perm)
    groups = tf.reshape(moved, [-1, n])
    idx = tf.range(n)
    larger = groups[:, None, :] > groups[:, :, None]
    tie_before = tf.logical_and(
        tf.equal(groups[:, None, :], groups[:, :, None]), idx[None, :] < idx[:, None]
    )
    rank_in_group = tf.reduce_sum(tf.cast(tf.logical_or(larger, tie_before), tf.int32), axis=-1)
    keep = tf.cast(rank_in_group < m, weights.dtype)
    keep = tf.reshape(keep, tf.shape(moved))
    inverse = [perm.index(i) for i in range(rank)]
    return tf.transpose(keep, inverse)

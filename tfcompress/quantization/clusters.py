"""Cluster-preserving QAT: a clustered kernel trained as `centroids[indices]`.

A kernel made by `tfc.clustering.strip_clustering` holds few distinct values.
With `preserve_clusters` QAT keeps each weight bound to its value (integer
indices fixed at quantize time) and trains the values themselves (the
centroids; each receives the sum of its members' gradients), so the kernel
keeps at most as many distinct values per tensor/output channel as it had, and
so does its int8 TFLite form.

A kernel counts as clustered when, per tensor or else per output channel, each
group has at most `MAX_CLUSTERS` distinct values and the distinct non-zero
values are at most half the non-zero weights (an unclustered kernel has about
one distinct value per weight). Zeros are not counted: they are the pruned
weights, kept at zero by `preserve_sparsity`.

Reference:
    tfmot's cluster-preserving QAT (CQAT/PCQAT), `Default8BitClusterPreserveQuantizeScheme`.
"""

import numpy as np

MAX_CLUSTERS = 256


def _groups(kernel, depthwise, per_channel):
    """A (n, groups) view of `kernel`: one column, or one per output channel."""
    if not per_channel:
        return kernel.reshape(-1, 1)
    channels = kernel.shape[-1] * (kernel.shape[-2] if depthwise else 1)
    return kernel.reshape(-1, channels)


def _distinct_nonzero(view):
    counts = []
    for g in range(view.shape[1]):
        column = view[:, g]
        nonzero = column[column != 0]
        counts.append((len(np.unique(nonzero)), nonzero.size))
    return counts


def _is_clustered(counts, check):
    distinct = sum(c for c, _ in counts)
    nonzero = sum(n for _, n in counts)
    if max(c for c, _ in counts) > MAX_CLUSTERS:
        return False
    return not check or distinct <= 1 or 2 * distinct <= nonzero


def cluster_layout(kernel, depthwise, layer_name, attr="kernel", check=True):
    """Centroids and indices that rebuild `kernel` exactly.

    Args:
        kernel: the clustered kernel (array-like).
        depthwise: the kernel is ``(..., in_channels, depth_multiplier)``, whose
            output channels are the last two axes together.
        layer_name: the layer's name, for the error message.
        attr: the kernel's attribute name, for the error message.
        check: apply the "is it clustered" rule of the module doc. `False`
            for a kernel already checked before BatchNorm folding scaled
            each output channel (a clustered channel of few weights, e.g.
            3x3 depthwise, then looks unclustered): only the
            `MAX_CLUSTERS` bound is kept.

    Returns:
        `(centroids, indices)`: float32 ``(groups, k)`` centroids (one row, or
        one per output channel; unused slots are 0) and int32 indices of the
        kernel's shape into the flattened centroids, with
        ``centroids.ravel()[indices] == kernel``.

    Raises:
        ValueError: if the kernel is not clustered (see the module doc).

    Example:
        >>> centroids, indices = cluster_layout([[0.5, -1.0], [0.5, 0.5]], False, "dense")
        >>> centroids.tolist(), indices.tolist()
        ([[-1.0, 0.5]], [[1, 0], [1, 1]])
    """
    kernel = np.asarray(kernel, dtype=np.float32)
    for per_channel in (False, True):
        view = _groups(kernel, depthwise, per_channel)
        counts = _distinct_nonzero(view)
        if _is_clustered(counts, check):
            break
    else:
        distinct, nonzero = len(np.unique(kernel[kernel != 0])), int(np.sum(kernel != 0))
        raise ValueError(
            f"Layer '{layer_name}' is selected for cluster-preserving QAT but its `{attr}` is "
            f"not clustered: {distinct} distinct non-zero values among {nonzero} non-zero "
            f"weights (at most {MAX_CLUSTERS} per tensor or output channel, and at most half "
            "the non-zero weights, are needed). Cluster it with tfc.clustering.cluster_weights "
            "and strip_clustering first, or leave it out with layer_configs="
            f"{{'{layer_name}': QuantizeConfig(preserve_clusters=False)}}. "
            "Received: preserve_clusters=True"
        )
    columns = [np.unique(view[:, g], return_inverse=True) for g in range(view.shape[1])]
    k = max(len(values) for values, _ in columns)
    centroids = np.zeros((len(columns), k), np.float32)
    indices = np.empty(view.shape, np.int32)
    for g, (values, inverse) in enumerate(columns):
        centroids[g, : len(values)] = values
        indices[:, g] = inverse.ravel() + g * k
    return centroids, indices.reshape(kernel.shape)

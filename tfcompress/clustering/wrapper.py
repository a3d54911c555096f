"""`ClusterWeights`: the layer wrapper that trains shared kernel values.

Each clustered kernel is replaced in the forward pass by
`gather(centroids, assignments)`, where every weight is assigned to its
nearest centroid. The centroids are trainable (each receives the sum of the
gradients of the weights in its cluster) and the assignment is crossed with a
straight-through estimator, so the underlying float weights keep training and
can move to another cluster.

Which kernels are clustered comes from `tfc.layers_registry`: those of the
wrapped layer itself and of every layer inside it (a `MultiHeadAttention`
clusters the kernels of its query/key/value/output projections), each with its
output-channel axis for `cluster_per_channel`. The layer's own `call` runs with
the shared values put in place of its variables.

Reference:
    Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks with
    Pruning, Trained Quantization and Huffman Coding", ICLR 2016.
"""

import keras
import numpy as np
from keras import ops

from tfcompress import layers_registry
from tfcompress._serialization import register
from tfcompress.clustering.kmeans import INITS, CentroidInitialization, init_centroids, kmeans_1d
from tfcompress.surgery import all_layers, call_with_values, symbolic_build


def clustered_kernels(layer):
    """`[(label, Kernel, variable)]` a `ClusterWeights(layer)` clusters, in a fixed order.

    The layer's own kernels are labelled by name (`"kernel"`), those of a layer
    inside it by the path of sublayer names to it (`"query/kernel"`,
    `"forward_lstm/lstm_cell/kernel"`: the two cells of a `Bidirectional` share
    a name).
    """
    return layers_registry.labelled_kernels(layer, "cluster")


def is_clusterable(layer):
    """True when `layer` (or a layer inside it) has kernels clustering knows."""
    return bool(clustered_kernels(layer))


def _to_view(kernel, weight, per_channel):
    """A (n, channels) view of a weight; channels is 1 when clustering per layer."""
    if not per_channel:
        return ops.reshape(weight, (-1, 1))
    moved = ops.moveaxis(weight, kernel.out_axis, -1)
    shape = tuple(moved.shape)
    channels = shape[-1] * shape[-2] if kernel.depthwise else shape[-1]
    return ops.reshape(moved, (-1, channels))


def _from_view(kernel, view, shape, per_channel):
    if not per_channel:
        return ops.reshape(view, shape)
    moved_shape = list(shape)
    moved_shape.append(moved_shape.pop(kernel.out_axis))
    return ops.moveaxis(ops.reshape(view, tuple(moved_shape)), -1, kernel.out_axis)


def check_options(number_of_clusters, cluster_centroids_init):
    """Raises for a bad number of clusters or initialisation, naming the value."""
    if (
        isinstance(number_of_clusters, bool)
        or not isinstance(number_of_clusters, (int, np.integer))
        or number_of_clusters < 2
    ):
        raise ValueError(
            "`number_of_clusters` must be an integer >= 2. "
            f"Received: number_of_clusters={number_of_clusters}"
        )
    if cluster_centroids_init not in INITS:
        raise ValueError(
            f"`cluster_centroids_init` must be one of {INITS}. "
            f"Received: cluster_centroids_init={cluster_centroids_init!r}"
        )


def check_size(layer, number_of_clusters, per_channel):
    """Raises when a kernel of `layer` has fewer values per cluster set than clusters."""
    for label, kernel, weight in clustered_kernels(layer):
        per_set = _to_view(kernel, weight, per_channel).shape[0]
        if number_of_clusters > per_set:
            raise ValueError(
                f"Layer '{layer.name}' has only {per_set} values per cluster set in "
                f"`{label}`. Received: number_of_clusters={number_of_clusters}"
            )


def check_finite(layer, name, value):
    """Raises when a kernel of `layer` holds NaN or inf (k-means cannot place them)."""
    for label, _, weight in clustered_kernels(layer):
        bad = int(np.size(weight) - np.isfinite(ops.convert_to_numpy(weight)).sum())
        if bad:
            raise ValueError(
                f"Layer '{layer.name}' has {bad} NaN or inf values in `{label}`; clustering "
                f"needs finite weights. Received: {name}={value}"
            )


def _check_layer_type(layer):
    if not is_clusterable(layer):
        raise ValueError(
            f"Layer '{layer.name}' of type {type(layer).__name__} cannot be clustered: "
            "tfcompress knows no kernel in it (register it with tfc.register_layer(cls, "
            f"kernels=[...])). Received: layer={layer}"
        )


@register
class ClusterWeights(keras.layers.Wrapper):
    """Wraps a layer so that its kernels share `number_of_clusters` values.

    In the forward pass each clustered weight `w` becomes
    `c[a(w)] + w - stop_gradient(w)` with `a(w) = argmin_j |w - c_j|`: the
    value is the nearest centroid, the centroids `c` receive the summed
    gradients of their members and `w` receives the straight-through
    gradient. With `preserve_sparsity`, centroid 0 is pinned at zero, weights
    that were zero when clustering started stay on it, and the others choose
    among the remaining centroids.

    Args:
        layer: the layer to cluster: any layer with kernels known to
            `tfc.layers_registry` (Dense, EinsumDense, Conv*, Conv*Transpose,
            DepthwiseConv*, SeparableConv*, Embedding, registered custom
            layers), or a layer holding such layers (MultiHeadAttention, a
            custom block).
        number_of_clusters: number of shared values per kernel (per channel
            with `cluster_per_channel`), >= 2.
        cluster_centroids_init: `"linear"`, `"kmeans++"` or `"density"`.
        preserve_sparsity: keep the zeros of a pruned layer.
        cluster_per_channel: one set of centroids per output channel.
        seed: seed of the k-means++ initialisation.
        **kwargs: base layer arguments.

    Raises:
        ValueError: for a layer without known kernels, `number_of_clusters < 2`,
            an unknown initialisation, or (at build) more clusters than
            weights per channel.

    Example:
        >>> w = ClusterWeights(keras.layers.Dense(4), number_of_clusters=3)
        >>> w.build((None, 8))
        >>> len(np.unique(w.get_clustered_weights()["kernel"]))
        3

    Reference:
        Han, Mao & Dally 2016, Deep Compression (ICLR).
    """

    def __init__(
        self,
        layer,
        number_of_clusters,
        cluster_centroids_init=CentroidInitialization.KMEANS_PLUS_PLUS,
        preserve_sparsity=False,
        cluster_per_channel=False,
        seed=None,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"`layer` must be a Keras layer. Received: layer={layer}")
        # A layer without weights yet (unbuilt, or a container whose sublayers build when
        # called) is checked when built; one nothing is known of, now.
        unknown = layers_registry.lookup(layer) is None and not all_layers(layer)
        if layer.weights or unknown:
            _check_layer_type(layer)
        check_options(number_of_clusters, cluster_centroids_init)
        kwargs.setdefault("name", f"cluster_{layer.name}")
        super().__init__(layer, **kwargs)
        self.number_of_clusters = int(number_of_clusters)
        self.cluster_centroids_init = cluster_centroids_init
        self.preserve_sparsity = bool(preserve_sparsity)
        self.cluster_per_channel = bool(cluster_per_channel)
        self.seed = seed

    @property
    def clustered_names(self):
        """Labels of the clustered kernels (`"kernel"`, `"query/kernel"`, ...)."""
        return [label for label, _, _ in clustered_kernels(self.layer)]

    def build(self, input_shape=None):
        if not is_clusterable(self.layer) and input_shape is not None:
            # A custom layer re-created from its config builds its sublayers when called.
            symbolic_build(self.layer, input_shape)
        super().build(input_shape)
        _check_layer_type(self.layer)
        check_finite(self.layer, "layer", self.layer.name)
        self._kernels = clustered_kernels(self.layer)
        self._centroids, self._masks = [], []
        for label, kernel, weight in self._kernels:
            view = _to_view(kernel, weight, self.cluster_per_channel)
            per_channel_size, channels = view.shape
            if self.number_of_clusters > per_channel_size:
                raise ValueError(
                    f"Layer '{self.layer.name}' has {per_channel_size} values per cluster "
                    f"set in `{label}`, fewer than the clusters. "
                    f"Received: number_of_clusters={self.number_of_clusters}"
                )
            name = label.replace("/", "_")
            self._centroids.append(
                self.add_weight(
                    shape=(channels, self.number_of_clusters),
                    initializer="zeros",
                    name=f"cluster_centroids_{name}",
                )
            )
            if self.preserve_sparsity:
                self._masks.append(
                    self.add_weight(
                        shape=weight.shape,
                        initializer="ones",
                        trainable=False,
                        name=f"sparsity_mask_{name}",
                    )
                )
        self.initialize_centroids()

    def initialize_centroids(self):
        """Sets centroids (and sparsity masks) by k-means on the current weights."""
        rng = np.random.default_rng(self.seed)
        k = self.number_of_clusters
        for i, (_, kernel, weight) in enumerate(self._kernels):
            view = ops.convert_to_numpy(_to_view(kernel, weight, self.cluster_per_channel))
            centroids = np.zeros((view.shape[1], k))
            for ch in range(view.shape[1]):
                values = view[:, ch]
                if self.preserve_sparsity:
                    values = values[values != 0]
                    centroids[ch, 1:] = self._fit(values, k - 1, rng)
                else:
                    centroids[ch] = self._fit(values, k, rng)
            self._centroids[i].assign(centroids.astype(self._centroids[i].dtype))
            if self.preserve_sparsity:
                mask = ops.convert_to_numpy(weight) != 0
                self._masks[i].assign(mask.astype(self._masks[i].dtype))

    def _fit(self, values, k, rng):
        if values.size == 0:
            return np.zeros(k)
        return kmeans_1d(values, init_centroids(values, k, self.cluster_centroids_init, rng))

    def _clustered(self, i, straight_through=True):
        _, kernel, weight = self._kernels[i]
        centroids = self._centroids[i]
        k = self.number_of_clusters
        if self.preserve_sparsity:
            pin = ops.convert_to_tensor([0.0] + [1.0] * (k - 1), dtype=centroids.dtype)
            centroids = centroids * pin
        view = _to_view(kernel, weight, self.cluster_per_channel)
        distance = ops.abs(ops.expand_dims(ops.stop_gradient(view), -1) - centroids)
        if self.preserve_sparsity:
            mask = _to_view(kernel, self._masks[i], self.cluster_per_channel)
            assignment = ops.argmin(distance[..., 1:], axis=-1) + 1
            assignment = ops.where(mask > 0, assignment, ops.zeros_like(assignment))
        else:
            assignment = ops.argmin(distance, axis=-1)
        channels = ops.shape(centroids)[0]
        offsets = ops.expand_dims(ops.arange(channels, dtype=assignment.dtype) * k, 0)
        shared = ops.take(ops.reshape(centroids, (-1,)), assignment + offsets)
        if self.preserve_sparsity:
            shared = shared * mask
        shared = _from_view(kernel, shared, tuple(weight.shape), self.cluster_per_channel)
        if straight_through:
            shared = shared + weight - ops.stop_gradient(weight)
        return shared

    def get_clustered_weights(self):
        """The shared values each clustered kernel takes: {label: NumPy array}."""
        return {
            label: ops.convert_to_numpy(self._clustered(i, straight_through=False))
            for i, (label, _, _) in enumerate(self._kernels)
        }

    def clustered_values(self):
        """`{id(variable): shared values}` of the clustered kernels (for stripping)."""
        return {
            id(weight): ops.convert_to_numpy(self._clustered(i, straight_through=False))
            for i, (_, _, weight) in enumerate(self._kernels)
        }

    def call(self, inputs, *args, training=None, **kwargs):
        mapping = [(weight, self._clustered(i)) for i, (_, _, weight) in enumerate(self._kernels)]
        return call_with_values(self.layer, mapping, inputs, *args, training=training, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self):
        config = {
            "number_of_clusters": self.number_of_clusters,
            "cluster_centroids_init": self.cluster_centroids_init,
            "preserve_sparsity": self.preserve_sparsity,
            "cluster_per_channel": self.cluster_per_channel,
            "seed": self.seed,
        }
        base_config = super().get_config()
        return {**base_config, **config}

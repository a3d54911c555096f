"""Weight clustering: k-means weight sharing trained through `fit`.

Each clustered weight is replaced in the forward pass by
`gather(centroids, assignments)`, where every weight is assigned to its
nearest centroid. The centroids are trainable (each receives the sum of the
gradients of the weights in its cluster) and the assignment is crossed with a
straight-through estimator, so the underlying float weights keep training and
can move to another cluster. `strip_clustering` then writes the shared values
back into plain Keras layers: every clustered kernel holds at most
`number_of_clusters` distinct values (per layer, or per output channel), which
is what makes the file compress and what int8 export preserves.

Reference:
    Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks with
    Pruning, Trained Quantization and Huffman Coding", ICLR 2016.
"""

import keras
import numpy as np
from keras import ops

from tfcompress._serialization import register


class CentroidInitialization:
    """Names of the centroid initialisations (same names as tfmot's enum).

    - `LINEAR`: evenly spaced between the smallest and largest weight; keeps
      the rare large weights, which Han et al. found best for accuracy.
    - `KMEANS_PLUS_PLUS`: k-means++ seeding (Arthur & Vassilvitskii 2007).
    - `DENSITY_BASED`: evenly spaced quantiles of the weights, so that dense
      regions of the distribution get more centroids.

    Every initialisation is followed by Lloyd iterations to convergence.
    """

    LINEAR = "linear"
    KMEANS_PLUS_PLUS = "kmeans++"
    DENSITY_BASED = "density"


_INITS = (
    CentroidInitialization.LINEAR,
    CentroidInitialization.KMEANS_PLUS_PLUS,
    CentroidInitialization.DENSITY_BASED,
)

# Layer type -> names of its weights that are clustered; the channel axis is
# the output-channel axis, the one TFLite quantizes per channel.
_KERNEL = ("kernel",)
_CLUSTERABLE = {
    keras.layers.Dense: _KERNEL,
    keras.layers.EinsumDense: _KERNEL,
    keras.layers.Conv1D: _KERNEL,
    keras.layers.Conv2D: _KERNEL,
    keras.layers.Conv3D: _KERNEL,
    keras.layers.Conv1DTranspose: _KERNEL,
    keras.layers.Conv2DTranspose: _KERNEL,
    keras.layers.DepthwiseConv1D: _KERNEL,
    keras.layers.DepthwiseConv2D: _KERNEL,
    keras.layers.SeparableConv1D: ("depthwise_kernel", "pointwise_kernel"),
    keras.layers.SeparableConv2D: ("depthwise_kernel", "pointwise_kernel"),
    keras.layers.Embedding: ("embeddings",),
}
# Layers whose weights stay in float (few parameters, numerically sensitive).
_LEFT_UNCLUSTERED = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Normalization,
)


def _clusterable_names(layer):
    for layer_type, names in _CLUSTERABLE.items():
        if type(layer) is layer_type:
            return names
    return None


def _channel_axis_moved(layer, weight):
    """Moves the output-channel axis of `weight` last (it is -2 in transposed convs)."""
    if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose)):
        weight = ops.moveaxis(weight, -2, -1)
    return weight


def _to_view(layer, weight, per_channel):
    """A (n, channels) view of a weight; channels is 1 when clustering per layer."""
    if not per_channel:
        return ops.reshape(weight, (-1, 1))
    moved = _channel_axis_moved(layer, weight)
    shape = tuple(moved.shape)
    is_depthwise = isinstance(layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D))
    channels = shape[-1] * shape[-2] if is_depthwise else shape[-1]
    return ops.reshape(moved, (-1, channels))


def _from_view(layer, view, shape, per_channel):
    if not per_channel:
        return ops.reshape(view, shape)
    if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose)):
        moved_shape = shape[:-2] + (shape[-1], shape[-2])
        return ops.moveaxis(ops.reshape(view, moved_shape), -1, -2)
    return ops.reshape(view, shape)


def kmeans_1d(values, centroids, max_iter=300):
    """Lloyd's algorithm on scalars, from given initial centroids.

    Args:
        values: 1-D array of the values to cluster.
        centroids: 1-D array of initial centroids.
        max_iter: largest number of Lloyd iterations.

    Returns:
        The centroids at convergence, sorted (float64). A centroid that loses
        all its members keeps its previous value.

    Example:
        >>> kmeans_1d(np.array([0.0, 0.1, 1.0, 1.2]), np.array([0.0, 1.0]))
        array([0.05, 1.1 ])
    """
    values = np.asarray(values, dtype="float64").ravel()
    centroids = np.sort(np.asarray(centroids, dtype="float64"))
    assignment = None
    for _ in range(max_iter):
        new_assignment = _nearest(values, centroids)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums = np.bincount(assignment, weights=values, minlength=len(centroids))
        counts = np.bincount(assignment, minlength=len(centroids))
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        centroids = np.sort(centroids)
    return centroids


def _nearest(values, sorted_centroids):
    """Index of the nearest of the sorted centroids (ties to the lower one)."""
    midpoints = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2.0
    return np.searchsorted(midpoints, values, side="left")


def init_centroids(values, number_of_clusters, method, rng):
    """Initial centroids of one set of weights.

    Args:
        values: 1-D array of weights.
        number_of_clusters: number of centroids.
        method: one of `CentroidInitialization`'s names.
        rng: a `numpy.random.Generator` (used by k-means++ only).

    Returns:
        A 1-D float64 array of `number_of_clusters` centroids.
    """
    values = np.asarray(values, dtype="float64").ravel()
    k = number_of_clusters
    if method == CentroidInitialization.LINEAR:
        return np.linspace(values.min(), values.max(), k)
    if method == CentroidInitialization.DENSITY_BASED:
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    centroids = [values[rng.integers(len(values))]]
    dist2 = (values - centroids[0]) ** 2
    for _ in range(1, k):
        total = dist2.sum()
        pick = rng.integers(len(values)) if total == 0 else rng.choice(len(values), p=dist2 / total)
        centroids.append(values[pick])
        dist2 = np.minimum(dist2, (values - values[pick]) ** 2)
    return np.asarray(centroids)


def _check_options(number_of_clusters, cluster_centroids_init):
    if (
        isinstance(number_of_clusters, bool)
        or not isinstance(number_of_clusters, (int, np.integer))
        or number_of_clusters < 2
    ):
        raise ValueError(
            "`number_of_clusters` must be an integer >= 2. "
            f"Received: number_of_clusters={number_of_clusters}"
        )
    if cluster_centroids_init not in _INITS:
        raise ValueError(
            f"`cluster_centroids_init` must be one of {_INITS}. "
            f"Received: cluster_centroids_init={cluster_centroids_init!r}"
        )


def _check_layer_type(layer):
    if _clusterable_names(layer) is None:
        supported = ", ".join(t.__name__ for t in _CLUSTERABLE)
        raise ValueError(
            f"Layer '{layer.name}' of type {type(layer).__name__} cannot be clustered; "
            f"supported types: {supported}. Received: layer={layer}"
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
        layer: the layer to cluster (Dense, EinsumDense, Conv*, Conv*Transpose,
            DepthwiseConv*, SeparableConv* or Embedding).
        number_of_clusters: number of shared values per weight (per channel
            with `cluster_per_channel`), >= 2.
        cluster_centroids_init: `"linear"`, `"kmeans++"` or `"density"`.
        preserve_sparsity: keep the zeros of a pruned layer.
        cluster_per_channel: one set of centroids per output channel.
        seed: seed of the k-means++ initialisation.
        **kwargs: base layer arguments.

    Raises:
        ValueError: for an unsupported layer type, `number_of_clusters < 2`,
            an unknown initialisation, or (at build) more clusters than
            weights per channel.

    Example:
        >>> w = ClusterWeights(keras.layers.Dense(4), number_of_clusters=3)
        >>> w.build((None, 8))
        >>> len(np.unique(strip_clustering(w).kernel))
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
        _check_layer_type(layer)
        _check_options(number_of_clusters, cluster_centroids_init)
        kwargs.setdefault("name", f"cluster_{layer.name}")
        super().__init__(layer, **kwargs)
        self.number_of_clusters = int(number_of_clusters)
        self.cluster_centroids_init = cluster_centroids_init
        self.preserve_sparsity = bool(preserve_sparsity)
        self.cluster_per_channel = bool(cluster_per_channel)
        self.seed = seed

    @property
    def clustered_names(self):
        """Names of the wrapped layer's weights that are clustered."""
        return _clusterable_names(self.layer)

    def _weight(self, name):
        return next(w for w in self.layer.weights if w.name == name)

    def build(self, input_shape=None):
        super().build(input_shape)
        self._centroids, self._masks = [], []
        for name in self.clustered_names:
            view = _to_view(self.layer, self._weight(name), self.cluster_per_channel)
            per_channel_size, channels = view.shape
            if self.number_of_clusters > per_channel_size:
                raise ValueError(
                    f"Layer '{self.layer.name}' has {per_channel_size} values per cluster "
                    f"set in `{name}`, fewer than the clusters. "
                    f"Received: number_of_clusters={self.number_of_clusters}"
                )
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
                        shape=self._weight(name).shape,
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
        for i, name in enumerate(self.clustered_names):
            weight = self._weight(name)
            view = ops.convert_to_numpy(_to_view(self.layer, weight, self.cluster_per_channel))
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
        weight = self._weight(self.clustered_names[i])
        centroids = self._centroids[i]
        k = self.number_of_clusters
        if self.preserve_sparsity:
            pin = ops.convert_to_tensor([0.0] + [1.0] * (k - 1), dtype=centroids.dtype)
            centroids = centroids * pin
        view = _to_view(self.layer, weight, self.cluster_per_channel)
        distance = ops.abs(ops.expand_dims(ops.stop_gradient(view), -1) - centroids)
        if self.preserve_sparsity:
            mask = _to_view(self.layer, self._masks[i], self.cluster_per_channel)
            assignment = ops.argmin(distance[..., 1:], axis=-1) + 1
            assignment = ops.where(mask > 0, assignment, ops.zeros_like(assignment))
        else:
            assignment = ops.argmin(distance, axis=-1)
        channels = ops.shape(centroids)[0]
        offsets = ops.expand_dims(ops.arange(channels, dtype=assignment.dtype) * k, 0)
        shared = ops.take(ops.reshape(centroids, (-1,)), assignment + offsets)
        if self.preserve_sparsity:
            shared = shared * mask
        shared = _from_view(self.layer, shared, tuple(weight.shape), self.cluster_per_channel)
        if straight_through:
            shared = shared + weight - ops.stop_gradient(weight)
        return shared

    def get_clustered_weights(self):
        """The shared values each clustered weight takes: {name: NumPy array}."""
        return {
            name: ops.convert_to_numpy(self._clustered(i, straight_through=False))
            for i, name in enumerate(self.clustered_names)
        }

    def call(self, inputs, training=None):
        mapping = [
            (self._weight(name), self._clustered(i)) for i, name in enumerate(self.clustered_names)
        ]
        with keras.StatelessScope(state_mapping=mapping, initialize_variables=False):
            return self.layer(inputs, training=training)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

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


def _copy_layer(layer):
    """A new layer with the same config, build and weights (nothing shared)."""
    new = layer.__class__.from_config(layer.get_config())
    if layer.built and layer.weights:
        # Layers without weights (ReLU, Reshape, ...) record no build shape; the
        # copy builds itself on its first call.
        build_config = layer.get_build_config()
        if build_config is None:
            raise ValueError(
                f"Layer '{layer.name}' was built without a recorded input shape and "
                f"cannot be copied. Received: layer={layer}"
            )
        new.build_from_config(build_config)
        new.set_weights(layer.get_weights())
    return new


def _is_graph_model(model):
    from keras.src.models.functional import Functional

    return isinstance(model, (keras.Sequential, Functional))


def _copy_subclassed(model):
    """A fresh instance of a subclassed model (from its config) holding its weights.

    A `ClusterWeights` in `model` is matched with the plain layer the config
    recreates and hands over its clustered values: this is also how a
    subclassed model is stripped.
    """
    if not model.built or model.get_build_config() is None:
        raise ValueError(
            f"Subclassed model '{model.name}' must be built (called on data) first. "
            f"Received: model={model}"
        )
    try:
        new = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
        new.build_from_config(model.get_build_config())
    except (NotImplementedError, TypeError, ValueError) as error:
        raise ValueError(
            f"Subclassed model '{model.name}' ({type(model).__name__}) cannot be recreated "
            "from its config; register the class and implement get_config() so that it "
            f"can be copied. Received: model={model}"
        ) from error
    source, target = [model, *_all_layers(model)], [new, *_all_layers(new)]
    if len(source) != len(target):
        raise ValueError(
            f"Subclassed model '{model.name}' recreated from its config has a different "
            f"structure. Received: model={model}"
        )
    for src, dst in zip(source, target):
        for variable, value in zip(_own_weights(dst), _layer_values(src), strict=True):
            variable.assign(value)
    return new


def _layer_values(layer):
    if isinstance(layer, ClusterWeights):
        clustered = layer.get_clustered_weights()
        return [clustered.get(w.name, w) for w in layer.layer.weights]
    return _own_weights(layer)


def _replace_tracked(owner, old, new):
    if owner._tracker.is_in_store("layers", old):
        owner._tracker.replace_tracked_value("layers", old, new)


def _slots(owner, prefix=""):
    """(path, holder, key, layer) for each layer `owner` holds in an attribute, list or dict."""
    for attr, value in list(vars(owner).items()):
        # `_self_*` are TensorFlow's trackable bookkeeping (aliases of the attributes)
        if attr in ("_layers", "_tracker") or attr.startswith(("__", "_self_")):
            continue
        if isinstance(value, keras.layers.Layer):
            yield f"{prefix}{attr}", owner, attr, value
        elif isinstance(value, (list, dict)):
            items = list(value.items() if isinstance(value, dict) else enumerate(value))
            for key, item in items:
                if isinstance(item, keras.layers.Layer):
                    yield f"{prefix}{attr}.{key}", value, key, item


def _set_slot(owner, holder, key, old, new):
    _replace_tracked(owner, old, new)
    if holder is owner:
        object.__setattr__(owner, key, new)
    else:
        (dict if isinstance(holder, dict) else list).__setitem__(holder, key, new)


def _layer_paths(model, wants):
    """{attribute path: layer} of the layers `wants` accepts in a subclassed model.

    Looks into lists, dicts and custom layers (path `block/inner`); a layer
    reachable by two attributes is listed once.
    """
    paths, seen = {}, set()

    def walk(owner, prefix):
        for path, _, _, layer in _slots(owner, prefix):
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            if wants(layer):
                paths[path] = layer
            elif layer._layers and not isinstance(layer, ClusterWeights):
                walk(layer, path + "/")

    walk(model, "")
    return paths


def _resolve(model, path):
    """(owner, holder, key, layer) of an attribute path made by `_layer_paths`."""
    owner = model
    *parents, last = path.split("/")
    for part in parents:
        owner = _resolve(owner, part)[3]
    attr, _, key = last.partition(".")
    if not key:
        return owner, owner, attr, getattr(owner, attr)
    holder = getattr(owner, attr)
    key = int(key) if isinstance(holder, list) else key
    return owner, holder, key, holder[key]


class SwappedModel(keras.Model):
    """Base of models that run a subclassed model whose layer attributes were swapped.

    The user's `call` runs unchanged on `model`. A subclass swaps the layers
    at its attribute paths in `__init__` and stores what it needs in its
    config next to the model's own config, so loading a `.keras` file
    re-creates the model and swaps the same attributes again before the
    weights are read.
    """

    def __init__(self, model, **kwargs):
        if not isinstance(model, keras.Model) or not model.built:
            raise ValueError(f"`model` must be a built Keras model. Received: model={model}")
        super().__init__(**kwargs)

    def _swap_paths(self, model, replacement):
        """Replaces the layer at each path by `replacement(path, layer)`, then adopts `model`."""
        for path in self.paths:
            owner, holder, key, layer = _resolve(model, path)
            _set_slot(owner, holder, key, layer, replacement(path, layer))
        self.model = model
        self.build(model.get_build_config()["input_shape"])

    def build(self, input_shape):
        # Everything was built with the inner model; recording the shape gives
        # export and `.keras` loading the input signature.
        self.built = True

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def get_config(self):
        config = {"model": keras.saving.serialize_keras_object(self.model)}
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)


@register
class ClusteredModel(SwappedModel):
    """A subclassed model whose clusterable layers are `ClusterWeights` wrappers.

    Made by `cluster_weights` for subclassed models: the user's `call` runs
    unchanged on a copy whose layer attributes now hold wrappers. The config
    stores the copy's own config, the attribute paths and the clustering
    options, so a `.keras` file reloads with the same attributes wrapped.

    Args:
        model: a built subclassed model; its attributes are replaced in place.
        paths: attribute paths of the layers to wrap (`"dense"`, `"blocks.0"`,
            `"heads.out"`, `"encoder/dense"` for a layer inside a custom layer).
        clustering: keyword arguments of `ClusterWeights` (without `layer`).
        **kwargs: base `Model` arguments.

    Raises:
        ValueError: if `model` is not a built Keras model.

    Example:
        >>> clustered = cluster_weights(my_subclassed_model, 16)  # doctest: +SKIP
        >>> isinstance(clustered, ClusteredModel)  # doctest: +SKIP
        True
    """

    def __init__(self, model, paths, clustering, **kwargs):
        super().__init__(model, **kwargs)
        self.paths = list(paths)
        self.clustering = dict(clustering)
        self._swap_paths(model, self._wrap)

    def _wrap(self, path, layer):
        wrapper = ClusterWeights(layer, **self.clustering)
        wrapper.build_from_config(layer.get_build_config())
        return wrapper

    def get_config(self):
        config = {"paths": self.paths, "clustering": self.clustering}
        return {**super().get_config(), **config}


def _cluster_subclassed(model, options):
    copy = _copy_subclassed(model)
    paths = _layer_paths(copy, lambda layer: _clusterable_names(layer) is not None)
    held = {id(layer) for layer in paths.values()}
    _raise_unreachable(model, [
        layer for layer in _all_layers(copy)
        if _clusterable_names(layer) is not None and id(layer) not in held
    ])
    return ClusteredModel(copy, list(paths), options, name=f"clustered_{model.name}")


def _replace(model, wants, make, done):
    def clone(layer):
        if _is_graph_model(layer):
            return _replace(layer, wants, make, done)
        copy = _copy_layer(layer)
        if not wants(layer):
            return copy
        done.add(id(layer))
        return make(copy, layer)

    return keras.models.clone_model(model, clone_function=clone)


def replace_layers(model, wants, make):
    """A copy of a Sequential/Functional model with each layer `wants` accepts replaced.

    The model is rebuilt layer by layer (nested Sequential/Functional models
    too); `wants(layer)` sees the layers of `model` and `make(copy, layer)`
    gets a private copy of the layer (no weights shared with `model`) and
    returns its replacement.

    Raises:
        ValueError: if `model` is not Sequential/Functional, or if a layer that
            `wants` accepts is nested where it cannot be replaced (inside a
            custom layer or a subclassed sub-model), naming it.
    """
    if not _is_graph_model(model):
        raise ValueError(
            f"`model` must be a Sequential or Functional model. Received: model={model}"
        )
    wanted = [layer for layer in _all_layers(model) if wants(layer)]
    reachable = {id(layer) for layer in _graph_layers(model)}
    _raise_unreachable(model, [layer for layer in wanted if id(layer) not in reachable])
    done = set()
    new = _replace(model, wants, make, done)
    _raise_unreachable(model, [layer for layer in wanted if id(layer) not in done])
    return new


def _graph_layers(model):
    """Layers a graph model calls, looking into nested graph models only."""
    for layer in model.layers:
        if _is_graph_model(layer):
            yield from _graph_layers(layer)
        else:
            yield layer


def _raise_unreachable(model, layers):
    missed = [layer.name for layer in layers]
    if missed:
        raise ValueError(
            f"Layers {missed} of model '{model.name}' are nested where they cannot be "
            "replaced (inside a custom layer or a subclassed sub-model of a Functional "
            "model, or not held as an attribute of a subclassed model). "
            f"Received: model={model}"
        )


def _all_layers(model):
    """Every layer of `model` at any depth, not looking inside clustering wrappers."""
    found, stack = [], list(model._layers)
    while stack:
        layer = stack.pop(0)
        found.append(layer)
        if not isinstance(layer, ClusterWeights):
            stack[:0] = layer._layers
    return found


def _own_weights(layer):
    return layer._trainable_variables + layer._non_trainable_variables


def _check_clusterable(model):
    """Raises for a model that holds a layer type that cannot be clustered."""
    from tfcompress.factorization import PCA

    stack = list(model._layers)
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, ClusterWeights):
            raise ValueError(
                f"Model '{model.name}' is already clustered (layer '{layer.name}'). "
                f"Received: to_cluster={model}"
            )
        if _clusterable_names(layer) is not None or isinstance(layer, (PCA,) + _LEFT_UNCLUSTERED):
            continue
        is_custom_container = not _own_weights(layer) and not type(layer).__module__.startswith(
            "keras."
        )
        if isinstance(layer, keras.Model) or is_custom_container:
            stack[:0] = layer._layers
        elif layer.weights:
            _check_layer_type(layer)


def cluster_weights(
    to_cluster,
    number_of_clusters,
    cluster_centroids_init=CentroidInitialization.KMEANS_PLUS_PLUS,
    preserve_sparsity=False,
    cluster_per_channel=False,
    seed=None,
):
    """Clusters the kernels of a model (or of one layer) for training with `fit`.

    Every supported layer is wrapped in `ClusterWeights`; normalization layers,
    `tfc.factorization.PCA` and layers without weights stay as they are.
    Centroids start from k-means (Lloyd to convergence from the chosen
    initialisation) on each kernel, per layer or per output channel.

    Args:
        to_cluster: a built Sequential, Functional or subclassed `keras.Model`
            (copied, never modified), or a single layer.
        number_of_clusters: shared values per kernel (per channel), >= 2.
        cluster_centroids_init: `"linear"`, `"kmeans++"` or `"density"`
            (`CentroidInitialization` names).
        preserve_sparsity: keep zeros (e.g. of a pruned model) at zero;
            centroid 0 is pinned at 0.
        cluster_per_channel: one set of centroids per output channel.
        seed: seed of the k-means++ initialisation.

    Returns:
        A new model whose clusterable layers are `ClusterWeights` wrappers:
        a Functional/Sequential model, a `ClusteredModel` around a copy of a
        subclassed model (both save and reload as `.keras`), or a
        `ClusterWeights` when given a layer.

    Raises:
        ValueError: `number_of_clusters` < 2 or larger than a layer's kernel
            (per channel), an unknown initialisation, a layer type that cannot
            be clustered (named), or a subclassed model that cannot be copied.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> clustered = cluster_weights(model, number_of_clusters=3)
        >>> final = strip_clustering(clustered)
        >>> len(np.unique(final.layers[0].kernel.numpy())) <= 3
        True

    Reference:
        Han, Mao & Dally 2016, Deep Compression (ICLR).
    """
    options = dict(
        number_of_clusters=number_of_clusters,
        cluster_centroids_init=cluster_centroids_init,
        preserve_sparsity=preserve_sparsity,
        cluster_per_channel=cluster_per_channel,
        seed=seed,
    )
    _check_options(number_of_clusters, cluster_centroids_init)
    if not isinstance(to_cluster, keras.Model):
        if not isinstance(to_cluster, keras.layers.Layer):
            raise ValueError(
                f"`to_cluster` must be a keras.Model or a layer. Received: to_cluster={to_cluster}"
            )
        return ClusterWeights(to_cluster, **options)
    if not to_cluster.built:
        raise ValueError(
            "`to_cluster` must be built (give it an Input or call it on data) before "
            f"clustering. Received: to_cluster={to_cluster}"
        )
    _check_clusterable(to_cluster)
    for layer in _all_layers(to_cluster):
        if _clusterable_names(layer) is not None:
            _check_size(layer, number_of_clusters, cluster_per_channel)

    if not _is_graph_model(to_cluster):
        return _cluster_subclassed(to_cluster, options)

    def make(layer, _):
        wrapper = ClusterWeights(layer, **options)
        wrapper.build_from_config(layer.get_build_config())
        return wrapper

    return replace_layers(to_cluster, lambda layer: _clusterable_names(layer) is not None, make)


def _check_size(layer, number_of_clusters, per_channel):
    for name in _clusterable_names(layer):
        weight = next(w for w in layer.weights if w.name == name)
        per_set = _to_view(layer, weight, per_channel).shape[0]
        if number_of_clusters > per_set:
            raise ValueError(
                f"Layer '{layer.name}' has only {per_set} values per cluster set in `{name}`. "
                f"Received: number_of_clusters={number_of_clusters}"
            )


def strip_clustering(model):
    """Removes the clustering wrappers, leaving a plain Keras model.

    Each wrapped layer comes back as its own type with the shared values
    written into its kernels, so every clustered kernel holds at most
    `number_of_clusters` distinct values (per output channel with
    `cluster_per_channel`). Works on Sequential, Functional and subclassed
    models; the clustered model is not modified.

    Args:
        model: a model returned by `cluster_weights` (possibly trained), or a
            single `ClusterWeights` layer.

    Returns:
        A new model (or layer) with no tfcompress layers.

    Raises:
        ValueError: if `model` is neither a keras.Model nor a `ClusterWeights`.

    Example:
        >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> final = strip_clustering(cluster_weights(model, 3))
        >>> type(final.layers[0]).__name__
        'Dense'
    """
    if isinstance(model, ClusterWeights):
        return _unwrap(model)
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model}")
    if isinstance(model, ClusteredModel):
        return _copy_subclassed(model.model)
    if not _is_graph_model(model):
        return _copy_subclassed(model)
    return replace_layers(
        model, lambda layer: isinstance(layer, ClusterWeights), lambda copy, _: _unwrap(copy)
    )


def _unwrap(wrapper):
    inner = _copy_layer(wrapper.layer)
    for name, value in wrapper.get_clustered_weights().items():
        next(w for w in inner.weights if w.name == name).assign(value)
    return inner

"""`cluster_weights` and `strip_clustering`: weight clustering of whole models.

Every layer with kernels known to `tfc.layers_registry` is wrapped in
`ClusterWeights` (in a Sequential/Functional model a layer holding such layers,
e.g. `MultiHeadAttention`, is wrapped whole); `strip_clustering` then writes
the shared values back into plain Keras layers, so every clustered kernel holds
at most `number_of_clusters` distinct values (per layer, or per output
channel), which is what makes the file compress and what int8 export keeps.
"""

import warnings

import keras

from tfcompress import layers_registry, surgery
from tfcompress._serialization import register
from tfcompress.clustering.kmeans import CentroidInitialization
from tfcompress.clustering.wrapper import (
    ClusterWeights,
    check_finite,
    check_options,
    check_size,
    clustered_kernels,
    is_clusterable,
)


@register
class ClusteredModel(surgery.SwappedModel):
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
        self._swap_paths(model, self.paths, self._wrap)

    def _wrap(self, path, layer):
        return _wrapped(layer, self.clustering)

    def get_config(self):
        config = {"paths": self.paths, "clustering": self.clustering}
        return {**super().get_config(), **config}


def _wrapped(layer, options):
    wrapper = ClusterWeights(layer, **options)
    # The layer is built; a container (MultiHeadAttention) records no single input shape.
    wrapper.build((layer.get_build_config() or {}).get("input_shape"))
    return wrapper


def _is_wrapper(layer):
    return isinstance(layer, ClusterWeights)


def _warn_left_alone(layers):
    unknown = [
        layer.name
        for layer in layers
        if layers_registry.lookup(layer) is None
        and not layers_registry.overrides_call(layer)
        and surgery.own_variables(layer)
    ]
    layers_registry.warn_overridden(layers, "Clustering")
    if unknown:
        warnings.warn(
            f"Clustering leaves these layers unclustered: tfcompress knows no kernel in them: "
            f"{unknown}. Register their class with tfc.register_layer(cls, kernels=[...]) to "
            "cluster them, or leave them out with `exclude=` to silence this.",
            stacklevel=3,
        )


def _cluster_subclassed(model, select, options):
    copy, original_of = surgery.copy_with_originals(model)

    def wants(layer):
        original = original_of[id(layer)]
        return select(original) and bool(layers_registry.kernel_variables(original, "cluster"))

    paths = surgery.layer_paths(copy, wants)
    held = {id(original_of[id(layer)]) for layer in paths.values()}
    surgery.raise_unreachable(model, [
        layer for layer in surgery.all_layers(model)
        if select(layer) and layers_registry.kernel_variables(layer, "cluster")
        and id(layer) not in held
    ])
    return ClusteredModel(copy, list(paths), options, name=f"clustered_{model.name}")


def cluster_weights(
    to_cluster,
    number_of_clusters,
    cluster_centroids_init=CentroidInitialization.KMEANS_PLUS_PLUS,
    preserve_sparsity=False,
    cluster_per_channel=False,
    seed=None,
    *,
    layers=None,
    exclude=None,
):
    """Clusters the kernels of a model (or of one layer) for training with `fit`.

    Every layer with kernels known to `tfc.layers_registry` is wrapped in
    `ClusterWeights` (Dense, EinsumDense, Conv*, Embedding, registered custom
    layers; in a Sequential/Functional model also layers holding them, such as
    `MultiHeadAttention`). Normalization layers, `tfc.factorization.PCA` and
    layers without weights stay as they are; a layer with weights tfcompress
    does not know (or a subclass that overrides `call`, see
    `tfc.register_layer`) stays as it is with a warning naming it. Centroids
    start from k-means (Lloyd to convergence from the chosen initialisation)
    on each kernel, per layer or per output channel.

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
        layers: optional names, classes or predicates of the layers to cluster
            (a container selects what it holds); default all.
        exclude: names, classes or predicates of layers to leave unclustered.

    Returns:
        A new model whose clusterable layers are `ClusterWeights` wrappers:
        a Functional/Sequential model, a `ClusteredModel` around a copy of a
        subclassed model (both save and reload as `.keras`), or a
        `ClusterWeights` when given a layer.

    Raises:
        ValueError: `number_of_clusters` < 2 or larger than a layer's kernel
            (per channel), a kernel holding NaN or inf, an unknown
            initialisation, a bad selector, an
            already clustered model, or a subclassed model that cannot be
            copied.

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
    check_options(number_of_clusters, cluster_centroids_init)
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
    everything = surgery.all_layers(to_cluster)
    wrapped = [layer for layer in everything if _is_wrapper(layer)]
    if wrapped or isinstance(to_cluster, ClusteredModel):
        raise ValueError(
            f"Model '{to_cluster.name}' is already clustered. Received: to_cluster={to_cluster}"
        )
    select = surgery.Selection(to_cluster, layers, exclude)
    for layer in everything:
        if select(layer) and layers_registry.kernel_variables(layer, "cluster"):
            check_size(layer, number_of_clusters, cluster_per_channel)
            check_finite(layer, "to_cluster", to_cluster.name)
    graph = surgery.is_graph_model(to_cluster)
    candidates = list(surgery.graph_layers(to_cluster)) if graph else everything
    if not any(select(layer) and is_clusterable(layer) for layer in candidates):
        weighted = [
            f"'{layer.name}' of type {type(layer).__name__}"
            for layer in candidates
            if (layer.weights if graph else surgery.own_variables(layer))
            and not is_clusterable(layer)
        ]
        raise ValueError(
            "`to_cluster` has no layer whose kernels clustering knows (selected by `layers`/"
            f"`exclude`); layers with other weights: {weighted}. Register custom layers with "
            f"tfc.register_layer(cls, kernels=[...]). Received: to_cluster={to_cluster.name}"
        )
    if not graph:
        _warn_left_alone([x for x in everything if select(x)])
        return _cluster_subclassed(to_cluster, select, options)

    top = candidates
    _warn_left_alone([
        x for layer in top if select(layer) and not is_clusterable(layer)
        for x in [layer, *surgery.all_layers(layer)]
    ])

    return surgery.replace_layers(
        to_cluster,
        lambda layer: select(layer) and is_clusterable(layer),
        lambda copy, _: _wrapped(copy, options),
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
    inner = model.model if isinstance(model, ClusteredModel) else model
    if not surgery.is_graph_model(inner):
        return surgery.copy_model(inner, values=_layer_values, stop=_is_wrapper)
    return surgery.replace_layers(inner, _is_wrapper, lambda copy, _: _unwrap(copy))


def _layer_values(layer):
    if isinstance(layer, ClusterWeights):
        clustered = layer.clustered_values()
        return [clustered.get(id(w), w) for w in layer.layer.weights]
    return surgery.own_variables(layer)


def _unwrap(wrapper):
    inner = surgery.copy_layer(wrapper.layer)
    values = wrapper.get_clustered_weights()
    # In the same order; a copied custom layer's sublayers may have other (automatic) names.
    labels = [label for label, _, _ in clustered_kernels(wrapper.layer)]
    for label, (_, _, variable) in zip(labels, clustered_kernels(inner), strict=True):
        variable.assign(values[label])
    return inner

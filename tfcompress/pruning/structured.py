"""Structured pruning: remove whole neurons and filters, giving a smaller dense model.

Zeros alone do not make a TFLite model faster; fewer units do. `prune_units`
ranks the output units of Dense and Conv layers by the norm of their incoming
weights, removes the weakest, and slices the matching inputs of every layer
that reads them (BatchNormalization, pooling, Flatten, the next Dense or Conv).
"""

import numbers

import keras
import numpy as np

_PRODUCERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_CONSUMERS = _PRODUCERS
_PASS_THROUGH = (
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.UpSampling1D,
    keras.layers.UpSampling2D,
    keras.layers.UpSampling3D,
)
_CRITERIA = ("l1", "l2")


def _is_channels_last_conv(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last" and (
        getattr(layer, "groups", 1) == 1
    )


def _can_produce(layer):
    if not isinstance(layer, _PRODUCERS):
        return False
    return isinstance(layer, keras.layers.Dense) or _is_channels_last_conv(layer)


def _history_names(obj):
    """Names of the layers whose outputs appear in an inbound-node config."""
    if isinstance(obj, dict):
        if "keras_history" in obj:
            return [obj["keras_history"][0]]
        return [n for v in obj.values() for n in _history_names(v)]
    if isinstance(obj, (list, tuple)):
        return [n for v in obj for n in _history_names(v)]
    return []


def _output_names(spec):
    if isinstance(spec, (list, tuple)) and len(spec) == 3 and isinstance(spec[0], str):
        return [spec[0]]
    if isinstance(spec, dict):
        return [n for v in spec.values() for n in _output_names(v)]
    if isinstance(spec, (list, tuple)):
        return [n for v in spec for n in _output_names(v)]
    return []


def _graph(model):
    """(consumers by layer name, output layer names, shared or multi-input layer names)."""
    if isinstance(model, keras.Sequential):
        names = [layer.name for layer in model.layers]
        consumers = {a: [b] for a, b in zip(names, names[1:])}
        return consumers, {names[-1]}, set()
    config = model.get_config()
    consumers, awkward = {}, set()
    for entry in config["layers"]:
        nodes = entry.get("inbound_nodes", [])
        parents = [n for node in nodes for n in _history_names(node)]
        if len(nodes) > 1 or len(parents) > 1:
            awkward.add(entry["name"])
        for parent in parents:
            consumers.setdefault(parent, []).append(entry["name"])
    return consumers, set(_output_names(config["output_layers"])), awkward


def _trace(model, name, graph):
    """Layers that read `name`'s channels: [(layer name, role, positions)], or None if blocked.

    Role is "bn" (per-channel vectors), "flatten" or "input" (a Dense/Conv whose
    input axis is sliced); `positions` is the number of flattened spatial
    positions per channel seen by an "input" layer.
    """
    consumers, outputs, awkward = graph
    found, frontier = [], [(name, 1)]
    while frontier:
        current, positions = frontier.pop()
        if current in outputs:
            return None
        for child_name in consumers.get(current, []):
            child = model.get_layer(child_name)
            if child_name in awkward or getattr(child, "data_format", None) == "channels_first":
                # A channels-first Flatten or pooling reorders or reduces the channel axis.
                return None
            if isinstance(child, _CONSUMERS) and (
                isinstance(child, keras.layers.Dense) or _is_channels_last_conv(child)
            ):
                found.append((child_name, "input", positions))
            elif isinstance(child, keras.layers.BatchNormalization):
                if child.axis not in (-1, len(child.input.shape) - 1):
                    return None
                found.append((child_name, "bn", positions))
                frontier.append((child_name, positions))
            elif isinstance(child, keras.layers.Flatten):
                spatial = int(np.prod(child.input.shape[1:-1]))
                frontier.append((child_name, positions * spatial))
            elif isinstance(child, _PASS_THROUGH):
                frontier.append((child_name, positions))
            else:
                return None
    return found


def _check_fraction(name, value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value}")


def _plan(model, fraction, graph):
    """{producer name: (fraction, trace)} after validating `fraction`."""
    prunable = {}
    for layer in model.layers:
        if _can_produce(layer):
            trace = _trace(model, layer.name, graph)
            if trace is not None:
                prunable[layer.name] = trace
    if isinstance(fraction, dict):
        names = {layer.name for layer in model.layers}
        for key, value in fraction.items():
            if key not in names:
                raise ValueError(
                    f"Unknown layer name {key!r} in `fraction`. Layers: {sorted(names)}. "
                    f"Received: fraction={fraction}"
                )
            if key not in prunable:
                raise ValueError(
                    f"Layer {key!r} cannot lose units: it is not a Dense/Conv layer, or its "
                    "output reaches a model output, a merge or an unsupported layer. Prunable: "
                    f"{sorted(prunable)}. Received: fraction={fraction}"
                )
            _check_fraction(f"fraction[{key!r}]", value)
        return {k: (v, prunable[k]) for k, v in fraction.items() if v > 0}
    _check_fraction("fraction", fraction)
    if not prunable:
        raise ValueError(
            "No layer of the model can lose units (Dense/Conv layers not feeding a model output, "
            f"a merge or an unsupported layer). Received: model={model.name}"
        )
    return {k: (fraction, t) for k, t in prunable.items() if fraction > 0}


def _keep_indices(kernel, fraction, criterion):
    """Sorted indices of the output units to keep, by norm of incoming weights."""
    columns = kernel.reshape(-1, kernel.shape[-1])
    scores = np.abs(columns).sum(0) if criterion == "l1" else np.sqrt((columns**2).sum(0))
    units = kernel.shape[-1]
    keep = max(1, units - int(round(fraction * units)))
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:keep])


def _flat_indices(keep, channels, positions):
    """Indices into a channels-last flattened axis of `positions` x `channels`."""
    return (np.arange(positions)[:, None] * channels + keep[None, :]).ravel()


def prune_units(model, fraction=0.5, criterion="l1"):
    """Removes the weakest neurons of Dense and filters of Conv layers.

    Every Dense/Conv layer whose output only flows (through activations,
    dropout, pooling, BatchNormalization, Flatten) into other Dense/Conv layers
    loses `fraction` of its units, those with the smallest L1 or L2 norm of
    incoming weights; the readers' matching inputs are removed too. Layers
    feeding a model output, a merge (Add, Concatenate) or a shared layer are
    left whole. The result is a new, smaller, plain Keras model with the
    surviving weights copied; fine-tune it with `compile` and `fit`.

    Args:
        model: A built Sequential or Functional model.
        fraction: Fraction in [0, 1) of units to remove from every prunable
            layer, or `{layer name: fraction}` for some layers only.
        criterion: "l1" or "l2" norm of a unit's incoming weights.

    Returns:
        A new `keras.Model` of the same kind with fewer units.

    Raises:
        ValueError: a subclassed or unbuilt model, a fraction outside [0, 1),
            an unknown or unprunable layer name in the dict, a bad `criterion`,
            or a model with no prunable layer.

    Example:
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu"),
        ...                       keras.layers.Dense(2)])
        >>> prune_units(m, 0.5).layers[0].units
        3
    """
    if not (isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"):
        raise ValueError(
            "`prune_units` rebuilds the layer graph, so it needs a Sequential or Functional "
            f"model. Received: model={type(model).__name__}"
        )
    if not model.built:
        raise ValueError(f"The model must be built. Received: model={model.name}")
    if criterion not in _CRITERIA:
        raise ValueError(f"`criterion` must be one of {_CRITERIA}. Received: criterion={criterion}")
    graph = _graph(model)
    plan = _plan(model, fraction, graph)
    out_keep, in_keep, bn_keep = {}, {}, {}
    for name, (frac, trace) in plan.items():
        layer = model.get_layer(name)
        keep = _keep_indices(keras.ops.convert_to_numpy(layer.kernel), frac, criterion)
        out_keep[name] = keep
        channels = layer.kernel.shape[-1]
        for reader, role, positions in trace:
            if role == "bn":
                bn_keep[reader] = keep
            else:
                in_keep[reader] = _flat_indices(keep, channels, positions)

    def clone(layer):
        config = layer.get_config()
        if layer.name in out_keep:
            key = "units" if isinstance(layer, keras.layers.Dense) else "filters"
            config[key] = len(out_keep[layer.name])
        return layer.__class__.from_config(config)

    small = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        weights = layer.get_weights()
        if layer.name in in_keep:
            weights[0] = np.take(weights[0], in_keep[layer.name], axis=-2)
        if layer.name in out_keep:
            weights = [np.take(w, out_keep[layer.name], axis=-1) for w in weights]
        if layer.name in bn_keep:
            weights = [np.take(w, bn_keep[layer.name], axis=-1) for w in weights]
        if weights:
            small.get_layer(layer.name).set_weights(weights)
    return small

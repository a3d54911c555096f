"""Fresh layers and models that hold the same weights (nothing shared).

A copy is made from the config, then built, then given the weights. Building
is the delicate part: a custom layer that creates its sublayers' weights only
when called (the keras.io `TokenAndPositionEmbedding`: two `Embedding`s) has no
weights after `build_from_config`, so such a copy is built by a symbolic call,
with the arguments of the original's own call when they are known.
"""

import contextlib
import warnings

import keras

from tfcompress import _compat
from tfcompress.surgery.walk import all_layers


def symbolic_build(layer, shape):
    """Builds `layer` by calling it on a symbolic input of `shape` (float, then int)."""
    errors = []
    for dtype in ("float32", "int32"):
        try:
            layer(keras.KerasTensor(shape, dtype=dtype))
            return
        except Exception as error:  # noqa: BLE001 - any failure: try the next dtype
            errors.append(error)
    raise errors[-1]


@contextlib.contextmanager
def _quiet_build():
    """Silences Keras' warning that a custom layer without a `build` method was marked
    built with its sublayers unbuilt: `symbolic_build` then builds them by a call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have a `build\(\)` method")
        yield


def build_like(new, layer, call=None):
    """Builds `new` so that it has the variables `layer` has."""
    if call is not None:
        args, kwargs = call
        new(*args, **kwargs)
        return
    if new.built and len(new.weights) == len(layer.weights):
        return  # deserialization built it from the saved build config
    build_config = layer.get_build_config()
    if build_config is None:
        raise ValueError(
            f"Layer '{layer.name}' was built without a recorded input shape and "
            f"cannot be copied. Received: layer={layer}"
        )
    try:
        with _quiet_build():
            new.build_from_config(build_config)
        built = len(new.weights) == len(layer.weights)
    except (TypeError, ValueError):  # e.g. a model whose inputs are token ids
        built = False
    if not built:
        shape = build_config.get("input_shape")
        if shape is None:
            raise ValueError(
                f"Layer '{layer.name}' builds its sublayers when called, and its input "
                f"shape is unknown. Received: layer={layer}"
            )
        symbolic_build(new, shape)


def copy_layer(layer, config=None, call=None):
    """A new layer of the same class with `layer`'s config, build and weights.

    Args:
        layer: a Keras layer (built or not; unbuilt layers are only re-created).
        config: the config to create it from (default: `layer.get_config()`).
        call: optional `(args, kwargs)` of a symbolic call that builds the copy
            as the original was built (what a graph rebuild passes).

    Returns:
        The copy, built and holding copies of the weights when `layer` was
        built with weights.

    Raises:
        ValueError: the copy cannot be built (no recorded input shape).
    """
    # A wrapper's config holds its inner layers by class name: find them even when
    # their classes are not registered (keras.io's custom layers seldom are).
    with keras.saving.custom_object_scope(classes_inside(layer)), _quiet_build():
        new = layer.__class__.from_config(layer.get_config() if config is None else config)
    if call is not None or (layer.built and layer.weights):
        # Layers without weights (ReLU, Reshape, ...) record no build shape; the
        # copy builds itself on its first call.
        build_like(new, layer, call)
        if layer.weights:
            new.set_weights(layer.get_weights())
    return new


def classes_inside(layer):
    """`{class name: class}` of `layer` and every layer inside it (for deserializing)."""
    return {type(x).__name__: type(x) for x in [layer, *all_layers(layer)]}


def carry_weights(source, target, values=None, stop=None):
    """Assigns every variable of `source` (a model or layer) to `target`'s, layer by layer.

    `target` must have the same structure (made from `source`'s config).
    `values(layer)` may give the values of a layer's own variables (default:
    the variables themselves); it lets a technique hand over computed values,
    e.g. the clustered kernel of a wrapper that the config re-creates as a
    plain layer. The sublayers of a `source` layer `stop` accepts are not
    visited (such a wrapper gives the values of its inner layer).

    Raises:
        ValueError: the structures differ.
    """
    values = values or _compat.own_variables
    src = [source, *all_layers(source, stop=stop)]
    dst = [target, *all_layers(target)]
    if len(src) != len(dst):
        raise ValueError(
            f"'{target.name}' recreated from its config has a different structure "
            f"({len(dst)} layers) from '{source.name}' ({len(src)}). Received: model={source}"
        )
    for s, d in zip(src, dst):
        variables, new_values = _compat.own_variables(d), list(values(s))
        if len(variables) != len(new_values):
            raise ValueError(
                f"Layer '{d.name}' recreated from its config has {len(variables)} weights, "
                f"'{s.name}' has {len(new_values)}. Received: model={source}"
            )
        for variable, value in zip(variables, new_values):
            variable.assign(value)

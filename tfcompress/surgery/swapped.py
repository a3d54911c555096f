"""The bases of models and layers that run a user's model or custom layer whose
layer attributes were swapped."""

import keras

from tfcompress.surgery.copy import symbolic_build
from tfcompress.surgery.walk import resolve, set_slot


def call_with_values(layer, mapping, inputs, *args, training=None, **kwargs):
    """Calls `layer` with each variable of `mapping` (`[(variable, tensor)]`) read as
    its tensor: how a wrapper runs a layer's own `call` on substituted kernels."""
    with keras.StatelessScope(state_mapping=mapping, initialize_variables=False):
        if training is not None:
            kwargs["training"] = training
        return layer(inputs, *args, **kwargs)


class SwappedModel(keras.Model):
    """Runs a subclassed model whose layers at some attribute paths were replaced.

    The user's `call` runs unchanged on `model`. A subclass decides the
    replacement of each path in `__init__` (calling `_swap_paths`) and stores
    what it needs in its config next to the model's own config, so loading a
    `.keras` file re-creates the model from its config and swaps the same
    attributes again before the weights are read.

    Args:
        model: a built Keras model, modified in place.
        **kwargs: base `Model` arguments.

    Raises:
        ValueError: if `model` is not a built Keras model.
    """

    def __init__(self, model, **kwargs):
        if not isinstance(model, keras.Model) or not model.built:
            raise ValueError(f"`model` must be a built Keras model. Received: model={model}")
        super().__init__(**kwargs)

    def _swap_paths(self, model, paths, replacement):
        """Puts `replacement(path, layer)` at each path, then adopts `model`."""
        for path in paths:
            slot = resolve(model, path)
            set_slot(slot, replacement(path, slot.layer))
        self.model = model
        self.build((model.get_build_config() or {}).get("input_shape"))

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


class SwappedLayer(keras.layers.Layer):
    """Runs a custom layer of a Functional model whose sublayers at some paths were replaced.

    The keras.io `TokenAndPositionEmbedding` or `PatchEncoder` holds its
    `Embedding`/`Dense` weights in sublayers that a Functional rebuild cannot
    reach. This layer holds the custom layer, whose `call` runs unchanged, and
    swaps the sublayers at `paths` for `self.replacement(path, sublayer)` when
    it is built: loading a `.keras` file re-creates the custom layer from its
    own config, builds it, and swaps the same sublayers again before the
    weights are read. Subclasses define `replacement` and keep what it needs
    in their config.

    Args:
        layer: the custom layer (used, not copied; built or not).
        paths: attribute paths inside `layer` (see `tfc.surgery.layer_paths`).
        **kwargs: base `Layer` arguments (the name defaults to the layer's).
    """

    def __init__(self, layer, paths, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(**kwargs)
        self.layer = layer
        self.paths = list(paths)
        # The layer as it is now: swaps (ours when built, a wrapper's around us) change
        # what its own config would serialize.
        self.layer_config = keras.saving.serialize_keras_object(layer)
        if type(layer).build is keras.layers.Layer.build:
            # Without a build method of its own, loading could only mark it built (and
            # Keras warns so): `build` below builds it by a call.
            self.layer_config.pop("build_config", None)

    def replacement(self, path, layer):
        raise NotImplementedError

    def build(self, input_shape):
        # A custom layer re-created from a `.keras` file is marked built by its
        # build config, but its sublayers only build when it is called.
        if not self.layer.built or not all(resolve(self.layer, p).layer.built for p in self.paths):
            symbolic_build(self.layer, input_shape)
        for path in self.paths:
            slot = resolve(self.layer, path)
            set_slot(slot, self.replacement(path, slot.layer))
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **kwargs)

    def get_config(self):
        config = {"layer": self.layer_config, "paths": self.paths}
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(
            config["layer"], custom_objects=custom_objects
        )
        return cls(**config)

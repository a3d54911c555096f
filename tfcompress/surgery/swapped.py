"""The base of models that run a subclassed model whose layer attributes were swapped."""

import keras

from tfcompress.surgery.walk import resolve, set_slot


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

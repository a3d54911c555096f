"""New Sequential/Functional models with layers replaced, weights carried over.

The graph is re-run node by node on fresh inputs (Keras' `clone_model` with a
call function): each layer is called as a private copy holding its weights
(built by the same symbolic call as the original, so custom layers whose
sublayers build on call are complete), or as the replacement a technique
makes from that copy. Keras op nodes (`x + 3.0`, `ops.relu6`, slicing,
`ops.reshape`) hold no state and are re-applied as they are; nested
Sequential/Functional models are rebuilt the same way; a layer called several
times (shared) is copied once. `copy_model` copies any model: a graph model
by this rebuild, a subclassed one from its config.
"""

import keras

from tfcompress import _compat
from tfcompress.surgery.copy import build_like, carry_weights, classes_inside, copy_layer
from tfcompress.surgery.walk import (
    all_layers,
    as_functional,
    graph_layers,
    is_graph_model,
    raise_unreachable,
)


def rebuild_graph(model, call):
    """Re-runs a graph model's nodes through `call`, returning a new Functional model.

    Args:
        model: a built Sequential or Functional model.
        call: `call(operation, args, kwargs)` -> the outputs of that node in
            the new graph; `operation` is the original layer or Keras op and
            `args`/`kwargs` hold the new graph's tensors.

    Returns:
        A Functional model with the original's name.
    """
    functional = as_functional(model)
    return keras.models.clone_model(
        functional,
        clone_function=lambda operation: operation,
        call_function=lambda operation, *args, **kwargs: call(operation, args, kwargs),
    )


class _Rebuilder:
    def __init__(self, wants, make):
        self.wants = wants
        self.make = make
        self.done = set()
        self.new = {}

    def model(self, model):
        if isinstance(model, keras.Sequential):
            return self._sequential(model)
        return rebuild_graph(model, self.call)

    def _sequential(self, model):
        # Rebuilt as a Sequential again, so a user's Sequential stays one.
        spec = model.inputs[0]
        layers = [new for layer in model.layers for new in self.layer(layer, None)]
        return keras.Sequential(
            [keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=spec.name)] + layers,
            name=model.name,
        )

    def layer(self, layer, call):
        """The layers (one, or several applied in turn) that stand for `layer`."""
        if id(layer) in self.new:
            return self.new[id(layer)]
        if is_graph_model(layer):
            new = self.model(layer)
        else:
            new = copy_layer(layer, call=call)
            if self.wants(layer):
                self.done.add(id(layer))
                new = self.make(new, layer)
        self.new[id(layer)] = new if isinstance(new, tuple) else (new,)
        return self.new[id(layer)]

    def call(self, operation, args, kwargs):
        if not isinstance(operation, keras.layers.Layer):
            return operation(*args, **kwargs)  # a Keras op node: stateless
        first, *rest = self.layer(operation, (args, kwargs))
        outputs = first(*args, **kwargs)
        for layer in rest:
            outputs = layer(outputs)
        return outputs


def replace_layers(model, wants, make):
    """A copy of a Sequential/Functional model with each layer `wants` accepts replaced.

    The model is rebuilt layer by layer (nested Sequential/Functional models
    and op nodes too; a Sequential stays a Sequential); `wants(layer)` sees
    the layers of `model` and `make(copy, layer)` gets a private, built copy
    of the layer (no weights shared with `model`) and returns its replacement,
    which is called where the layer was, or a tuple of layers applied in turn
    there (inline: a Sequential gets them as consecutive layers). Every other
    layer is a private copy.

    Raises:
        ValueError: if `model` is not Sequential/Functional, or if a layer that
            `wants` accepts is nested where it cannot be replaced (inside a
            custom layer or a subclassed sub-model), naming it.
    """
    if not is_graph_model(model):
        raise ValueError(
            f"`model` must be a Sequential or Functional model. Received: model={model}"
        )
    # A wanted layer is replaced whole, with whatever it holds.
    wanted = [layer for layer in all_layers(model, stop=wants) if wants(layer)]
    reachable = {id(layer) for layer in graph_layers(model)}
    raise_unreachable(model, [layer for layer in wanted if id(layer) not in reachable])
    rebuilder = _Rebuilder(wants, make)
    new = rebuilder.model(model)
    raise_unreachable(model, [layer for layer in wanted if id(layer) not in rebuilder.done])
    return new


def inline_graphs(model):
    """A Functional model computing `model` with nested Sequential models called inline.

    The layers of each nested Sequential model (ConvNeXt's stem and
    downsampling blocks) become layers of one graph, as private copies holding
    their weights, so a technique that plans across layers (QAT's folding and
    ranges) sees every producer and consumer. A model without nested
    Sequential models, or whose nested layers' names clash with the outer
    ones, comes back unchanged.
    """
    if not any(isinstance(layer, keras.Sequential) for layer in model.layers):
        return model
    copies = {}

    def call(operation, args, kwargs):
        if not isinstance(operation, keras.layers.Layer):
            return operation(*args, **kwargs)
        if isinstance(operation, keras.Sequential) and len(args) == 1:
            x = args[0]
            for layer in operation.layers:
                x = call(layer, (x,), {})
            return x
        if is_graph_model(operation):
            return copy_model(operation)(*args, **kwargs)  # a nested Functional stays whole
        if id(operation) not in copies:
            copies[id(operation)] = copy_layer(operation, call=(args, kwargs))
        return copies[id(operation)](*args, **kwargs)

    try:
        return rebuild_graph(model, call)
    except ValueError as error:
        if "unique" not in str(error):
            raise
        return model  # names clash: the nested models stay whole


def inline_layers(model, wants, max_depth=8):
    """A Functional model with each layer `wants` accepts called inline.

    An accepted layer (a custom layer such as keras_hub's `TransformerEncoder`)
    is copied, weights included, and its `call` run on the graph's symbolic
    tensors: its sublayers and Keras ops become nodes of the graph, each
    sublayer renamed `{layer}_{sublayer}` to keep names unique. Accepted
    layers found inside are inlined in turn (`max_depth` levels). A layer
    whose `call` cannot run on symbolic tensors (it calls TensorFlow directly)
    stays whole, and so does the whole model if the new names clash. `call`
    runs once with the graph's arguments (no `training=`): branches on the
    training flag are taken as at inference. `wants` must refuse layers
    holding variables of their own (only sublayers' variables carry over).

    Returns:
        `(new_model, origins)`: `model` itself when nothing was inlined, and
        `{id(layer of new_model from inside an inlined layer): the layer of
        model it copies}`.
    """
    origins = {}
    for _ in range(max_depth):
        try:
            new, inlined = _inline_once(model, wants)
        except ValueError as error:
            if "unique" not in str(error):
                raise
            break  # names clash: the layers stay whole
        if not inlined:
            break
        for operation, copy in inlined:
            for old, made in zip(all_layers(operation), all_layers(copy), strict=True):
                origins[id(made)] = origins.get(id(old), old)
        model = new
    return model, origins


def _inline_once(model, wants):
    """One level of `inline_layers`: the new model and its `[(layer, inlined copy)]`."""
    inlined = []

    def call(operation, args, kwargs):
        if not isinstance(operation, keras.layers.Layer) or not wants(operation):
            return operation(*args, **kwargs)
        copy = copy_layer(operation, call=(args, kwargs))
        for inner in _compat.child_layers(copy):
            inner.name = f"{copy.name}_{inner.name}"
        try:
            outputs = copy.call(*args, **kwargs)
        except Exception:  # TensorFlow calls, value branches: the layer stays whole
            return operation(*args, **kwargs)
        inlined.append((operation, copy))
        return outputs

    return rebuild_graph(model, call), inlined


def copy_with_originals(model):
    """`copy_model(model)` and `{id(copied layer): its original}`: for a technique that
    decides on the original's layers and swaps the copy's."""
    copy = copy_model(model)
    return copy, {
        id(c): o for o, c in zip(all_layers(model), all_layers(copy), strict=True)
    }


def copy_model(model, values=None, stop=None):
    """A new model computing the same function with its own weights.

    A graph model is rebuilt layer by layer (see `rebuild_graph`); a
    subclassed model is re-created from its config (it must be registered or
    importable, and implement `get_config`), built and given the weights.

    Args:
        model: a built Keras model.
        values, stop: optional arguments of `carry_weights` (subclassed only).

    Raises:
        ValueError: the model is not built, or a subclassed model cannot be
            re-created from its config (the reason is chained).
    """
    if is_graph_model(model):
        return replace_layers(model, lambda layer: False, None)
    if not model.built or model.get_build_config() is None:
        raise ValueError(
            f"Subclassed model '{model.name}' must be built (called on data) first. "
            f"Received: model={model}"
        )
    try:
        config = keras.saving.serialize_keras_object(model)
        new = keras.saving.deserialize_keras_object(config, custom_objects=classes_inside(model))
        build_like(new, model)
    except (NotImplementedError, TypeError, ValueError) as error:
        raise ValueError(
            f"Subclassed model '{model.name}' ({type(model).__name__}) cannot be recreated "
            "from its config; register the class and implement get_config() so that it "
            f"can be copied: {error}. Received: model={model}"
        ) from error
    carry_weights(model, new, values, stop)
    return new

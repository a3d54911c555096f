"""Quantization-aware training for Keras 3 models: `quantize_model`.

Sequential and Functional models are rebuilt layer by layer (their graph is
known): BatchNorm is folded into the preceding Conv/Dense, a following ReLU/ReLU6
is fused into it, model inputs and the outputs of float layers get one shared
range per tensor. Subclassed models are copied and their layer attributes are
replaced by quantized wrappers in place, inside a `QuantizedModel` that re-applies
the same replacement when a `.keras` file is loaded.
"""

import warnings

import keras
import numpy as np

from tfcompress._serialization import register
from tfcompress.quantization import clusters, folding, registry
from tfcompress.quantization.config import QuantizeConfig
from tfcompress.quantization.layers import ActivationQuantizer, QuantizeWrapper


def quantize_model(
    model, *, layer_configs=None, preserve_sparsity=True, fully_int8=False, preserve_clusters=False
):
    """Returns a copy of `model` that trains with int8 fake quantization.

    The copy trains with plain `fit` (any optimizer, callbacks, distribution
    strategy) and converts with `tfc.export.to_tflite(qat, quantization="int8")`
    to a TFLite file with int8 kernels, without representative data. `model`
    itself is not modified.

    Args:
        model: a built Keras 3 model: Sequential, Functional or subclassed (a
            subclassed model must be re-creatable from `get_config()`).
        layer_configs: optional dict mapping layer names to `QuantizeConfig`;
            `QuantizeConfig(mode="float")` leaves a layer in float.
        preserve_sparsity: keep exact zeros of kernels (e.g. from pruning and
            `tfc.pruning.strip_pruning`) at zero during QAT.
        fully_int8: raise instead of warning when a layer would stay float.
        preserve_clusters: cluster-preserving QAT. Every quantized Dense/Conv/
            DepthwiseConv/SeparableConv/RBM kernel (from
            `tfc.clustering.strip_clustering`) is trained as trainable
            centroids gathered by integer indices fixed now: each weight stays
            bound to its cluster, each centroid trains on the sum of its
            members' gradients, so after `fit` the kernel still has at most as
            many distinct values per tensor (or per output channel, when it was
            clustered per channel) as before, and so does the int8 file. With
            `preserve_sparsity` zeros stay exactly zero (pruned + clustered
            models). `QuantizeConfig(preserve_clusters=False)` leaves a layer
            out (its kernel trains freely); `QuantizeConfig(preserve_clusters=True)`
            selects one layer without this flag.

    Returns:
        A Keras model: Functional for Sequential/Functional inputs, a
        `QuantizedModel` for subclassed ones.

    Raises:
        ValueError: if `model` is not a built Keras model (or has unbuilt
            layers), is already quantized, is a `tfc.pruning.PrunedModel`
            (strip it first), has no quantizable layer, `layer_configs` names unknown
            layers or holds non-`QuantizeConfig` values, `fully_int8` is set
            and some layers would stay float (they are named), `preserve_clusters`,
            `preserve_sparsity` or `fully_int8` is not a bool, or a layer selected
            for cluster preservation has a kernel that is not clustered (it is named).

    Example:
        >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
        >>> qat = quantize_model(model)
        >>> qat.compile("adam", "sparse_categorical_crossentropy")
        >>> clustered = tfc.clustering.strip_clustering(  # doctest: +SKIP
        ...     tfc.clustering.cluster_weights(model, 8))
        >>> cqat = quantize_model(clustered, preserve_clusters=True)  # doctest: +SKIP

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for Efficient
        Integer-Arithmetic-Only Inference", CVPR 2018.
    """
    _check_model(model)
    _check_layer_configs(layer_configs)
    flags = dict(
        preserve_sparsity=preserve_sparsity,
        fully_int8=fully_int8,
        preserve_clusters=preserve_clusters,
    )
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"`{name}` must be True or False. Received: {name}={value}")
    preserve = (bool(preserve_sparsity), bool(preserve_clusters))
    if _is_graph_model(model):
        rewriter = _GraphRewriter(model, layer_configs or {}, preserve, True)
        return rewriter.run(fully_int8)
    paths, sub_models = _resolve_subclassed(model, layer_configs or {}, preserve, fully_int8)
    return QuantizedModel(
        _copy_subclassed(model), layer_configs=paths, sub_model_configs=sub_models
    )


def fold_batch_norms(model):
    """Returns a float copy of `model` with each BatchNorm folded into its producer.

    A BatchNormalization whose only input is the output of a Dense, Conv,
    DepthwiseConv or SeparableConv (with linear activation, used nowhere else)
    is removed and the producer's kernel and bias absorb it. In inference mode
    the result computes the same function; it is what `quantize_model` trains.

    Args:
        model: a built Sequential or Functional model.

    Returns:
        A Functional model without the folded BatchNormalization layers.

    Raises:
        ValueError: if `model` is not a built Sequential or Functional model.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
        ...                           keras.layers.BatchNormalization()])
        >>> len(fold_batch_norms(model).layers)
        2
    """
    _check_model(model)
    if not _is_graph_model(model):
        raise ValueError(
            "fold_batch_norms needs a Sequential or Functional model (a known graph). "
            f"Received: model={model}"
        )
    return _GraphRewriter(model, {}, (False, False), False).run(False)


def is_quantized(model):
    """Whether `model` contains fake-quantized layers made by `quantize_model`."""
    if isinstance(model, QuantizedModel):
        return True
    return any(
        isinstance(layer, (QuantizeWrapper, ActivationQuantizer))
        for layer in model._flatten_layers(include_self=False)
    )


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a Keras 3 model. Received: model={model}")
    if not model.built:
        raise ValueError(
            "`model` must be built (call it on data or give it an Input) before "
            f"quantization. Received: model={model.name} (not built)"
        )
    if is_quantized(model):
        raise ValueError(
            f"`model` is already quantized; quantize the float model. Received: model={model.name}"
        )
    from tfcompress.pruning import PrunedModel

    if isinstance(model, PrunedModel):
        raise ValueError(
            "`model` is a PrunedModel: call tfc.pruning.strip_pruning(model) first; its zeros "
            f"are then kept through QAT. Received: model={model.name}"
        )


def _check_layer_configs(layer_configs):
    if layer_configs is None:
        return
    if not isinstance(layer_configs, dict):
        raise ValueError(
            "`layer_configs` must be a dict of QuantizeConfig. "
            f"Received: layer_configs={layer_configs}"
        )
    for name, config in layer_configs.items():
        if not isinstance(config, QuantizeConfig):
            raise ValueError(
                f"`layer_configs[{name!r}]` must be a QuantizeConfig. "
                f"Received: layer_configs={layer_configs}"
            )


def _check_names(names, layer_configs):
    unknown = sorted(set(layer_configs) - set(names))
    if unknown:
        raise ValueError(
            f"`layer_configs` names layers not in the model: {unknown}. "
            f"Received: layer_configs={layer_configs}"
        )


def _is_graph_model(model):
    return isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"


def _as_functional(model):
    if type(model).__name__ == "Functional":
        return model
    # A Sequential takes one tensor: a one-item list of inputs would make Keras
    # warn about the input structure at every call of the QAT model.
    return keras.Model(model.inputs[0], model.outputs, name=model.name)


def _has_zeros(layer):
    kind = registry.weighted_kind(layer)
    return any(np.any(getattr(layer, attr).numpy() == 0) for attr in kind.kernels)


def _resolved_config(layer, layer_configs, preserve):
    preserve_sparsity, preserve_clusters = preserve
    config = layer_configs.get(layer.name) or QuantizeConfig()
    if config.preserve_sparsity and not (preserve_sparsity and _has_zeros(layer)):
        # Masks cost memory and time: only kernels with zeros need one.
        config = QuantizeConfig(**{**config.get_config(), "preserve_sparsity": False})
    if config.preserve_clusters is None and preserve_clusters:
        config = QuantizeConfig(**{**config.get_config(), "preserve_clusters": True})
    if config.mode == "int8" and config.preserve_clusters:
        kind = registry.weighted_kind(layer)
        for i, attr in enumerate(kind.kernels):
            depthwise = kind.depthwise or (kind.separable and i == 0)
            clusters.cluster_layout(getattr(layer, attr).numpy(), depthwise, layer.name, attr)
    return config


def _report_float(unsupported, opted_out, fully_int8):
    if fully_int8 and (unsupported or opted_out):
        raise ValueError(
            "These layers would stay float in a model asked to be fully int8: "
            f"{unsupported + opted_out}. Received: fully_int8=True"
        )
    if unsupported:
        warnings.warn(
            f"Leaving these layers in float (no int8 support): {unsupported}. TFLite runs "
            "them in float between dequantize/quantize ops; pass "
            'QuantizeConfig(mode="float") for them to silence this.',
            stacklevel=4,  # the user's quantize_model call
        )


def _copy_layer(layer, bn=None, activation=None):
    """A fresh copy of a built layer with its weights, optionally folded/fused."""
    config = layer.get_config()
    if bn is not None:
        config["use_bias"] = True
    if activation is not None:
        config["activation"] = activation
    copy = layer.__class__.from_config(config)
    copy.build_from_config(layer.get_build_config())
    if bn is None:
        copy.set_weights(layer.get_weights())
        return copy
    kind = registry.weighted_kind(layer)
    for attr in kind.kernels[:-1]:
        getattr(copy, attr).assign(getattr(layer, attr))
    last = kind.kernels[-1]
    bias = None if layer.bias is None else layer.bias.numpy()
    kernel, bias = folding.fold_batch_norm(
        getattr(layer, last).numpy(), bias, bn, depthwise=kind.depthwise
    )
    getattr(copy, last).assign(kernel)
    copy.bias.assign(bias)
    return copy


def _sole_consumer(layer, model_output_ids):
    """The one layer that consumes `layer`'s output, if there is exactly one."""
    if len(layer._inbound_nodes) != 1 or len(layer._outbound_nodes) != 1:
        return None
    if id(layer.output) in model_output_ids:
        return None
    node = layer._outbound_nodes[0]
    if len(node.input_tensors) != 1:
        return None
    return node.operation


class _GraphRewriter:
    """Rebuilds a Sequential/Functional model with quantized (or folded) layers."""

    def __init__(self, model, layer_configs, preserve, quantize, resolved=False):
        # `resolved`: `layer_configs` are final per-layer configs (a sub-model of a
        # QuantizedModel being rebuilt): nothing is decided from the weights.
        self.model = _as_functional(model)
        self.quantize = quantize
        self.resolved = resolved
        self.plan = {}
        self.float_names = []
        self.opted_out = []
        self.n_quantized = 0
        _check_names([layer.name for layer in self.model.layers], layer_configs)
        self._make_plan(layer_configs, preserve)
        self.copies = {}
        self.quantized_ids = set()
        self.input_quantizers = {}

    def _make_plan(self, layer_configs, preserve):
        output_ids = {id(t) for t in self.model.outputs}
        for layer in self.model.layers:
            if id(layer) in self.plan:
                continue
            role = registry.role(layer)
            config = layer_configs.get(layer.name)
            opted_out = config is not None and config.mode == "float"
            if role == "weighted":
                self._plan_weighted(layer, layer_configs, preserve, output_ids)
            elif role in ("merge", "activation", "ranged") and self.quantize and not opted_out:
                self.plan[id(layer)] = ("wrap", config or QuantizeConfig())
            else:
                self.plan[id(layer)] = ("copy",)
                if self.quantize and role != "pass":
                    (self.opted_out if opted_out else self.float_names).append(layer.name)

    def _plan_weighted(self, layer, layer_configs, preserve, output_ids):
        kind = registry.weighted_kind(layer)
        if self.resolved:
            config = layer_configs.get(layer.name) or QuantizeConfig(preserve_sparsity=False)
        else:
            config = _resolved_config(layer, layer_configs, preserve)
        linear = registry.activation_name(layer) == "linear"
        nxt = _sole_consumer(layer, output_ids) if linear else None
        bn = None
        if (
            kind.foldable
            and isinstance(nxt, keras.layers.BatchNormalization)
            and folding.can_fold(nxt, len(layer.output.shape))
        ):
            bn, nxt = nxt, _sole_consumer(nxt, output_ids)
            self.plan[id(bn)] = ("absorbed",)
        act = None
        if (
            self.quantize
            and config.mode == "int8"
            and linear
            and nxt is not None
            and registry.role(nxt) == "activation"
            and registry.activation_name(nxt) in ("relu", "relu6")
        ):
            act = registry.activation_name(nxt)
            self.plan[id(nxt)] = ("absorbed",)
        quantized = self.quantize and config.mode == "int8"
        if self.quantize and not quantized:
            self.opted_out.append(layer.name)
        self.n_quantized += quantized
        self.plan[id(layer)] = ("weighted", config if quantized else None, bn, act)

    def run(self, fully_int8, report=True):
        if self.quantize:
            if not self.n_quantized:
                raise ValueError(
                    "`model` has no layer that QAT can quantize (Dense, Conv1D/2D, "
                    "DepthwiseConv, SeparableConv, RBM). Received: model="
                    f"{self.model.name} with layers {[layer.name for layer in self.model.layers]}"
                )
            if report:
                _report_float(self.float_names, self.opted_out, fully_int8)
        return keras.models.clone_model(
            self.model, clone_function=lambda layer: layer, call_function=self._call
        )

    def _call(self, layer, *args, **kwargs):
        action = self.plan[id(layer)]
        if action[0] == "absorbed":
            return args[0]
        if action[0] == "copy":
            out = self._copy(layer)(*args, **kwargs)
            if self._all_quantized(args[0]) and registry.role(layer) == "pass":
                self.quantized_ids.add(id(out))
            return out
        if action[0] == "weighted" and action[1] is None:
            return self._copy(layer, action[2], action[3])(*args, **kwargs)
        inputs = self._quantized_inputs(args[0])
        if id(layer) not in self.copies:
            if action[0] == "weighted":
                copy = _copy_layer(layer, bn=action[2], activation=action[3])
                self.copies[id(layer)] = _checked(QuantizeWrapper(copy, action[1]))
            else:
                self.copies[id(layer)] = QuantizeWrapper(_copy_layer(layer), action[1])
        out = self.copies[id(layer)](inputs)
        self.quantized_ids.add(id(out))
        return out

    def _copy(self, layer, bn=None, activation=None):
        if id(layer) not in self.copies:
            self.copies[id(layer)] = _copy_layer(layer, bn=bn, activation=activation)
        return self.copies[id(layer)]

    def _all_quantized(self, inputs):
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        return all(id(x) in self.quantized_ids for x in items)

    def _quantized_inputs(self, inputs):
        if isinstance(inputs, (list, tuple)):
            return [self._quantized_inputs(x) for x in inputs]
        if id(inputs) in self.quantized_ids:
            return inputs
        if id(inputs) not in self.input_quantizers:
            quantizer = ActivationQuantizer()
            out = quantizer(inputs)
            self.quantized_ids.add(id(out))
            self.input_quantizers[id(inputs)] = out
        return self.input_quantizers[id(inputs)]


def _checked(wrapper):
    """Marks a wrapper whose clustered kernels `_resolved_config` checked (before folding)."""
    wrapper._clusters_checked = True
    return wrapper


def _layer_slots(obj, prefix=""):
    """Yields ``(path, owner, attribute, index, layer)`` for layers held as attributes."""
    for name, value in sorted(vars(obj).items()):
        if name.startswith("_") or name == "model" and isinstance(obj, QuantizedModel):
            continue
        if isinstance(value, keras.layers.Layer):
            yield f"{prefix}{name}", obj, name, None, value
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, keras.layers.Layer):
                    yield f"{prefix}{name}.{i}", obj, name, i, item


def _walk_subclassed(obj, prefix=""):
    """Yields ``(path, owner, attribute, index, layer, role)`` over nested layers."""
    for path, owner, name, index, layer in _layer_slots(obj, prefix):
        if isinstance(layer, (QuantizeWrapper, ActivationQuantizer)):
            continue
        role = registry.role(layer)
        if role is None and _is_graph_model(layer):
            role = "graph"
        if role is None and layer._layers:
            yield from _walk_subclassed(layer, f"{path}/")
            if not layer._trainable_variables and not layer._non_trainable_variables:
                continue
        yield path, owner, name, index, layer, role


def _plan_sub_model(layer, layer_configs, preserve, config):
    """Plans a Sequential/Functional sub-model of a subclassed model.

    Returns its `_GraphRewriter` and the final config of its layers keyed by
    position in the Functional form (names are not stable: re-creating the
    subclassed model, as copying and `.keras` loading do, renames them).
    """
    names = {sub.name for sub in layer.layers}  # a model nested deeper stays float
    own = {name: c for name, c in layer_configs.items() if name in names}
    wants = preserve[1] if config.preserve_clusters is None else config.preserve_clusters
    if wants or any(c.preserve_clusters for c in own.values()):
        raise ValueError(
            "`preserve_clusters` is not supported for a Sequential/Functional sub-model "
            f"inside a subclassed model: '{layer.name}'. Quantize it on its own, or "
            f"leave it out with layer_configs={{'{layer.name}': "
            "QuantizeConfig(preserve_clusters=False)}. Received: preserve_clusters=True"
        )
    rewriter = _GraphRewriter(layer, own, (preserve[0], False), True)
    configs = {}
    for i, sub in enumerate(rewriter.model.layers):
        action = rewriter.plan[id(sub)]
        if action[0] == "weighted":
            configs[str(i)] = action[1] or QuantizeConfig(mode="float")
        elif sub.name in own:
            configs[str(i)] = own[sub.name]
    return rewriter, configs


def _resolve_subclassed(model, layer_configs, preserve, fully_int8):
    """Per attribute path, the QuantizeConfig of each layer to quantize, and for
    Sequential/Functional sub-models the configs of their layers."""
    slots = list(_walk_subclassed(model))
    names = [slot[4].name for slot in slots]
    for slot in slots:
        if slot[5] == "graph":
            names += [layer.name for layer in slot[4]._flatten_layers(include_self=False)]
    _check_names(names, layer_configs)
    resolved, sub_models, unsupported, opted_out, unbuilt, n_weighted = {}, {}, [], [], [], 0
    for path, _, _, _, layer, role in slots:
        config = layer_configs.get(layer.name) or QuantizeConfig()
        if config.mode == "float":
            opted_out.append(layer.name)
            continue
        if role in (None, "batchnorm"):
            unsupported.append(layer.name)
            continue
        if role == "pass":
            continue
        if not layer.built:
            unbuilt.append(layer.name)
            continue
        if role == "graph":
            rewriter, sub_models[path] = _plan_sub_model(layer, layer_configs, preserve, config)
            unsupported += rewriter.float_names
            opted_out += rewriter.opted_out
            n_weighted += rewriter.n_quantized
            if not rewriter.n_quantized:
                del sub_models[path]
                continue
        elif role == "weighted":
            n_weighted += 1
            config = _resolved_config(layer, layer_configs, preserve)
        resolved[path] = config
    if unbuilt:
        raise ValueError(
            f"These layers of `model` are not built: {unbuilt}. Call the model on a batch of "
            "data before quantization (a layer `call` never uses can be left out with "
            f'QuantizeConfig(mode="float")). Received: model={model.name}'
        )
    if not n_weighted:
        raise ValueError(
            "`model` has no layer that QAT can quantize (Dense, Conv1D/2D, DepthwiseConv, "
            f"SeparableConv, RBM). Received: model={model.name}"
        )
    _report_float(unsupported, opted_out, fully_int8)
    return resolved, sub_models


def _copy_subclassed(model):
    try:
        config = keras.saving.serialize_keras_object(model)
        copy = keras.saving.deserialize_keras_object(
            config, custom_objects={type(model).__name__: type(model)}
        )
        if not copy.built:
            copy.build_from_config(model.get_build_config())
        copy.set_weights(model.get_weights())
    except (NotImplementedError, TypeError, ValueError) as error:
        raise ValueError(
            "A subclassed model must be re-creatable from get_config() (and built) to be "
            f"copied for QAT: {error}. Received: model={model.name}"
        ) from error
    return copy


@register
class QuantizedModel(keras.Model):
    """A subclassed Keras model whose layers were replaced by quantized wrappers.

    Made by `quantize_model` for subclassed models. The user's `call` runs
    unchanged: its layer attributes now hold `QuantizeWrapper`s (or quantized
    Functional sub-models). The configuration stores the inner model's own
    config and the quantized attribute paths, so loading a `.keras` file
    re-creates the inner model and replaces the same attributes again.

    Args:
        model: a built subclassed model; modified in place.
        layer_configs: dict mapping attribute paths (``"dense"``,
            ``"blocks.0"``, ``"encoder/dense"``) to the `QuantizeConfig` of the
            layer there.
        cluster_shapes: dict mapping attribute paths to the centroid shapes of
            cluster-preserving wrappers (set by `.keras` loading; `None` derives
            them from the kernels).
        sub_model_configs: dict mapping the attribute paths of Sequential/
            Functional sub-models to the final `QuantizeConfig` of their layers,
            keyed by position (as strings) in the sub-model's Functional form
            (set by `quantize_model`; `None` quantizes them with the defaults).
        **kwargs: base `Model` arguments.

    Raises:
        ValueError: if `model` is not a built Keras model or a path is unknown.

    Example:
        >>> qat = quantize_model(my_subclassed_model)  # doctest: +SKIP
        >>> isinstance(qat, QuantizedModel)  # doctest: +SKIP
        True
    """

    def __init__(
        self, model, layer_configs=None, cluster_shapes=None, sub_model_configs=None, **kwargs
    ):
        if not isinstance(model, keras.Model) or not model.built:
            raise ValueError(f"`model` must be a built Keras model. Received: model={model}")
        super().__init__(**kwargs)
        self.layer_configs = dict(layer_configs or {})
        slots = {slot[0]: slot for slot in _walk_subclassed(model)}
        unknown = sorted(set(self.layer_configs) - set(slots))
        if unknown:
            raise ValueError(
                f"`layer_configs` names unknown attribute paths {unknown}. "
                f"Received: layer_configs={layer_configs}"
            )
        shapes = dict(cluster_shapes or {})
        self.sub_model_configs = {
            path: dict(configs) for path, configs in (sub_model_configs or {}).items()
        }
        self.cluster_shapes = {}
        for path, config in self.layer_configs.items():
            new = _replace(slots[path], config, shapes.get(path), self.sub_model_configs.get(path))
            if getattr(new, "cluster_shapes", None) is not None:
                self.cluster_shapes[path] = [list(shape) for shape in new.cluster_shapes]
        self.model = model
        self.build((model.get_build_config() or {}).get("input_shape"))

    def build(self, input_shape):
        # Everything was built with the inner model; recording the shape lets
        # export and `.keras` loading see the input signature.
        self.built = True

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def get_config(self):
        config = {
            "model": keras.saving.serialize_keras_object(self.model),
            "layer_configs": {
                path: keras.saving.serialize_keras_object(config)
                for path, config in self.layer_configs.items()
            },
        }
        if self.cluster_shapes:
            config["cluster_shapes"] = self.cluster_shapes
        if self.sub_model_configs:
            config["sub_model_configs"] = {
                path: {i: keras.saving.serialize_keras_object(c) for i, c in configs.items()}
                for path, configs in self.sub_model_configs.items()
            }
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        config["layer_configs"] = {
            path: keras.saving.deserialize_keras_object(value)
            for path, value in config["layer_configs"].items()
        }
        if "sub_model_configs" in config:
            config["sub_model_configs"] = {
                path: {i: keras.saving.deserialize_keras_object(c) for i, c in configs.items()}
                for path, configs in config["sub_model_configs"].items()
            }
        return cls(**config)


def _replace(slot, config, cluster_shapes=None, sub_model_configs=None):
    path, owner, name, index, layer, role = slot
    if role == "graph" and config.mode == "int8" and sub_model_configs is not None:
        graph = _as_functional(layer)
        by_name = {graph.layers[int(i)].name: c for i, c in sub_model_configs.items()}
        new = _GraphRewriter(graph, by_name, (True, False), True, resolved=True).run(False, False)
    elif role == "graph":
        new = quantize_model(layer) if config.mode == "int8" else layer
    else:
        new = QuantizeWrapper(layer, config, quantize_inputs=True, cluster_shapes=cluster_shapes)
        new.build((layer.get_build_config() or {}).get("input_shape"))
    if index is None:
        owner._tracker.untrack(layer)
        setattr(owner, name, new)
    else:
        container = getattr(owner, name)
        container.pop(index)
        container.insert(index, new)
    return new

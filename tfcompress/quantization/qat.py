"""Quantization-aware training for Keras 3 models: `quantize_model`.

Sequential and Functional models are rebuilt layer by layer (their graph is
known) into the graph the TFLite converter will build: BatchNorm is folded into
the preceding Conv/Dense, a following ReLU/ReLU6 is fused into it (and into an
ADD/SUB/MUL), `x * relu6(x + 3) / 6` becomes one hard swish, a mean over 1x1
passes its input through, and model inputs and the outputs of float layers get
one shared range per tensor. Only the tensors TFLite rounds are rounded.
Subclassed models are copied and their layer attributes are replaced by
quantized wrappers in place, inside a `QuantizedModel` that re-applies the same
replacement when a `.keras` file is loaded.
"""

import warnings

import keras
import numpy as np
from keras import ops

from tfcompress import _compat, layers_registry, surgery
from tfcompress._serialization import register
from tfcompress.quantization import clusters, folding, int4, registry
from tfcompress.quantization.attention import (
    QuantizedAttention,
    QuantizedEmbedding,
    QuantizedLayerNorm,
)
from tfcompress.quantization.config import QuantizeConfig
from tfcompress.quantization.layers import ActivationQuantizer, QuantizeWrapper
from tfcompress.quantization.recurrent import QuantizedRecurrent


def quantize_model(
    model,
    *,
    layer_configs=None,
    preserve_sparsity=True,
    fully_int8=False,
    preserve_clusters=False,
    layers=None,
    exclude=None,
    weight_bits=8,
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
        layers: optional names, classes or predicates of the layers to
            quantize; the others stay float (as with `QuantizeConfig(mode="float")`).
        exclude: names, classes or predicates of layers to leave float.
        weight_bits: 8 (the above), or 4: train for the int4 file of
            `to_tflite(qat, quantization="int4")` instead. Every Dense, Conv1D and
            Conv2D kernel (also inside custom layers) runs rounded to its int4
            grid, one scale per output channel, exactly as the file will store
            it (`tfc.quantization.int4`); activations stay float, as in that
            file. Goes with `layers`, `exclude` and the defaults of the other
            arguments (zeros stay zero on the int4 grid by themselves).

    Returns:
        A Keras model: Functional for Sequential/Functional inputs, a
        `QuantizedModel` for subclassed ones (`tfc.quantization.int4.Int4Model`
        with `weight_bits=4`).

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
    if weight_bits not in (4, 8) or isinstance(weight_bits, bool):
        raise ValueError(f"`weight_bits` must be 8 or 4. Received: weight_bits={weight_bits!r}")
    if weight_bits == 4:
        others = dict(layer_configs=layer_configs, fully_int8=fully_int8,
                      preserve_clusters=preserve_clusters)  # fmt: skip
        for name, value in others.items():
            if value not in (None, False):
                raise ValueError(
                    f"`{name}` goes with int8 QAT (weight_bits=8). "
                    f"Received: {name}={value!r}, weight_bits=4"
                )
        return int4.quantize_weights(model, surgery.Selection(model, layers, exclude))
    _check_layer_configs(layer_configs)
    layer_configs = _with_selection(model, layer_configs, layers, exclude)
    flags = dict(
        preserve_sparsity=preserve_sparsity,
        fully_int8=fully_int8,
        preserve_clusters=preserve_clusters,
    )
    for name, value in flags.items():
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"`{name}` must be True or False. Received: {name}={value}")
    preserve = (bool(preserve_sparsity), bool(preserve_clusters))
    layers_registry.warn_overridden(surgery.all_layers(model), "Quantization")
    if surgery.is_graph_model(model):
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
    if not surgery.is_graph_model(model):
        raise ValueError(
            "fold_batch_norms needs a Sequential or Functional model (a known graph). "
            f"Received: model={model}"
        )
    return _GraphRewriter(model, {}, (False, False), False).run(False)


def is_quantized(model):
    """Whether `model` contains fake-quantized layers made by `quantize_model`."""
    if isinstance(model, QuantizedModel) or int4.is_int4_quantized(model):
        return True
    return any(
        isinstance(layer, (QuantizeWrapper, ActivationQuantizer))
        for layer in surgery.all_layers(model)
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


def _with_selection(model, layer_configs, layers, exclude):
    """`layer_configs` with a float config for each layer `layers`/`exclude` leave out."""
    if layers is None and exclude is None:
        return layer_configs
    select = surgery.Selection(model, layers, exclude)
    if surgery.is_graph_model(model):
        candidates = _graph_layers(model)
    else:
        candidates = [slot.layer for slot, _ in _walk_subclassed(model)]
    configs = dict(layer_configs or {})
    for layer in candidates:
        if not select(layer):
            configs.setdefault(layer.name, QuantizeConfig(mode="float"))
    return configs


def _graph_layers(model):
    """The layers QAT plans for a graph model: nested Sequential models' layers inline."""
    layers = []
    for layer in surgery.as_functional(model).layers:
        layers += _nested(layer) if isinstance(layer, keras.Sequential) else [layer]
    return layers


def _nested(sequential):
    layers = []
    for layer in sequential.layers:
        layers += _nested(layer) if isinstance(layer, keras.Sequential) else [layer]
    return layers


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


def _has_zeros(layer):
    kind = registry.weighted_kind(layer)
    return any(np.any(getattr(layer, attr).numpy() == 0) for attr in kind.kernels)


def _recurrent_config(layer, config, preserve_sparsity):
    """A recurrent layer's config: masks only where a kernel has zeros to keep."""
    config = config or QuantizeConfig()
    has_zeros = any(
        np.any(kernel.numpy() == 0)
        for rnn in registry.recurrent_directions(layer)
        for kernel in (rnn.cell.kernel, rnn.cell.recurrent_kernel)
    )
    if config.preserve_sparsity and not (preserve_sparsity and has_zeros):
        config = QuantizeConfig(**{**config.get_config(), "preserve_sparsity": False})
    return config


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


def _copy_layer(layer, bn=None, activation=None, call=None):
    """A fresh copy of a built layer with its weights, optionally folded/fused."""
    if bn is None and activation is None:
        return surgery.copy_layer(layer, call=call)
    config = layer.get_config()
    if bn is not None:
        config["use_bias"] = True
    if activation is not None:
        config["activation"] = activation
    if bn is None:
        return surgery.copy_layer(layer, config=config, call=call)
    copy = layer.__class__.from_config(config)
    copy.build_from_config(layer.get_build_config())
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
    inbound, outbound = _compat.inbound_nodes(layer), _compat.outbound_nodes(layer)
    if len(inbound) != 1 or len(outbound) != 1:
        return None
    if id(layer.output) in model_output_ids:
        return None
    node = outbound[0]
    if len(node.input_tensors) != 1:
        return None
    return node.operation


# Layers without a kernel that QAT wraps to give their output an int8 range.
_WRAPPED_ROLES = ("merge", "activation", "ranged", "affine")

# Transformer layers, each computed by a quantized layer of its own.
_TRANSFORMER = {
    "attention": QuantizedAttention,
    "layer_norm": QuantizedLayerNorm,
    "embedding": QuantizedEmbedding,
}


class _GraphRewriter:
    """Rebuilds a Sequential/Functional model with quantized (or folded) layers."""

    def __init__(self, model, layer_configs, preserve, quantize, resolved=False):
        # `resolved`: `layer_configs` are final per-layer configs (a sub-model of a
        # QuantizedModel being rebuilt): nothing is decided from the weights.
        # Nested Sequential models (ConvNeXt's stem) are inlined: their layers fold,
        # fuse and take ranges with the layers around them.
        self.model = surgery.inline_graphs(surgery.as_functional(model))
        self.quantize = quantize
        self.resolved = resolved
        self.plan = {}
        self.layer_configs, self.preserve = layer_configs, preserve
        self.float_names = []
        self.opted_out = []
        self.n_quantized = 0
        _check_names([layer.name for layer in self.model.layers], layer_configs)
        self._make_plan(layer_configs, preserve)
        self.copies = {}
        self.quantized_ids = set()
        # Tensors left without a range because TFLite fuses the ReLU/ReLU6 that
        # consumes them into the ADD/SUB/MUL computing them.
        self.fused_ids = set()
        # The input `x` of each hard-swish chain, by the id of the chain's last node.
        self.hard_swish_inputs = {}
        self.input_quantizers = {}

    def _make_plan(self, layer_configs, preserve):
        output_ids = {id(t) for t in self.model.outputs}
        # Ranged layers that pass their input's range through (means over 1x1).
        self.pass_ids = {
            id(layer) for layer in self.model.layers if registry.averages_single_values(layer)
        }
        for layer in self.model.layers:
            if id(layer) in self.plan:
                continue
            role = registry.role(layer)
            if id(layer) in self.pass_ids:
                role = "pass"  # a mean over 1x1: TFLite drops it and its range
            config = layer_configs.get(layer.name)
            opted_out = config is not None and config.mode == "float"
            if role == "weighted":
                self._plan_weighted(layer, layer_configs, preserve, output_ids)
            elif role in _WRAPPED_ROLES and self.quantize and not opted_out:
                self.plan[id(layer)] = ("wrap", config or QuantizeConfig())
            elif role == "recurrent" and self.quantize and not opted_out and not _masked(layer):
                self.plan[id(layer)] = ("recurrent", _recurrent_config(layer, config, preserve[0]))
                self.n_quantized += 1
            elif role in _TRANSFORMER and self.quantize and not opted_out and _plain_call(layer):
                self.plan[id(layer)] = (role, config or QuantizeConfig())
                self.n_quantized += role != "layer_norm"
            elif role is None and self.quantize and not opted_out and _composite(layer):
                self.plan[id(layer)] = ("composite",)
                self.n_quantized += 1
            else:
                self.plan[id(layer)] = ("copy",)
                if self.quantize and role != "pass":
                    (self.opted_out if opted_out else self.float_names).append(layer.name)
        if self.quantize:
            self._plan_affine_relus(output_ids)
        self.fused_ops = self._plan_fused_relus(output_ids) if self.quantize else set()
        self.concat_fed = self._plan_concat_inputs(output_ids) if self.quantize else set()
        # {id(last node): id(product node)} of each `x * relu6(x + 3) / 6` chain.
        self.hard_swish = self._plan_hard_swish() if self.quantize else {}
        self.hard_swish_products = {v: k for k, v in self.hard_swish.items()}

    def _next(self, operation, output_ids):
        """The sole consumer of `operation`'s output as the converter sees it
        (means over 1x1, which it removes, are looked through), else None."""
        nxt = _sole_consumer(operation, output_ids)
        while nxt is not None and id(nxt) in self.pass_ids:
            nxt = _sole_consumer(nxt, output_ids)
        return nxt

    def _plan_affine_relus(self, output_ids):
        """A ReLU/ReLU6 after a quantized affine layer (BatchNormalization that
        follows no kernel, Rescaling, Normalization) fuses into its ADD or MUL."""
        for layer in self.model.layers:
            action = self.plan.get(id(layer), ("",))
            if action[0] != "wrap" or registry.role(layer) != "affine":
                continue
            nxt = self._next(layer, output_ids)
            name = registry.fused_relu_name(nxt) if nxt is not None else None
            if name is None:
                continue
            if isinstance(nxt, keras.layers.Layer) and self.plan.get(id(nxt), ("",))[0] != "wrap":
                continue  # a ReLU left float stays apart
            self.plan[id(layer)] = (*action, name)
            self.plan[id(nxt)] = ("absorbed",)

    def _plan_concat_inputs(self, output_ids):  # noqa: C901
        """Ids of the quantized layers whose output only a quantized Concatenate reads.

        TFLite's CONCATENATION takes its inputs on its own output grid: such a
        layer requantizes its result straight onto that grid (one rounding),
        so the QAT graph gives it no range of its own either.
        """
        fed = set()
        for node in _compat.graph_nodes(self.model):
            concat = node.operation
            if not isinstance(concat, keras.layers.Concatenate):
                continue
            if self.plan.get(id(concat), ("",))[0] != "wrap":
                continue
            tensors = list(node.input_tensors)
            for tensor in tensors:
                history = _compat.keras_history(tensor)
                if history is None or id(tensor) in output_ids:
                    continue
                last = history[0]  # the concat must be the only reader of `tensor`
                if len(_compat.outbound_nodes(last)) != 1 or len(_compat.inbound_nodes(last)) != 1:
                    continue
                if sum(t is tensor for t in tensors) != 1:
                    continue
                producer = self._ranged_producer(tensor)
                if producer is not None:
                    fed.add(id(producer))
        return fed

    def _ranged_producer(self, tensor):
        """The quantized layer that gives `tensor` its range (looking through
        absorbed ReLUs), if it may hand that range to its consumer; else None."""
        while True:
            history = _compat.keras_history(tensor)
            if history is None:
                return None
            producer = history[0]
            action = self.plan.get(id(producer), ("",))
            if action[0] != "absorbed":
                break
            node = _compat.inbound_nodes(producer)[history[1]]
            tensor = list(node.input_tensors)[0]
        if not isinstance(producer, keras.layers.Layer):
            return None
        if len(_compat.inbound_nodes(producer)) != 1:
            return None
        if action[0] == "weighted" and action[1] is not None:
            return producer if registry.output_range(producer) is None else None
        if action[0] == "wrap" and registry.role(producer) in ("merge", "affine"):
            fixed = registry.output_range(producer) is not None
            return None if fixed or id(producer) in self.fused_ops else producer
        return None

    def _plan_fused_relus(self, output_ids):
        """Ids of the ADD/SUB/MUL nodes whose only consumer is a quantized ReLU/ReLU6.

        The converter fuses that activation into the int8 ADD/SUB/MUL and drops
        any range between them: the op computes at full precision and rounds
        once, to the activation's output range. The QAT graph must not round
        the op's output either.
        """
        fused = set()
        for node in _compat.graph_nodes(self.model):
            operation = node.operation
            if not self._computes_fusable(operation, node):
                continue
            nxt = self._next(operation, output_ids)
            if nxt is None or registry.fused_relu_name(nxt) is None:
                continue
            if isinstance(nxt, keras.layers.Layer) and self.plan.get(id(nxt), ("",))[0] != "wrap":
                continue  # a float or absorbed activation: the op keeps its range
            fused.add(id(operation))
        return fused

    def _plan_hard_swish(self):
        """The `x * relu6(x + 3) / 6` chains that the converter turns into one HARD_SWISH.

        With the ReLU6 fused into the ADD, the converter matches
        ``(x * relu6(x + 3)) * (1/6)`` (or ``/ 6``) and drops the ranges inside
        it: TFLite runs HARD_SWISH on `x`'s integers straight to the range of the
        chain's output. The QAT graph runs a quantized hard-swish `Activation`
        there, with that one range. (The product must be ``x * relu6(...)``, in that order;
        ``relu6(...) * x`` or ``x * (relu6(x + 3) / 6)`` stay separate int8
        ADD and MULs in TFLite, each with its own range, as here.)

        Returns:
            ``{id(scaling node): id(product node)}``.
        """
        chains = {}
        for node in _compat.graph_nodes(self.model):
            operation = node.operation
            if isinstance(operation, keras.layers.Layer):
                continue
            product = _divided_by_six(type(operation).__name__, *_compat.node_arguments(node))
            found = product is not None and _producer(product)
            if not found:
                continue
            multiply, multiply_node = found
            if isinstance(multiply, keras.layers.Layer):
                factors = list(multiply_node.input_tensors)
                ok = (
                    isinstance(multiply, keras.layers.Multiply)
                    and self.plan.get(id(multiply), ("",))[0] == "wrap"
                    and len(_compat.inbound_nodes(multiply)) == 1
                )
            else:
                args, kwargs = _compat.node_arguments(multiply_node)
                factors = list(args)
                ok = type(multiply).__name__ == "Multiply" and not kwargs
            if ok and len(factors) == 2 and self._is_relu6_of_x_plus_3(factors[1], factors[0]):
                chains[id(operation)] = id(multiply)
        return chains

    def _is_relu6_of_x_plus_3(self, tensor, x):
        """Whether `tensor` is ``relu6(x + 3)`` with the ADD fusing the ReLU6."""
        found = _is_tensor(tensor) and _producer(tensor)
        if not found or registry.fused_relu_name(found[0]) != "relu6":
            return False
        relu6, relu6_node = found
        if isinstance(relu6, keras.layers.Layer):
            inputs = list(relu6_node.input_tensors)
        else:
            inputs = list(_compat.node_arguments(relu6_node)[0])
        found = len(inputs) == 1 and _is_tensor(inputs[0]) and _producer(inputs[0])
        if not found or id(found[0]) not in self.fused_ops:
            return False
        add, add_node = found
        args, kwargs = _compat.node_arguments(add_node)
        if type(add).__name__ != "Add" or kwargs or len(args) != 2:
            return False
        return (args[0] is x and _number(args[1]) == 3.0) or (
            args[1] is x and _number(args[0]) == 3.0
        )

    def _computes_fusable(self, operation, node):
        """Whether `operation` (at its only `node`) converts to an int8 ADD, SUB or MUL."""
        if isinstance(operation, keras.layers.Layer):
            return (
                isinstance(operation, registry.FUSING_MERGE_LAYERS)
                and self.plan.get(id(operation), ("",))[0] == "wrap"
                and len(node.input_tensors) == 2
            )
        name = type(operation).__name__
        if name in ("Divide", "TrueDivide"):
            args, _ = _compat.node_arguments(node)
            return len(args) == 2 and _is_divisor(args[1])
        return name in registry.FUSING_OPS

    def _plan_weighted(self, layer, layer_configs, preserve, output_ids):
        kind = registry.weighted_kind(layer)
        if self.resolved:
            config = layer_configs.get(layer.name) or QuantizeConfig(preserve_sparsity=False)
        else:
            config = _resolved_config(layer, layer_configs, preserve)
        linear = registry.activation_name(layer) == "linear"
        nxt = self._next(layer, output_ids) if linear else None
        bn = None
        if (
            kind.foldable
            and isinstance(nxt, keras.layers.BatchNormalization)
            and folding.can_fold(nxt, len(layer.output.shape))
        ):
            bn, nxt = nxt, self._next(nxt, output_ids)
            self.plan[id(bn)] = ("absorbed",)
        act = None
        if (
            self.quantize
            and config.mode == "int8"
            and linear
            and nxt is not None
            and registry.fused_relu_name(nxt) is not None
        ):
            # A ReLU/ReLU6 layer or op node (`ops.relu6(x)`) fuses into the kernel.
            act = registry.fused_relu_name(nxt)
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
        return surgery.rebuild_graph(self.model, self._call)

    def _call(self, layer, args, kwargs):
        if not isinstance(layer, keras.layers.Layer):
            return self._op(layer, args, kwargs)
        action = self.plan[id(layer)]
        if action[0] == "absorbed":
            return args[0]
        if action[0] == "copy":
            out = self._copy(layer, call=(args, kwargs))(*args, **kwargs)
            passes = registry.role(layer) == "pass" or id(layer) in self.pass_ids
            if passes and self._all_quantized(args[0]):
                self.quantized_ids.add(id(out))
            return out
        if action[0] == "weighted" and action[1] is None:
            return self._copy(layer, action[2], action[3])(*args, **kwargs)
        if action[0] in _TRANSFORMER:
            return self._transformer(layer, action, args, kwargs)
        if action[0] == "composite":
            if id(layer) not in self.copies:
                configs = {}
                for slot, role in _walk_subclassed(layer):
                    config = self.layer_configs.get(slot.layer.name) or QuantizeConfig()
                    if role in (None, "pass") or config.mode == "float":
                        continue
                    if role == "weighted":
                        config = _resolved_config(slot.layer, self.layer_configs, self.preserve)
                    elif role == "recurrent":
                        config = _recurrent_config(slot.layer, config, self.preserve[0])
                    configs[slot.path] = config
                copy = _copy_layer(layer, call=(args, kwargs))
                self.copies[id(layer)] = QuantizedComposite(copy, configs)
            return self.copies[id(layer)](*args, **kwargs)
        inputs = self._quantized_inputs(args[0])
        if action[0] == "recurrent":
            if id(layer) not in self.copies:
                self.copies[id(layer)] = QuantizedRecurrent(_copy_layer(layer), action[1])
            out = self.copies[id(layer)](inputs)
            self.quantized_ids.add(id(out))
            return out
        if id(layer) in self.hard_swish_products:
            self.hard_swish_inputs[self.hard_swish_products[id(layer)]] = inputs[0]
        if id(layer) in self.fused_ops:
            # ADD/SUB/MUL with a fused ReLU: no range of its own (the ReLU's is used).
            out = self._copy(layer)(inputs, *args[1:], **kwargs)
            self.fused_ids.add(id(out))
            return out
        own_range = id(layer) not in self.concat_fed
        if id(layer) not in self.copies:
            if action[0] == "weighted":
                copy = _copy_layer(layer, bn=action[2], activation=action[3])
                self.copies[id(layer)] = _checked(
                    QuantizeWrapper(copy, action[1], output_range=own_range)
                )
            else:
                fused = action[2] if len(action) > 2 else None
                self.copies[id(layer)] = QuantizeWrapper(
                    _copy_layer(layer), action[1], fused_activation=fused, output_range=own_range
                )
        out = self.copies[id(layer)](inputs)
        (self.quantized_ids if own_range else self.fused_ids).add(id(out))
        return out

    def _transformer(self, layer, action, args, kwargs):
        if id(layer) not in self.copies:
            self.copies[id(layer)] = _TRANSFORMER[action[0]](_copy_layer(layer), action[1])
        if action[0] != "embedding":  # an embedding's input is integer ids
            args, kwargs = keras.tree.map_structure(
                lambda x: self._quantized_inputs(x) if _is_float_tensor(x) else x, (args, kwargs)
            )
        out = self.copies[id(layer)](*args, **kwargs)
        self.quantized_ids.add(id(out))
        return out

    def _copy(self, layer, bn=None, activation=None, call=None):
        if id(layer) not in self.copies:
            self.copies[id(layer)] = _copy_layer(layer, bn=bn, activation=activation, call=call)
        return self.copies[id(layer)]

    def _op(self, op, args, kwargs):
        """A Keras op node (`x + 3.0`, `ops.relu6(x)`, `x[:, 0]`) in the QAT graph.

        An op that only moves values (reshape, slicing, transpose) keeps its
        input's range, as TFLite keeps the scale; an op that computes gets its
        own output range, like a merge layer, so that TFLite runs it in int8.
        Division by a constant becomes a multiplication by its inverse: TFLite
        has an int8 MUL but no int8 DIV.
        """
        name = type(op).__name__
        if not self.quantize:
            return op(*args, **kwargs)
        if self.plan.get(id(op), ("",))[0] == "absorbed":
            return args[0]  # a ReLU/ReLU6 fused into the weighted layer before it
        tensors = [x for x in keras.tree.flatten((args, kwargs)) if _is_tensor(x)]
        if name in registry.MOVING_OPS:
            out = op(*args, **kwargs)
            if tensors and self._all_quantized(tensors):
                for x in keras.tree.flatten(out):
                    self.quantized_ids.add(id(x))
            return out
        args, kwargs = keras.tree.map_structure(
            lambda x: self._quantized_inputs(x) if _is_float_tensor(x) else x, (args, kwargs)
        )
        if id(op) in self.hard_swish_products:
            self.hard_swish_inputs[self.hard_swish_products[id(op)]] = args[0]
        if id(op) in self.hard_swish:
            # The chain as TFLite runs it: HARD_SWISH of x, one range (the
            # ADD, ReLU6 and product before it are left out of the graph).
            activation = keras.layers.Activation("hard_swish", name=f"{op.name}_hard_swish")
            out = QuantizeWrapper(activation)(self.hard_swish_inputs.pop(id(op)))
            self.quantized_ids.add(id(out))
            return out
        if name in ("Divide", "TrueDivide") and _is_divisor(args[1]):
            out = ops.multiply(args[0], 1.0 / args[1])
            # The original's name: an automatic one can clash with the names of
            # a model loaded from a file (they do not advance Keras' counters).
            _compat.keras_history(out)[0].name = f"{op.name}_as_multiply"
        else:
            out = op(*args, **kwargs)
        if id(op) in self.fused_ops:
            self.fused_ids.add(id(out))
            return out
        return keras.tree.map_structure(self._ranged, out)

    def _ranged(self, tensor):
        if not _is_float_tensor(tensor):
            return tensor
        out = ActivationQuantizer()(tensor)
        self.quantized_ids.add(id(out))
        return out

    def _all_quantized(self, inputs):
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        return all(id(x) in self.quantized_ids for x in items)

    def _quantized_inputs(self, inputs):
        if isinstance(inputs, (list, tuple)):
            return [self._quantized_inputs(x) for x in inputs]
        if id(inputs) in self.quantized_ids or id(inputs) in self.fused_ids:
            return inputs
        if id(inputs) not in self.input_quantizers:
            quantizer = ActivationQuantizer()
            out = quantizer(inputs)
            self.quantized_ids.add(id(out))
            self.input_quantizers[id(inputs)] = out
        return self.input_quantizers[id(inputs)]


def _is_tensor(x):
    return isinstance(x, keras.KerasTensor)


def _is_float_tensor(x):
    return _is_tensor(x) and "float" in str(x.dtype)


def _number(value):
    """`value` as a float when it is a real Python or NumPy scalar, else None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return None
    return float(value) if np.isreal(value) else None


def _producer(tensor):
    """``(operation, node)`` that computed a KerasTensor, or None."""
    history = _compat.keras_history(tensor)
    if history is None:
        return None
    operation, node_index = history[0], history[1]
    nodes = _compat.inbound_nodes(operation)
    return (operation, nodes[node_index]) if node_index < len(nodes) else None


def _divided_by_six(name, args, kwargs):
    """The tensor `t` of a node computing ``t / 6`` or ``t * (1/6)`` (float32), else None."""
    if kwargs or len(args) != 2:
        return None
    sixth = np.float32(1.0 / 6.0)
    if name in ("Divide", "TrueDivide"):
        divisor = _number(args[1])
        ok = divisor is not None and divisor != 0 and np.float32(1.0 / divisor) == sixth
        return args[0] if ok and _is_tensor(args[0]) else None
    if name == "Multiply":
        for t, c in (args, args[::-1]):
            factor = _number(c)
            if _is_tensor(t) and factor is not None and np.float32(factor) == sixth:
                return t
    return None


def _is_divisor(value):
    """A Python number a division by which becomes a multiplication (TFLite has no int8 DIV)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0


def _masked(layer):
    """A layer called with a mask (after `Masking`, `Embedding(mask_zero=True)`)."""
    return any(
        _compat.node_arguments(node)[1].get("mask") is not None
        for node in _compat.inbound_nodes(layer)
    )


def _composite(layer):
    """A custom layer holding sublayers that QAT quantizes (the keras.io
    `TokenAndPositionEmbedding`): its sublayers are replaced, its `call` kept.
    Keras' own layers (Bidirectional, TimeDistributed, ...) are not: what they do
    with their sublayers is more than calling them."""
    if not _compat.child_layers(layer) or surgery.is_graph_model(layer):
        return False
    if type(layer).__module__.startswith("keras."):
        return False
    return any(role not in (None, "pass") for _, role in _walk_subclassed(layer))


def _plain_call(layer):
    """Whether every call of a transformer layer passes no mask, attention mask or scores flag."""
    for node in _compat.inbound_nodes(layer):
        kwargs = _compat.node_arguments(node)[1]
        if any(kwargs.get(k) for k in ("mask", *registry.ATTENTION_EXTRAS)):
            return False
    return True


def _checked(wrapper):
    """Marks a wrapper whose clustered kernels `_resolved_config` checked (before folding)."""
    wrapper._clusters_checked = True
    return wrapper


def _walk_subclassed(obj, prefix=""):
    """Yields ``(Slot, role)`` over the layers a subclassed model holds, at any depth."""
    for slot in surgery.slots(obj, prefix):
        layer = slot.layer
        if isinstance(layer, (QuantizeWrapper, ActivationQuantizer)):
            continue
        role = registry.role(layer)
        if role is None and surgery.is_graph_model(layer):
            role = "graph"
        if role is None and _compat.child_layers(layer):
            yield from _walk_subclassed(layer, f"{slot.path}/")
            if not surgery.own_variables(layer):
                continue
        yield slot, role


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
    names = [slot.layer.name for slot, _ in slots]
    for slot, role in slots:
        if role == "graph":
            names += [layer.name for layer in surgery.all_layers(slot.layer)]
    _check_names(names, layer_configs)
    resolved, sub_models, unsupported, opted_out, unbuilt, n_weighted = {}, {}, [], [], [], 0
    for slot, role in slots:
        path, layer = slot.path, slot.layer
        config = layer_configs.get(layer.name) or QuantizeConfig()
        if config.mode == "float":
            opted_out.append(layer.name)
            continue
        if role is None:
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
        elif role == "recurrent":
            n_weighted += 1
            config = _recurrent_config(layer, config, preserve[0])
        elif role in ("attention", "embedding"):
            n_weighted += 1
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
        return surgery.copy_model(model)
    except ValueError as error:
        raise ValueError(
            "A subclassed model must be re-creatable from get_config() (and built) to be "
            f"copied for QAT: {error}. Received: model={model.name}"
        ) from error


@register
class QuantizedModel(surgery.SwappedModel):
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
        super().__init__(model, **kwargs)
        self.layer_configs = dict(layer_configs or {})
        slots = {slot.path: (slot, role) for slot, role in _walk_subclassed(model)}
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

    def get_config(self):
        config = {
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
    def from_config(cls, config, custom_objects=None):
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


@register
class QuantizedComposite(surgery.SwappedLayer):
    """A custom layer of a Functional model whose sublayers QAT quantizes.

    Made by `quantize_model` for layers such as keras.io's
    `TokenAndPositionEmbedding` or a ViT `PatchEncoder`: their own `call`
    runs unchanged on quantized `Embedding`/`Dense`/... sublayers; the ops of
    that `call` between them (the ADD of token and position embeddings) run
    in int8 when their inputs and the next layer's input range are.

    Args:
        layer: the custom layer (used, not copied).
        layer_configs: dict mapping attribute paths inside `layer` to the
            `QuantizeConfig` of the sublayer there.
        **kwargs: base `Layer` arguments.
    """

    tfc_fake_quant = True

    def __init__(self, layer, layer_configs, **kwargs):
        kwargs.pop("paths", None)  # the keys of layer_configs
        self.layer_configs = {
            path: c if isinstance(c, QuantizeConfig) else keras.saving.deserialize_keras_object(c)
            for path, c in layer_configs.items()
        }
        super().__init__(layer, list(self.layer_configs), **kwargs)

    def replacement(self, path, layer):
        role = "graph" if surgery.is_graph_model(layer) else registry.role(layer)
        return _quantized(layer, role, self.layer_configs[path])

    def get_config(self):
        configs = {
            path: keras.saving.serialize_keras_object(c) for path, c in self.layer_configs.items()
        }
        return {**super().get_config(), "layer_configs": configs}


def _quantized(layer, role, config, cluster_shapes=None):
    """The quantized layer that stands for a layer of `role`."""
    if role == "graph":
        # A sub-model inside a custom layer (a factorized Dense's two layers): decided
        # without its weights (no sparsity masks), as loading a `.keras` file must redo it.
        return quantize_model(layer, preserve_sparsity=False)
    if role == "recurrent":
        new = QuantizedRecurrent(layer, config, quantize_inputs=True)
        new.build()
    elif role in _TRANSFORMER:
        new = _TRANSFORMER[role](layer, config, quantize_inputs=True)
        new.build()
    else:
        new = QuantizeWrapper(layer, config, quantize_inputs=True, cluster_shapes=cluster_shapes)
        new.build((layer.get_build_config() or {}).get("input_shape"))
    return new


def _replace(slot_role, config, cluster_shapes=None, sub_model_configs=None):
    slot, role = slot_role
    layer = slot.layer
    if role == "graph" and config.mode == "int8" and sub_model_configs is not None:
        graph = surgery.inline_graphs(surgery.as_functional(layer))
        by_name = {graph.layers[int(i)].name: c for i, c in sub_model_configs.items()}
        new = _GraphRewriter(graph, by_name, (True, False), True, resolved=True).run(False, False)
    elif role == "graph":
        new = quantize_model(layer) if config.mode == "int8" else layer
    else:
        new = _quantized(layer, role, config, cluster_shapes)
    surgery.set_slot(slot, new)
    return new

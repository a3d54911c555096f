"""Keras layers that hold QAT state: activation ranges and quantized wrappers."""

import weakref

import keras
from keras import ops

from tfcompress import _compat, _tracing
from tfcompress._serialization import register
from tfcompress.quantization import clusters, quantizers, registry
from tfcompress.quantization.config import QuantizeConfig, is_decay

# Tensors that are already on an int8 grid, keyed by id. A wrapper inside a
# subclassed model skips its input range when the tensor comes straight from
# another quantized layer, so TFLite gets one scale per tensor, not a requantize.
_QUANTIZED = weakref.WeakValueDictionary()


def mark_quantized(x):
    """Records that `x` is already on an int8 grid (a quantized layer's output)."""
    try:
        _QUANTIZED[id(x)] = x
    except TypeError:
        pass
    return x


def is_on_int8_grid(x):
    """Whether `x` came straight out of a quantized layer (see `mark_quantized`)."""
    return _QUANTIZED.get(id(x)) is x


def _range_source(tensor):
    """The `ActivationQuantizer` whose range a Functional graph's tensor has, or None.

    Looks through the layers and ops after which TFLite keeps the scale
    (pooling, reshapes, padding, dropout, means over 1x1).
    """
    while True:
        history = _compat.keras_history(tensor)
        if history is None:
            return None
        operation, node_index = history[0], history[1]
        if isinstance(operation, ActivationQuantizer):
            return operation
        if isinstance(operation, QuantizeWrapper):
            return getattr(operation, "output_quantizer", None)
        if isinstance(operation, keras.layers.Layer):
            keeps = registry.role(operation) == "pass" or registry.averages_single_values(operation)
        else:
            keeps = type(operation).__name__ in registry.MOVING_OPS
        nodes = _compat.inbound_nodes(operation)
        if not keeps or node_index >= len(nodes):
            return None
        tensors = list(nodes[node_index].input_tensors)
        if not tensors:
            return None
        tensor = tensors[0]


@register
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a tensor to asymmetric int8 with a learned range.

    During training the range is a moving average of the batch min/max (the
    first batch sets it); at inference the stored range is used. With
    `fixed_range` the range is constant (TFLite's int8 sigmoid/softmax/tanh need
    exact output scales).

    Args:
        ema_decay: weight of the old range in the moving average, in `[0, 1)`.
        fixed_range: optional `(min, max)` pair used instead of a learned range.
        **kwargs: base `Layer` arguments.

    Raises:
        ValueError: if `ema_decay` is outside `[0, 1)` or `fixed_range` is not an
            ordered pair of distinct numbers containing 0.

    Example:
        >>> q = ActivationQuantizer()
        >>> y = q(ops.ones((2, 3)), training=True)
        >>> float(q.max_value)
        1.0

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for Efficient
        Integer-Arithmetic-Only Inference", CVPR 2018, section 3.1.
    """

    # Marks layers with fake-quant ops for `tfc.export` (no calibration needed).
    tfc_fake_quant = True

    def __init__(self, ema_decay=0.99, fixed_range=None, **kwargs):
        # The fake-quant grid is float32 arithmetic: QAT layers compute in float32
        # under a mixed-precision policy too, and the exported graph has no casts.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not is_decay(ema_decay):
            raise ValueError(f"`ema_decay` must be in [0, 1). Received: ema_decay={ema_decay}")
        if fixed_range is not None:
            pair = _range_pair(fixed_range)
            if pair is None:
                raise ValueError(
                    "`fixed_range` must be a (min, max) pair of numbers with min <= 0 <= max "
                    f"and min < max. Received: fixed_range={fixed_range}"
                )
            fixed_range = pair
        self.ema_decay = float(ema_decay)
        self.fixed_range = fixed_range

    def build(self, input_shape=None):
        if self.fixed_range is None:
            common = dict(shape=(), trainable=False, aggregation="mean")
            self.min_value = self.add_weight(
                name="min_value", initializer=keras.initializers.Constant(-6.0), **common
            )
            self.max_value = self.add_weight(
                name="max_value", initializer=keras.initializers.Constant(6.0), **common
            )
            self.initialized = self.add_weight(name="initialized", initializer="zeros", **common)
        self.built = True

    def call(self, inputs, training=None):
        record = _tracing.recorder()
        if record is not None and self.fixed_range is None:
            record(self, ops.convert_to_numpy(inputs))  # calibration: values pass unrounded
            return inputs
        if self.fixed_range is not None:
            lo, hi = self.fixed_range
        elif training:
            lo, hi = self._update_range(inputs)
        else:
            lo, hi = self.min_value, self.max_value
        return mark_quantized(quantizers.fake_quant(inputs, lo, hi))

    def scale_and_zero_point(self):
        """The current range as TFLite stores it: float32 scale, int8 zero point (tensors)."""
        return quantizers.scale_and_zero_point(*self._range())

    def scale(self):
        """The current range's float32 scale (a tensor)."""
        lo, hi = (ops.cast(v, "float32") for v in self._range())
        return (hi - lo) / float(2**quantizers.NUM_BITS - 1)

    def _range(self):
        if self.fixed_range is not None:
            return self.fixed_range
        return self.min_value, self.max_value

    def _update_range(self, inputs):
        batch_lo, batch_hi = quantizers.batch_range(inputs)
        first = self.initialized < 0.5
        lo = ops.where(
            first, batch_lo, quantizers.moving_average(self.min_value, batch_lo, self.ema_decay)
        )
        hi = ops.where(
            first, batch_hi, quantizers.moving_average(self.max_value, batch_hi, self.ema_decay)
        )
        self.min_value.assign(lo)
        self.max_value.assign(hi)
        self.initialized.assign(1.0)
        return lo, hi

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {"ema_decay": self.ema_decay, "fixed_range": self.fixed_range}
        return {**super().get_config(), **config}


@register
class QuantizeWrapper(keras.layers.Layer):
    """Runs a Keras layer on fake-quantized int8 weights and activations.

    Weighted layers (Dense, Conv, DepthwiseConv, SeparableConv, RBM) have their
    kernels fake-quantized symmetrically (per output channel for convolutions)
    and their maths re-run on them; ReLU/ReLU6 activations stay fused (except
    after a dilated convolution, which TFLite cannot fuse); other
    activations get a range before and after them. Layers without weights
    (Add, Concatenate, activations, global average pooling) get an output range.
    Affine layers (a BatchNormalization with no kernel to fold into, Rescaling,
    Normalization) compute ``x * scale + offset`` as TFLite's int8 MUL and ADD
    do: the constants on their own int8 grids and a range after each op;
    BatchNorm's moving statistics stay frozen, `gamma` and `beta` train.

    Where the range of the input is known (the quantizer before it in a
    Functional graph, through pooling/reshape-like layers, or the wrapper's
    own input range), the wrapper also computes what TFLite's integer kernels
    compute at inference: the bias is rounded to the int32 grid of scale
    ``input scale x kernel scale``, and a hard-swish activation follows the
    fixed-point arithmetic of the int8 HARD_SWISH kernel (see
    `quantizers.hard_swish_int8`). Both are sub-step differences, but a deep
    network amplifies them. Training keeps the float maths (cheaper, and the
    ranges move anyway); while `tfc.export.to_tflite` traces the model they
    are left out too: the converter does that arithmetic itself.

    The wrapped layer keeps its own float variables: they are what training
    updates (clustered kernels excepted, see below). Under a mixed-precision
    policy the wrapper and the wrapped layer compute in float32 (the int8 grid
    is simulated in float32, and the exported graph then has no casts between
    fake-quant ops).

    With `quantize_config.preserve_clusters` each kernel is computed as
    `centroids[indices]`: the wrapper holds trainable `{kernel}_centroids`
    (one row, or one per output channel) and non-trainable int32
    `{kernel}_cluster_indices` fixed when it is built, and the wrapped layer's
    own kernel is frozen (it keeps its pre-QAT values; `float_kernels()` gives
    the trained ones).

    Args:
        layer: the Keras layer to wrap (it is used, not copied).
        quantize_config: a `QuantizeConfig`; `None` uses the defaults.
        quantize_inputs: also give the inputs a range. Needed where the
            producer of an input is unknown (subclassed models); a wrapper skips
            it for a tensor that comes straight from another quantized layer.
        cluster_shapes: shapes of the centroids, one per kernel; `None`
            derives them from the kernels when built (it is stored in the
            config so that a `.keras` file re-creates the same variables).
        fused_activation: `"relu"` or `"relu6"` applied after an affine layer
            (below) before its output range, as TFLite fuses it into the ADD/MUL.
        output_range: False leaves the output without a range of its own: its
            only reader (a Concatenate) gives the range, as TFLite writes such
            an output straight onto the CONCATENATION's grid.
        **kwargs: base `Layer` arguments.

    Raises:
        ValueError: if `layer` is not a layer QAT can quantize, or (when built)
            `preserve_clusters` is set and a kernel is not clustered.

    Example:
        >>> q = QuantizeWrapper(keras.layers.Dense(4, activation="relu"))
        >>> tuple(q(ops.ones((2, 3)), training=True).shape)
        (2, 4)

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for Efficient
        Integer-Arithmetic-Only Inference", CVPR 2018.
    """

    tfc_fake_quant = True

    def __init__(
        self,
        layer,
        quantize_config=None,
        quantize_inputs=False,
        cluster_shapes=None,
        fused_activation=None,
        output_range=True,
        **kwargs,
    ):
        if not isinstance(layer, keras.layers.Layer) or registry.role(layer) not in (
            "weighted",
            "merge",
            "activation",
            "ranged",
            "affine",
        ):
            raise ValueError(f"QuantizeWrapper cannot quantize this layer. Received: layer={layer}")
        if quantize_config is not None and not isinstance(quantize_config, QuantizeConfig):
            raise ValueError(
                "`quantize_config` must be a QuantizeConfig. "
                f"Received: quantize_config={quantize_config}"
            )
        kwargs.setdefault("name", f"quant_{layer.name}")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if layer.dtype_policy.name != "float32":
            layer.dtype_policy = "float32"
        self.layer = layer
        self.quantize_config = quantize_config or QuantizeConfig()
        self.quantize_inputs = bool(quantize_inputs)
        self.fused_activation = fused_activation
        self.output_range = bool(output_range)
        self.cluster_shapes = (
            None if cluster_shapes is None else [tuple(int(d) for d in s) for s in cluster_shapes]
        )
        self.kind = registry.weighted_kind(layer)
        if self.kind is registry.DENSE and self.per_channel:
            self.kind = registry.DENSE_PER_CHANNEL

    @property
    def per_channel(self):
        granularity = self.quantize_config.weight_granularity
        if granularity is None:
            return self.kind is not None and self.kind.per_channel
        return granularity == "per_channel"

    @property
    def preserve_clusters(self):
        return self.kind is not None and bool(self.quantize_config.preserve_clusters)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        decay = self.quantize_config.ema_decay
        n_inputs = len(input_shape) if registry.role(self.layer) == "merge" else 1
        self.input_quantizers = (
            [self._quantizer(f"input_{i}", decay) for i in range(n_inputs)]
            if self.quantize_inputs
            else []
        )
        pre = self.kind is not None and not registry.fuses_activation(self.layer)
        self.pre_activation_quantizer = self._quantizer("pre_activation", decay) if pre else None
        # An affine layer runs as MUL then ADD in TFLite: the product has a range.
        affine = registry.role(self.layer) == "affine" and all(
            part is not None for part in registry.affine_parts(self.layer, len(input_shape))
        )
        self.intermediate_quantizer = (
            self._quantizer("intermediate", decay)
            if (self.kind is not None and self.kind.separable) or affine
            else None
        )
        fixed = registry.output_range(self.layer)
        plain = self.kind is not None or registry.role(self.layer) in ("merge", "affine")
        if not self.output_range and (fixed is not None or not plain):
            raise ValueError(
                "`output_range=False` is for a layer whose output TFLite writes straight onto "
                "its consumer's grid (a kernel, merge or affine layer with no fixed output "
                f"range). Received: output_range=False for layer {self.layer.name!r}"
            )
        self.output_quantizer = (
            self._quantizer("output", decay, fixed) if self.output_range else None
        )
        for attr in self.kind.unused if self.kind is not None else ():
            getattr(self.layer, attr).trainable = False
        self.kernel_masks = []
        if self.kind is not None and self.quantize_config.preserve_sparsity:
            for attr in self.kind.kernels:
                kernel = getattr(self.layer, attr)
                self.kernel_masks.append(
                    self.add_weight(
                        name=f"{attr}_mask",
                        shape=tuple(kernel.shape),
                        initializer=lambda shape, dtype, k=kernel: ops.cast(
                            ops.not_equal(k, 0.0), dtype
                        ),
                        trainable=False,
                    )
                )
        self._build_clusters()
        self.built = True

    def _depthwise(self, i):
        return self.kind.depthwise or (self.kind.separable and i == 0)

    def _build_clusters(self):
        self.kernel_centroids, self.kernel_indices = [], []
        if not self.preserve_clusters:
            return
        layouts = None
        if self.cluster_shapes is None:
            # `quantize_model` checked the kernels before folding BatchNorm into them
            check = not getattr(self, "_clusters_checked", False)
            layouts = [
                clusters.cluster_layout(
                    getattr(self.layer, attr).numpy(),
                    self._depthwise(i),
                    self.layer.name,
                    attr,
                    check=check,
                )
                for i, attr in enumerate(self.kind.kernels)
            ]
            self.cluster_shapes = [centroids.shape for centroids, _ in layouts]
        for i, attr in enumerate(self.kind.kernels):
            kernel = getattr(self.layer, attr)
            kernel.trainable = False  # trained through the centroids
            init = [None, None] if layouts is None else layouts[i]
            self.kernel_centroids.append(
                self.add_weight(
                    name=f"{attr}_centroids",
                    shape=self.cluster_shapes[i],
                    initializer=_init_from(init[0]),
                    trainable=True,
                )
            )
            self.kernel_indices.append(
                self.add_weight(
                    name=f"{attr}_cluster_indices",
                    shape=tuple(kernel.shape),
                    initializer=_init_from(init[1]),
                    dtype="int32",
                    trainable=False,
                )
            )

    def _quantizer(self, role, decay, fixed_range=None):
        quantizer = ActivationQuantizer(
            ema_decay=decay, fixed_range=fixed_range, name=f"{self.name}_{role}"
        )
        quantizer.build()
        return quantizer

    def float_kernels(self):
        """The float kernels before fake quantization (clustered, masked), layer-shaped."""
        out = []
        for i, attr in enumerate(self.kind.kernels):
            if self.kernel_centroids:
                flat = ops.reshape(self.kernel_centroids[i], (-1,))
                w = ops.take(flat, self.kernel_indices[i])  # gradient: sum over members
            else:
                w = getattr(self.layer, attr)
            if self.kernel_masks:
                w = w * self.kernel_masks[i]
            out.append(w)
        return out

    def quantized_kernels(self):
        """The kernels as used in the forward pass (masked, fake-quantized)."""
        out = []
        for i, w in enumerate(self.float_kernels()):
            if self.kind.kernel_view is not None:
                w = self.kind.kernel_view(w)
            if self._depthwise(i):
                if self.per_channel:
                    out.append(quantizers.quantize_depthwise_kernel(w))
                    continue
            out.append(quantizers.quantize_weight(w, per_channel=self.per_channel))
        return out

    def call(self, inputs, training=None, **kwargs):
        # kwargs: a custom layer's own call arguments (keras_hub's PositionEmbedding
        # takes start_index=), passed on to the call that runs it.
        if kwargs and self.kind is not None and not self.kind.custom:
            raise ValueError(
                f"{type(self.layer).__name__} takes no call arguments but the input. "
                f"Received: {sorted(kwargs)}"
            )
        source = None  # the quantizer whose range the (first) input has, when known
        if self.input_quantizers:
            inputs, source = self._quantize_inputs(inputs, training)
        # Inference follows TFLite's integer arithmetic where the input's scale
        # is known. Training keeps the float maths (a fraction of a step apart,
        # and cheaper), and so does export: the converter does that arithmetic.
        integer = not training and not _tracing.exporting() and _tracing.recorder() is None
        if integer and source is None and self._uses_input_scale():
            source = self._graph_input_range()
        if not integer:
            source = None
        if self.kind is None and registry.role(self.layer) == "affine":
            return self._affine(inputs, training)
        if self.kind is None:
            if _is_swish(registry.activation_name(self.layer)):
                y = _swish(inputs)
            else:
                y = self.layer(inputs, training=training, **kwargs)
            if self.output_quantizer is None:
                return y
            out = self.output_quantizer(y, training=training)
            if source is not None and registry.activation_name(self.layer) == "hard_silu":
                # TFLite's HARD_SWISH rounds a few values per layer the other way.
                in_range = source.scale_and_zero_point()
                out_range = self.output_quantizer.scale_and_zero_point()
                exact = quantizers.hard_swish_int8(inputs, *in_range, *out_range)
                out = mark_quantized(out + ops.stop_gradient(exact - out))
            return out
        mid = self.intermediate_quantizer

        def mid_fn(t):
            return mid(t, training=training)

        kernels = self.quantized_kernels()
        y = self.kind.forward(self.layer, inputs, kernels, mid_fn, **kwargs)
        if self.kind.separable and integer:
            source = mid  # the pointwise part's input
        y = self._round_bias(y, source)
        if self.pre_activation_quantizer is not None:
            y = self.pre_activation_quantizer(y, training=training)
        if _is_swish(registry.activation_name(self.layer)):
            y = _swish(y)
        else:
            y = registry.activation_fn(self.layer)(y)
        return self._output(y, training)

    def _output(self, y, training):
        if self.output_quantizer is None:
            return y  # its consumer (a Concatenate) gives the range
        return self.output_quantizer(y, training=training)

    def _affine(self, x, training):
        """``x * scale + offset`` as TFLite's int8 MUL and ADD run it: constants on
        their own int8 grids, a range after each op (the ADD's fused with a
        following ReLU/ReLU6)."""
        scale, offset = registry.affine_parts(self.layer, len(x.shape))
        y = x
        if scale is not None:
            y = y * _constant_on_grid(scale)
            if offset is not None:
                y = self.intermediate_quantizer(y, training=training)
        if offset is not None:
            y = y + _constant_on_grid(offset)
        if self.fused_activation == "relu":
            y = ops.relu(y)
        elif self.fused_activation == "relu6":
            y = ops.relu6(y)
        return self._output(y, training)

    def _uses_input_scale(self):
        if self.kind is None:
            return registry.activation_name(self.layer) == "hard_silu"
        return not self.kind.separable and getattr(self.layer, "bias", None) is not None

    def _graph_input_range(self):
        """The quantizer that gave this wrapper's input its range in a Functional graph.

        Calls on tensors of unknown range (a sub-model cut at this layer's input
        calls it on a fresh Input) are ignored. None outside a graph, or when
        the calls of a shared wrapper see different ranges.
        """
        sources = []
        for node in _compat.inbound_nodes(self):
            tensors = list(node.input_tensors)
            source = _range_source(tensors[0]) if tensors else None
            if source is not None and all(source is not s for s in sources):
                sources.append(source)
        return sources[0] if len(sources) == 1 else None

    def _round_bias(self, y, source):
        """Moves the bias onto TFLite's int32 grid (input scale x kernel scale).

        The forward pass keeps the float bias for gradients; the difference
        to the rounded one is added as a constant.
        """
        bias = getattr(self.layer, "bias", None)
        if source is None or bias is None or self.kind is registry.RBM:
            return y
        last = len(self.kind.kernels) - 1
        kernel_scale = self._kernel_scale(last, self.float_kernels()[last])
        rounded = quantizers.quantize_bias(bias, source.scale(), kernel_scale)
        return registry.add_bias(self.layer, y, ops.stop_gradient(rounded - bias))

    def _kernel_scale(self, i, w):
        """The scale(s) of the i-th kernel's int8 grid, one per output channel or one."""
        if self.kind.kernel_view is not None:
            w = self.kind.kernel_view(w)
        if self._depthwise(i) and self.per_channel:
            shape = tuple(w.shape)
            w = ops.reshape(w, shape[:-2] + (shape[-2] * shape[-1],))
            return quantizers.weight_scale(w, per_channel=True)
        return quantizers.weight_scale(w, per_channel=self.per_channel)

    def _quantize_inputs(self, inputs, training):
        """The inputs on their int8 grids, and the quantizer of the first one (if applied)."""
        single = len(self.input_quantizers) == 1 and not isinstance(inputs, (list, tuple))
        items = [inputs] if single else list(inputs)
        applied = [not is_on_int8_grid(x) for x in items]
        items = [
            q(x, training=training) if apply else x
            for x, q, apply in zip(items, self.input_quantizers, applied)
        ]
        source = self.input_quantizers[0] if applied and applied[0] else None
        return (items[0] if single else items), source

    def compute_output_spec(self, *args, **kwargs):
        # The wrapped layer's own spec: a custom layer may have no compute_output_shape.
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self):
        config = {
            "layer": keras.saving.serialize_keras_object(self.layer),
            "quantize_config": keras.saving.serialize_keras_object(self.quantize_config),
            "quantize_inputs": self.quantize_inputs,
        }
        if self.fused_activation is not None:
            config["fused_activation"] = self.fused_activation
        if not self.output_range:
            config["output_range"] = False
        if self.cluster_shapes is not None:
            config["cluster_shapes"] = [list(shape) for shape in self.cluster_shapes]
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config):
        return cls(**wrapper_arguments(config))


class RangedLayer(keras.layers.Layer):
    """The base of quantized layers that run a wrapped layer's ops themselves.

    Attention, layer norm, embedding and recurrent layers are not a kernel
    plus an output: their subclasses compute the ops the TFLite file runs,
    each on the range of its role in `self.ranges` (made by `build_ranges`).
    The wrapped layer keeps its float variables; training updates them.

    Args:
        layer: the wrapped layer (used, not copied).
        quantize_config: a `QuantizeConfig` (its `ema_decay` sets how fast
            the ranges move); `None` uses the defaults.
        quantize_inputs: give the inputs a range unless they come straight
            from another quantized layer (subclassed models, where the
            producer is unknown).
        **kwargs: base `Layer` arguments.
    """

    tfc_fake_quant = True

    def __init__(self, layer, quantize_config=None, quantize_inputs=False, **kwargs):
        kwargs.setdefault("name", f"quant_{layer.name}")
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.layer = layer
        self.quantize_config = quantize_config or QuantizeConfig()
        self.quantize_inputs = bool(quantize_inputs)

    def build_ranges(self, roles):
        """One `ActivationQuantizer` per role, in `self.ranges`."""
        self.ranges = {}
        for role in roles:
            quantizer = ActivationQuantizer(
                ema_decay=self.quantize_config.ema_decay, name=f"{self.name}_{role}"
            )
            quantizer.build()
            self.ranges[role] = quantizer

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = {
            "layer": keras.saving.serialize_keras_object(self.layer),
            "quantize_config": keras.saving.serialize_keras_object(self.quantize_config),
            "quantize_inputs": self.quantize_inputs,
        }
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config):
        return cls(**wrapper_arguments(config))


def wrapper_arguments(config):
    """A wrapper's config with its wrapped layer and `QuantizeConfig` deserialized."""
    config = dict(config)
    config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
    config["quantize_config"] = keras.saving.deserialize_keras_object(config["quantize_config"])
    return config


def _is_swish(name):
    return name in ("silu", "swish")


def _swish(x):
    """``x * sigmoid(x)`` as TFLite runs it in int8: LOGISTIC onto its fixed
    1/256 grid, then MUL."""
    gate = quantizers.fake_quant(ops.sigmoid(x), *quantizers.FIXED_OUTPUT_RANGES["sigmoid"])
    return x * gate


def _constant_on_grid(value):
    """A constant operand on the asymmetric int8 grid of its own range (with 0),
    as the converter stores it."""
    value = ops.cast(value, "float32")
    lo = ops.minimum(ops.min(value), 0.0)
    hi = ops.maximum(ops.max(value), 0.0)
    hi = ops.maximum(hi, lo + 1e-8)
    return quantizers.fake_quant(value, lo, hi)


def _range_pair(value):
    """`value` as a float `(min, max)` with ``min <= 0 <= max``, ``min < max``; else None."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (lo, hi) if lo <= 0.0 <= hi and lo < hi else None


def _init_from(values):
    if values is None:
        return "zeros"  # replaced by the stored values when a file is loaded
    return lambda shape, dtype: ops.cast(values, dtype)

"""Which Keras layers QAT knows, and how each computes with quantized kernels.

Four roles:
- weighted (Dense, Conv1D/2D, DepthwiseConv1D/2D, SeparableConv1D/2D, RBM):
  kernels are fake-quantized and the layer's maths is re-run on them (1-D
  convolutions explicitly as 2-D ones, the form TFLite runs them in);
- computing layers without weights (Add, Concatenate, activations, ...): their
  output gets its own activation range;
- pass-through layers (pooling, Reshape, Flatten, Dropout, ...): TFLite keeps
  the input's scale on their output, so they need no range of their own;
- anything else is unsupported and stays float (Conv3D too: TFLite has no
  int8 CONV_3D kernel).
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from tfcompress import _compat, layers_registry
from tfcompress.quantization import quantizers


@dataclasses.dataclass(frozen=True)
class Kind:
    """How a weighted layer computes from its (fake-quantized) kernels.

    Attributes:
        name: short name.
        kernels: attribute names of the kernels to fake-quantize.
        per_channel: default weight granularity.
        forward: ``forward(layer, x, kernels, mid)`` -> pre-activation output;
            `mid` fake-quantizes an intermediate tensor (separable convs).
        foldable: a following BatchNormalization can be folded into it.
        depthwise: the kernel is ``(..., in_channels, depth_multiplier)``.
        separable: the first kernel is depthwise, the second pointwise, with
            an int8 range on the tensor between them.
        kernel_view: optional reshape applied to the kernel before it is
            fake-quantized (the form the converter must see).
        unused: variables of the layer the forward pass does not use (frozen
            during QAT so optimizers do not warn about missing gradients).
        custom: the forward pass is the layer's own `call` (which applies its
            activation), run on the fake-quantized kernels.
    """

    name: str
    kernels: tuple
    per_channel: bool
    forward: object
    foldable: bool = True
    depthwise: bool = False
    separable: bool = False
    kernel_view: object = None
    unused: tuple = ()
    custom: bool = False


def add_bias(layer, y, bias):
    """`y + bias` on the layer's channel axis (`bias` None: `y` unchanged)."""
    if bias is None:
        return y
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        bias = ops.reshape(bias, (1, -1) + (1,) * (len(y.shape) - 2))
    return y + bias


def _dense_forward(layer, x, kernels, mid):
    return add_bias(layer, flat_matmul(x, kernels[0]), layer.bias)


def flat_matmul(x, kernel):
    """``x @ kernel`` over the last axis of `x`, as one FULLY_CONNECTED.

    On inputs of rank 3 and more, TensorFlow's matmul is a tensordot that
    computes its reshape from the input's shape at run time; the converter
    leaves the FULLY_CONNECTED after such a reshape in float. Flattened to
    2-D with the known dimensions, it runs in int8 and the bias fuses into it.
    """
    inner = tuple(x.shape[1:-1])
    if not inner or any(d is None for d in inner):
        return ops.matmul(x, kernel)
    y = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), kernel)
    return ops.reshape(y, (-1, *inner, kernel.shape[-1]))


def _dense_as_conv_view(kernel):
    return ops.reshape(kernel, (1, 1) + tuple(kernel.shape))


def _dense_as_conv_forward(layer, x, kernels, mid):
    # The converter rejects a per-channel fake-quant Dense kernel (it transposes
    # the quantized constant for FULLY_CONNECTED); a 1x1 CONV_2D takes it as is.
    units = kernels[0].shape[-1]
    y = ops.conv(ops.reshape(x, (-1, 1, 1, x.shape[-1])), kernels[0])
    y = ops.reshape(y, (-1,) + tuple(x.shape[1:-1]) + (units,))
    return add_bias(layer, y, layer.bias)


def _conv_forward(layer, x, kernels, mid):
    return add_bias(layer, layer.convolution_op(x, kernels[0]), layer.bias)


def _conv1d_view(kernel):
    return ops.expand_dims(kernel, 0)


def _as_2d(layer, x):
    """A 1-D conv input as a 2-D one of height 1: ``(x, height_axis, padding)``.

    A 1-D conv lowers to its 2-D op through an ExpandDims of the kernel, which
    the converter cannot apply to a per-channel quantized constant; running the
    2-D op explicitly puts the fake-quant on the 4-D kernel itself.
    """
    axis = 1 if layer.data_format == "channels_last" else 2
    padding = layer.padding
    if padding == "causal":
        pad = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
        widths = [[0, 0], [pad, 0], [0, 0]]
        if layer.data_format == "channels_first":
            widths = [[0, 0], [0, 0], [pad, 0]]
        x, padding = ops.pad(x, widths), "valid"
    return ops.expand_dims(x, axis), axis, padding


def _conv1d_forward(layer, x, kernels, mid):
    x, axis, padding = _as_2d(layer, x)
    y = ops.conv(
        x,
        kernels[0],
        strides=(1, layer.strides[0]),
        padding=padding,
        dilation_rate=(1, layer.dilation_rate[0]),
        data_format=layer.data_format,
    )
    return add_bias(layer, ops.squeeze(y, axis), layer.bias)


def _depthwise1d_as_2d(layer, x, kernel):
    """The depthwise part of a 1-D (separable) depthwise conv, as a 2-D conv."""
    x, axis, padding = _as_2d(layer, x)
    # Equal strides: TensorFlow's depthwise kernel without oneDNN (AMD and ARM
    # CPUs) refuses (1, s); the height is 1, so stepping it by s changes nothing.
    y = ops.depthwise_conv(
        x,
        kernel,
        strides=(layer.strides[0],) * 2,
        padding=padding,
        data_format=layer.data_format,
        dilation_rate=(1, layer.dilation_rate[0]),
    )
    return y, axis


def _depthwise1d_forward(layer, x, kernels, mid):
    y, axis = _depthwise1d_as_2d(layer, x, kernels[0])
    return add_bias(layer, ops.squeeze(y, axis), layer.bias)


def _separable1d_forward(layer, x, kernels, mid):
    y, axis = _depthwise1d_as_2d(layer, x, kernels[0])
    y = mid(y)
    y = ops.conv(y, kernels[1], strides=1, padding="valid", data_format=layer.data_format)
    return add_bias(layer, ops.squeeze(y, axis), layer.bias)


def _depthwise_forward(layer, x, kernels, mid):
    y = ops.depthwise_conv(
        x,
        kernels[0],
        strides=layer.strides,
        padding=layer.padding,
        data_format=layer.data_format,
        dilation_rate=layer.dilation_rate,
    )
    return add_bias(layer, y, layer.bias)


def _separable_forward(layer, x, kernels, mid):
    # TFLite runs a separable conv as DEPTHWISE_CONV_2D then a 1x1 CONV_2D; the
    # tensor between them needs its own int8 range.
    y = ops.depthwise_conv(
        x,
        kernels[0],
        strides=layer.strides,
        padding=layer.padding,
        data_format=layer.data_format,
        dilation_rate=layer.dilation_rate,
    )
    y = mid(y)
    y = ops.conv(y, kernels[1], strides=1, padding="valid", data_format=layer.data_format)
    return add_bias(layer, y, layer.bias)


def _rbm_forward(layer, x, kernels, mid):
    return ops.matmul(x, kernels[0]) + layer.hidden_bias


DENSE = Kind("dense", ("kernel",), False, _dense_forward)
DENSE_PER_CHANNEL = Kind(
    "dense_per_channel", ("kernel",), True, _dense_as_conv_forward, kernel_view=_dense_as_conv_view
)
CONV = Kind("conv", ("kernel",), True, _conv_forward)
CONV1D = Kind("conv1d", ("kernel",), True, _conv1d_forward, kernel_view=_conv1d_view)
DEPTHWISE = Kind("depthwise", ("kernel",), True, _depthwise_forward, depthwise=True)
DEPTHWISE1D = Kind(
    "depthwise1d",
    ("kernel",),
    True,
    _depthwise1d_forward,
    depthwise=True,
    kernel_view=_conv1d_view,
)
SEPARABLE = Kind(
    "separable",
    ("depthwise_kernel", "pointwise_kernel"),
    True,
    _separable_forward,
    separable=True,
)
SEPARABLE1D = Kind(
    "separable1d",
    ("depthwise_kernel", "pointwise_kernel"),
    True,
    _separable1d_forward,
    separable=True,
    kernel_view=_conv1d_view,
)
RBM = Kind("rbm", ("kernel",), False, _rbm_forward, foldable=False, unused=("visible_bias",))

_WEIGHTED = (
    ((keras.layers.Dense,), DENSE),
    ((keras.layers.Conv1D,), CONV1D),
    ((keras.layers.Conv2D,), CONV),
    ((keras.layers.DepthwiseConv1D,), DEPTHWISE1D),
    ((keras.layers.DepthwiseConv2D,), DEPTHWISE),
    ((keras.layers.SeparableConv1D,), SEPARABLE1D),
    ((keras.layers.SeparableConv2D,), SEPARABLE),
)

MERGE_LAYERS = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.Concatenate,
)

ACTIVATION_LAYERS = (
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.Softmax,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
)

PASS_THROUGH_LAYERS = (
    keras.layers.InputLayer,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.UpSampling2D,
    keras.layers.Identity,
)

# Layers computing `x * scale + offset` at inference (per channel or scalar):
# TFLite runs them as int8 MUL and ADD with constant operands. ConvNeXt's
# `LayerScale` is `x * gamma`.
LAYER_SCALE = _compat.convnext_layer_scale()
AFFINE_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.Rescaling,
    keras.layers.Normalization,
    LAYER_SCALE,
)

# Global average pooling lowers to TFLite MEAN, which rescales: give it a range.
RANGED_LAYERS = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
)

FUSABLE_ACTIVATIONS = ("linear", "relu", "relu6")

# Keras op nodes (by class name) that only move values: TFLite keeps the input's
# scale on their output, so they need no range of their own.
MOVING_OPS = frozenset({
    "Reshape", "GetItem", "Slice", "StridedSlice", "Squeeze", "ExpandDims", "Transpose",
    "Split", "BroadcastTo", "Tile", "Repeat", "Flip", "Roll", "Take", "TakeAlongAxis",
    "Identity", "Cast", "Max", "Min", "Amax", "Amin", "MaxPool", "Pad",
})


# Keras op nodes (by class name) that TFLite runs as ADD, SUB or MUL: a ReLU or
# ReLU6 that is the only consumer of their output is fused into that int8 op.
FUSING_OPS = frozenset({"Add", "Subtract", "Multiply"})

# Merge layers TFLite runs as ADD, SUB or MUL (two inputs), fusing a ReLU/ReLU6.
FUSING_MERGE_LAYERS = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply)


def averages_single_values(layer):
    """Whether a global average pooling layer (keepdims) only ever sees 1x1 inputs.

    The mean of one value is that value: the converter removes such a MEAN,
    and the range after it, so TFLite keeps the input's scale and the layer
    must pass its input through like Reshape (and a ReLU after it fuses into
    the op before it).
    """
    if not isinstance(layer, RANGED_LAYERS) or not getattr(layer, "keepdims", False):
        return False  # without keepdims the MEAN stays (and keeps its range)
    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    shapes = []
    for node in _compat.inbound_nodes(layer):
        tensors = list(node.input_tensors)
        if len(tensors) != 1:
            return False
        shapes.append(tuple(tensors[0].shape))
    if not shapes:
        return False
    for shape in shapes:
        spatial = shape[2:] if channels_first else shape[1:-1]
        if not spatial or any(d != 1 for d in spatial):
            return False
    return True


def fused_relu_name(operation):
    """The name ("relu" or "relu6") of a plain ReLU/ReLU6 layer or Keras op node.

    TFLite fuses such an activation into the op producing its input. Anything
    else (leaky, thresholded, other caps, other activations) gives None.
    """
    if isinstance(operation, keras.layers.Layer):
        if role(operation) != "activation":
            return None
        name = activation_name(operation)
        return name if name in ("relu", "relu6") else None
    kind = type(operation).__name__
    if kind in ("Relu", "Relu6"):
        return kind.lower()
    if kind == "ReLU":  # keras.activations.relu on a KerasTensor
        plain = not getattr(operation, "negative_slope", 0.0) and not getattr(
            operation, "threshold", 0.0
        )
        max_value = getattr(operation, "max_value", None)
        if plain and max_value is None:
            return "relu"
        if plain and max_value == 6:
            return "relu6"
    return None


def _is_rbm(layer):
    from tfcompress import rbm

    rbm_class = getattr(rbm, "RBM", None)
    return (
        isinstance(rbm_class, type)
        and isinstance(layer, rbm_class)
        and hasattr(layer, "kernel")
        and hasattr(layer, "hidden_bias")
    )


def _substituted_forward(layer, x, kernels, mid, **kwargs):
    """Runs a registered custom layer's own `call` on its fake-quantized kernels."""
    names = layers_registry.lookup(layer).kernels
    mapping = [
        (layers_registry.variable(layer, k.name), q) for k, q in zip(names, kernels, strict=True)
    ]
    with keras.StatelessScope(state_mapping=mapping, initialize_variables=False):
        return layer.call(x, **kwargs)


def _custom_kind(spec):
    """The `Kind` of a custom layer registered with kernels (`tfc.register_layer`)."""
    names = tuple(k.name for k in spec.kernels)
    return Kind("custom", names, False, _substituted_forward, foldable=False, custom=True)


def weighted_kind(layer):
    """The `Kind` of a weighted layer QAT can quantize, else None.

    The shared subclass rule applies (`tfc.layers_registry`): a subclass that
    overrides `call` computes something else, so it is not ours to redo.
    """
    cls = layers_registry.registered_class(layer)
    if cls is None:
        return None
    for classes, kind in _WEIGHTED:
        if issubclass(cls, classes):
            return kind
    spec = layers_registry.lookup(layer)
    if not (spec.quantize and spec.kernels):
        return None
    return RBM if _is_rbm(layer) else _custom_kind(spec)


RECURRENT = ("LSTM", "GRU", "SimpleRNN")


def recurrent_directions(layer):
    """The recurrent layers a layer runs: a Bidirectional's forward and backward, else itself."""
    if isinstance(layer, keras.layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    return [layer]


def quantizable_recurrent(layer):
    """Whether `QuantizedRecurrent` computes `layer` exactly (else it stays float).

    A plain LSTM, GRU (`reset_after=True`, Keras' default) or SimpleRNN with
    its default activations (tanh, and sigmoid gates), returning its output
    only, not stateful; or a `Bidirectional` of two such layers merging by
    concatenation or sum.
    """
    if type(layer) is keras.layers.Bidirectional:
        return layer.merge_mode in ("concat", "sum") and all(
            quantizable_recurrent(rnn) for rnn in recurrent_directions(layer)
        )
    kind = type(layer).__name__
    if kind not in RECURRENT or type(layer) is not getattr(keras.layers, kind):
        return False
    cell = layer.cell
    if layer.return_state or layer.stateful or not cell.built:
        return False
    if getattr(cell.activation, "__name__", None) != "tanh":
        return False
    gates = getattr(getattr(cell, "recurrent_activation", None), "__name__", None)
    if kind != "SimpleRNN" and gates != "sigmoid":
        return False
    return kind != "GRU" or cell.reset_after


# Call arguments a quantized attention layer does not take (the layer stays float).
ATTENTION_EXTRAS = (
    "attention_mask", "use_causal_mask", "return_attention_scores",
    "query_mask", "value_mask", "key_mask",
)  # fmt: skip


def quantizable_attention(layer):
    """Whether `QuantizedAttention` computes `layer` exactly (else it stays float).

    A built `keras.layers.MultiHeadAttention` (not a subclass) on sequences
    (``(batch, steps, features)`` inputs, attention over the steps), whose
    projections are Keras' own or their `tfc.factorization.low_rank` factors.
    """
    if type(layer) is not keras.layers.MultiHeadAttention or not layer.built:
        return False
    projections = (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)
    return all(attention_projection(p) is not None for p in projections)


# The equations of attention's projections (query/key/value, output), whole and as
# the two factors `tfc.factorization.low_rank` makes of them.
_PROJECTIONS = (
    ("abc,cde->abde",), ("abc,cz->abz", "abz,zde->abde"),
    ("abcd,cde->abe",), ("abcd,cdz->abz", "abz,ze->abe"),
)  # fmt: skip


def attention_projection(dense):
    """The EinsumDense layers, in order, of one projection of a MultiHeadAttention, or None."""
    parts = list(dense.layers) if isinstance(dense, keras.Sequential) else [dense]
    if not all(type(p) is keras.layers.EinsumDense for p in parts):
        return None
    if tuple(p.equation for p in parts) not in _PROJECTIONS:
        return None
    linear = all(getattr(p.activation, "__name__", None) == "linear" for p in parts)
    return parts if linear and all(p.bias is None for p in parts[:-1]) else None


def quantizable_layer_norm(layer, rank=None):
    """Whether `QuantizedLayerNorm` computes `layer`: a LayerNormalization over the
    last axis of its inputs (of `rank` dimensions, when an axis is given as positive)."""
    if type(layer) is not keras.layers.LayerNormalization or layer.rms_scaling:
        return False
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    return len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def role(layer):
    """One of "weighted", "merge", "activation", "ranged", "affine", "recurrent",
    "attention", "layer_norm", "embedding", "pass", None."""
    if weighted_kind(layer) is not None:
        return "weighted"
    if quantizable_recurrent(layer):
        return "recurrent"
    if quantizable_attention(layer):
        return "attention"
    if quantizable_layer_norm(layer, _input_rank(layer)):
        return "layer_norm"
    if is_embedding(layer):
        return "embedding"
    if isinstance(layer, MERGE_LAYERS):
        return "merge"
    if isinstance(layer, ACTIVATION_LAYERS):
        return "activation"
    if isinstance(layer, RANGED_LAYERS):
        return "ranged"
    if isinstance(layer, PASS_THROUGH_LAYERS):
        return "pass"
    if isinstance(layer, AFFINE_LAYERS) and _plain_affine(layer):
        return "affine"
    return None


def is_embedding(layer):
    """An `Embedding`, or a subclass keeping its maths (registered `like=` it)."""
    cls = layers_registry.registered_class(layer)
    return cls is not None and issubclass(cls, keras.layers.Embedding)


def _input_rank(layer):
    """The rank of a layer's (first) input in a Functional graph, else None."""
    for node in _compat.inbound_nodes(layer):
        tensors = list(node.input_tensors)
        if tensors:
            return len(tensors[0].shape)
    return None


def _plain_affine(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
        return not getattr(layer, "renorm", False) and not getattr(layer, "synchronized", False)
    if isinstance(layer, keras.layers.Rescaling):
        return np.ndim(layer.scale) == 0 and np.ndim(layer.offset) == 0
    return True


def affine_parts(layer, rank):
    """``(scale, offset)`` with ``layer(x) == x * scale + offset`` at inference.

    Either may be None (a factor of 1, an offset of 0: no TFLite op). Per-channel
    values come shaped to broadcast against inputs of `rank` dimensions; they are
    computed from the layer's variables, so a BatchNormalization's `gamma` and
    `beta` still train (its moving statistics stay frozen).
    """
    if isinstance(layer, keras.layers.Rescaling):
        scale, offset = float(layer.scale), float(layer.offset)
        return (None if scale == 1.0 else scale), (None if offset == 0.0 else offset)
    if isinstance(layer, LAYER_SCALE):
        return ops.reshape(layer.gamma, [1] * (rank - 1) + [-1]), None
    if isinstance(layer, keras.layers.Normalization):
        std = ops.maximum(ops.sqrt(layer.variance), keras.config.epsilon())
        mean = ops.cast(layer.mean, "float32")
        if layer.invert:
            return std, mean
        return 1.0 / std, -mean / std
    axis = layer.axis if layer.axis >= 0 else rank + layer.axis
    shape = [1] * rank
    shape[axis] = -1
    inv = ops.rsqrt(ops.cast(layer.moving_variance, "float32") + layer.epsilon)
    scale = inv * layer.gamma if layer.scale else inv
    offset = -ops.cast(layer.moving_mean, "float32") * scale
    if layer.center:
        offset = offset + layer.beta
    return ops.reshape(scale, shape), ops.reshape(offset, shape)


def activation_name(layer):
    """Name of the activation a layer applies last ("linear" when none)."""
    if _is_rbm(layer):
        return "sigmoid"
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, keras.layers.ReLU):
        plain = layer.negative_slope == 0 and layer.threshold == 0
        if plain and layer.max_value is None:
            return "relu"
        if plain and layer.max_value == 6:
            return "relu6"
        return "relu_custom"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    return getattr(activation, "__name__", "custom")


def fuses_activation(layer):
    """Whether TFLite runs the layer's activation inside its int8 kernel.

    Linear, ReLU and ReLU6 fuse. A dilated convolution is the exception: it
    converts to SPACE_TO_BATCH_ND, the conv and BATCH_TO_SPACE_ND, and the
    converter cannot fuse an activation across them, so the activation's input
    needs its own range.
    """
    name = activation_name(layer)
    if name == "linear":
        return True
    dilated = any(d != 1 for d in getattr(layer, "dilation_rate", (1,)))
    return name in FUSABLE_ACTIVATIONS and not dilated


def activation_fn(layer):
    """The activation function a weighted layer applies after its bias."""
    if _is_rbm(layer):
        return keras.activations.sigmoid
    kind = weighted_kind(layer)
    if kind is not None and kind.custom:
        return keras.activations.linear  # its own call applied it
    return layer.activation or keras.activations.linear


def output_range(layer):
    """A fixed (min, max) output range TFLite requires for the layer, or None."""
    return quantizers.FIXED_OUTPUT_RANGES.get(activation_name(layer))

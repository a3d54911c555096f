"""Fake-quantization maths for TFLite's int8 scheme (Jacob et al. 2018).

A real value ``r`` is stored as an 8-bit integer ``q`` with ``r = s * (q - z)``.
Weights are symmetric (``z = 0``, integers in ``[-127, 127]``), per output channel
for convolutions; activations are asymmetric per tensor (integers in
``[-128, 127]``) with a range learned as a moving average of batch min/max.

Training simulates the rounding with TensorFlow's ``FakeQuantWithMinMaxVars``
ops: the TFLite converter recognises them, so a model trained through them
converts to integer kernels without representative data. Their gradient is the
straight-through estimator: identity inside the range, zero outside.

These are plain functions on tensors; `tfcompress.quantization.qat` holds the
Keras state (ranges, masks) and calls them.
"""

import numpy as np
import tensorflow as tf
from keras import ops

NUM_BITS = 8

# Smallest half-range given to an all-zero weight tensor: keeps the scale
# positive so the converter and the int8 kernels never divide by zero.
_MIN_RANGE = 1e-8

# Output ranges that TFLite's int8 LOGISTIC/SOFTMAX and TANH kernels require:
# scale 1/256 with zero point -128, and scale 1/128 with zero point 0.
FIXED_OUTPUT_RANGES = {
    "sigmoid": (0.0, 255.0 / 256.0),
    "softmax": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
}


def fake_quant(x, min_value, max_value, *, narrow_range=False, per_channel=False):
    """Rounds `x` to the 8-bit grid spanning `[min_value, max_value]`, in float.

    The range is first nudged so that zero is exactly representable, then
    values are clamped to it and rounded to one of 255 (``narrow_range``) or 256
    levels:

    .. math::
        s = (M - m) / (q_{max} - q_{min}),\\quad
        \\hat{x} = s \\cdot \\mathrm{round}((\\mathrm{clamp}(x, m', M') - m') / s) + m'

    Args:
        x: float tensor.
        min_value: scalar, or a vector over the last axis of `x` when `per_channel`.
        max_value: same shape as `min_value`.
        narrow_range: use integers ``[1, 255]`` (int8 ``[-127, 127]``), as TFLite
            requires for weights.
        per_channel: one range per entry of the last axis of `x`.

    Returns:
        A tensor of the shape and dtype of `x`, on the quantization grid. Its
        gradient with respect to `x` is 1 inside the range and 0 outside.

    Example:
        >>> y = fake_quant(ops.convert_to_tensor([0.0, 0.3, 2.0]), -1.0, 1.0)
        >>> [round(float(v), 4) for v in y]
        [0.0, 0.298, 1.0039]

    Reference:
        Jacob et al., "Quantization and Training of Neural Networks for Efficient
        Integer-Arithmetic-Only Inference", CVPR 2018.
    """
    op = (
        tf.quantization.fake_quant_with_min_max_vars_per_channel
        if per_channel
        else tf.quantization.fake_quant_with_min_max_vars
    )
    x = ops.convert_to_tensor(x)
    dtype = x.dtype
    # The TF ops take float32 only; mixed-precision tensors round-trip through it.
    y = op(
        ops.cast(x, "float32"),
        ops.cast(min_value, "float32"),
        ops.cast(max_value, "float32"),
        num_bits=NUM_BITS,
        narrow_range=narrow_range,
    )
    return y if dtype == tf.float32 else ops.cast(y, dtype)


def symmetric_range(w, per_channel=False):
    """Returns ``(-m, m)`` with ``m = max |w|`` over the whole tensor or per last axis.

    Args:
        w: weight tensor whose last axis is the output channel.
        per_channel: one range per output channel.

    Returns:
        ``(min_value, max_value)``, scalars or vectors of length ``w.shape[-1]``.
        The range is never narrower than 1e-8 (an all-zero tensor stays zero).
    """
    axes = tuple(range(len(w.shape) - 1)) if per_channel else None
    w = ops.cast(w, "float32")
    m = ops.maximum(ops.max(ops.abs(w), axis=axes), _MIN_RANGE)
    m = ops.stop_gradient(m)
    return -m, m


def quantize_weight(w, per_channel=False):
    """Fake-quantizes a weight tensor, symmetric int8 with narrow range.

    Args:
        w: weight tensor whose last axis is the output channel.
        per_channel: one scale per output channel (Conv, DepthwiseConv).

    Returns:
        The fake-quantized tensor (straight-through gradient to `w`).
    """
    min_value, max_value = symmetric_range(w, per_channel)
    return fake_quant(w, min_value, max_value, narrow_range=True, per_channel=per_channel)


def quantize_depthwise_kernel(w):
    """Per-channel fake-quant of a depthwise kernel ``(..., in, multiplier)``.

    TFLite numbers depthwise output channels ``in * multiplier`` in the order
    of a row-major reshape of the last two axes; the kernel is quantized in that
    layout, one scale per output channel.

    Args:
        w: depthwise kernel of shape ``spatial + (in_channels, depth_multiplier)``.

    Returns:
        The fake-quantized kernel, same shape as `w`.
    """
    shape = tuple(w.shape)
    flat = ops.reshape(w, shape[:-2] + (shape[-2] * shape[-1],))
    return ops.reshape(quantize_weight(flat, per_channel=True), shape)


def batch_range(x):
    """Min and max of `x`, widened to include 0, as asymmetric int8 needs.

    Under a `tf.distribute` strategy with several replicas the extremes are
    taken over the global batch (all replicas), so the learned ranges do not
    depend on how the batch is split.

    Args:
        x: activation tensor.

    Returns:
        ``(min_value, max_value)`` scalar tensors.
    """
    x = ops.stop_gradient(ops.cast(x, "float32"))
    lo = ops.minimum(ops.min(x), 0.0)
    hi = ops.maximum(ops.max(x), 0.0)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        both = ctx.all_gather(ops.reshape(ops.stack([-lo, hi]), (1, 2)), axis=0)
        extremes = ops.max(both, axis=0)
        lo, hi = -extremes[0], extremes[1]
    return lo, hi


def moving_average(old, new, decay):
    """``decay * old + (1 - decay) * new``.

    Args:
        old: current estimate.
        new: batch value.
        decay: weight of the old estimate, in ``[0, 1)``.

    Returns:
        The updated estimate.
    """
    return decay * old + (1.0 - decay) * new


def nudged_range(min_value, max_value, narrow_range=False):
    """The range TFLite actually uses: zero lands exactly on an integer.

    Args:
        min_value: float, <= 0.
        max_value: float, >= 0.
        narrow_range: integers ``[1, 255]`` instead of ``[0, 255]``.

    Returns:
        ``(scale, zero_point)`` with the zero point as an int8 value.
    """
    # float32 and round-half-up, as TensorFlow's kernel computes it.
    q_min = 1 if narrow_range else 0
    q_max = 2**NUM_BITS - 1
    scale = (np.float32(max_value) - np.float32(min_value)) / np.float32(q_max - q_min)
    zero_point = np.float32(q_min) - np.float32(min_value) / scale
    zero_point = int(min(max(np.floor(zero_point + np.float32(0.5)), q_min), q_max))
    scale = float(scale)
    return scale, zero_point - 2 ** (NUM_BITS - 1)


__all__ = [
    "FIXED_OUTPUT_RANGES",
    "NUM_BITS",
    "batch_range",
    "fake_quant",
    "moving_average",
    "nudged_range",
    "quantize_depthwise_kernel",
    "quantize_weight",
    "symmetric_range",
]

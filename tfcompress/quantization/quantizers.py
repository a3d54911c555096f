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


def scale_and_zero_point(min_value, max_value):
    """`nudged_range` on tensors: the scale and int8 zero point TFLite gives a range.

    Args:
        min_value: scalar tensor, <= 0.
        max_value: scalar tensor, >= 0.

    Returns:
        ``(scale, zero_point)``: a float32 scalar and an int32 scalar in
        ``[-128, 127]``.
    """
    lo = ops.cast(min_value, "float32")
    hi = ops.cast(max_value, "float32")
    scale = (hi - lo) / float(2**NUM_BITS - 1)
    safe = ops.where(scale > 0, scale, 1.0)
    zero_point = ops.clip(ops.floor(-lo / safe + 0.5), 0.0, float(2**NUM_BITS - 1))
    return scale, ops.cast(zero_point, "int32") - 2 ** (NUM_BITS - 1)


def weight_scale(w, per_channel=False):
    """The scale of `quantize_weight`'s grid (``max |w| / 127``, as TFLite stores it).

    Args:
        w: weight tensor whose last axis is the output channel.
        per_channel: one scale per output channel.

    Returns:
        A float32 scalar, or a vector of length ``w.shape[-1]``.
    """
    min_value, max_value = symmetric_range(w, per_channel)
    return (max_value - min_value) / float(2**NUM_BITS - 2)


def quantize_bias(bias, input_scale, kernel_scale):
    """The bias as TFLite stores it: int32 with scale ``input_scale * kernel_scale``.

    TFLite adds the bias to the int32 accumulator, so it is rounded to that
    grid; a float bias would move outputs near a rounding boundary of the
    output by one step (about 0.1% of them in practice), and a deep network
    amplifies those steps.

    Args:
        bias: float bias vector.
        input_scale: scale of the layer's input (scalar).
        kernel_scale: scale of its kernel (scalar, or one per output channel).

    Returns:
        The bias rounded to the grid (half away from zero), in float.
    """
    # A zero input scale (an all-zero tensor) leaves the bias as it is: on a
    # grid of 1e-30 it rounds to itself.
    scale = ops.maximum(ops.cast(input_scale, "float32") * ops.cast(kernel_scale, "float32"), 1e-30)
    steps = bias / scale
    return ops.sign(steps) * ops.floor(ops.abs(steps) + 0.5) * scale


# Fixed-point helpers of TFLite's int8 HARD_SWISH kernel (gemmlowp semantics on
# int16 values held in int32 tensors).
_INT16_MIN, _INT16_MAX = -(2**15), 2**15 - 1


def _frexp(value):
    """``(mantissa in [0.5, 1), exponent)`` of positive float64 values, exactly."""
    bits = tf.bitcast(value, tf.int64)
    exponent = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 52), 0x7FF)
    mantissa = tf.bitwise.bitwise_or(
        tf.bitwise.bitwise_and(bits, tf.constant(0x000FFFFFFFFFFFFF, tf.int64)),
        tf.constant(1022 << 52, tf.int64),
    )
    return tf.bitcast(mantissa, tf.float64), tf.cast(exponent - 1022, tf.int32)


def _int16_multiplier(real):
    """A positive real multiplier as TFLite's ``(int16 fixed point, exponent)`` pair."""
    mantissa, exponent = _frexp(tf.cast(real, tf.float64))
    fixed = tf.floor(mantissa * 2.0**31 + 0.5)  # round half away from zero (positive)
    carry = fixed >= 2.0**31
    fixed = tf.where(carry, fixed / 2.0, fixed)
    exponent = tf.where(carry, exponent + 1, exponent)
    tiny = exponent < -31
    fixed = tf.cast(tf.where(tiny, tf.zeros_like(fixed), fixed), tf.int64)
    exponent = tf.where(tiny, 0, exponent)
    # int32 -> int16 multiplier, rounding to nearest and saturating.
    fixed16 = tf.where(
        fixed >= 2**31 - 1 - 2**15,
        tf.constant(_INT16_MAX, tf.int64),
        tf.bitwise.right_shift(fixed + 2**15, 16),
    )
    return tf.cast(fixed16, tf.int32), exponent


def _doubling_high_mul(a, b, rounding=True):
    """int16 ``(a * b * 2) >> 16``, rounded to nearest or truncated, saturating."""
    product = a * b
    if rounding:
        product += tf.where(product >= 0, 1 << 14, 1 - (1 << 14))
    high = tf.truncatediv(product, 1 << 15)
    return tf.where((a == b) & (a == _INT16_MIN), _INT16_MAX, high)


def _rounding_divide_by_pot(x, exponent):
    """``x / 2**exponent`` rounded to nearest, ties away from zero (``exponent >= 0``)."""
    exponent = tf.maximum(exponent, 0)
    mask = tf.bitwise.left_shift(1, exponent) - 1
    remainder = tf.bitwise.bitwise_and(x, mask)
    threshold = tf.bitwise.right_shift(mask, 1) + tf.cast(x < 0, tf.int32)
    return tf.bitwise.right_shift(x, exponent) + tf.cast(remainder > threshold, tf.int32)


def _saturating_left_shift(x, amount):
    amount = tf.cast(tf.maximum(amount, 0), tf.int64)
    shifted = tf.cast(x, tf.int64) * tf.bitwise.left_shift(tf.constant(1, tf.int64), amount)
    return tf.cast(tf.clip_by_value(shifted, _INT16_MIN, _INT16_MAX), tf.int32)


def _hard_swish_codes(codes, input_scale, input_zero_point, output_scale, output_zero_point):
    """The int8 HARD_SWISH kernel on int32 `codes` (input integers) -> output integers."""
    value = codes - input_zero_point
    hires = value * (1 << 7)
    # float32 arithmetic, as the kernel prepares its parameters
    hires_scale = (1.0 / 128.0) * input_scale
    out_multiplier, out_exponent = _int16_multiplier(hires_scale / output_scale)
    relu_multiplier, relu_exponent = _int16_multiplier(hires_scale / (3.0 / 32768.0))
    on_output_scale = _doubling_high_mul(hires, out_multiplier)
    reluish = tf.where(relu_exponent > 0, _saturating_left_shift(hires, relu_exponent - 1), hires)
    reluish = _doubling_high_mul(reluish, relu_multiplier)
    reluish = tf.where(relu_exponent > 0, _saturating_left_shift(reluish, 1), reluish)
    reluish = tf.where(relu_exponent < 0, _rounding_divide_by_pot(reluish, -relu_exponent), reluish)
    reluish = tf.bitwise.right_shift(reluish + (1 << 15), 1)
    product = _doubling_high_mul(reluish, on_output_scale, rounding=False)
    out = _rounding_divide_by_pot(product, -out_exponent) + output_zero_point
    return tf.clip_by_value(out, -128, 127)


def hard_swish_int8(x, input_scale, input_zero_point, output_scale, output_zero_point):
    """Hard swish as TFLite's int8 HARD_SWISH kernel computes it, in float.

    The kernel does not round ``x * relu6(x + 3) / 6`` to the nearest output
    step: it works in 16-bit fixed point (a "relu-ish" factor in [0, 1] times
    the input rescaled to the output scale), which lands one step off for
    a few input values of each layer (identically in the reference, builtin
    and XNNPACK kernels). This reproduces that arithmetic, as a table of the
    256 input integers, so that a QAT model predicts what the int8 file
    computes.

    Args:
        x: float tensor on the input's int8 grid.
        input_scale, input_zero_point: the input's scale and int8 zero point.
        output_scale, output_zero_point: the output's.

    Returns:
        A float tensor of the shape of `x`, on the output's int8 grid; the
        float hard swish where a scale is not positive.

    Reference:
        TensorFlow Lite, `reference_ops::HardSwish` (int8) and `HardSwishPrepare`.
    """
    x = ops.cast(x, "float32")
    input_scale = ops.cast(input_scale, "float32")
    output_scale = ops.cast(output_scale, "float32")
    valid = (input_scale > 0) & (output_scale > 0)
    in_scale = tf.where(valid, input_scale, 1.0)
    out_scale = tf.where(valid, output_scale, 1.0)
    input_zero_point = tf.cast(input_zero_point, tf.int32)
    output_zero_point = tf.cast(output_zero_point, tf.int32)
    every_code = tf.range(-128, 128, dtype=tf.int32)
    table = _hard_swish_codes(every_code, in_scale, input_zero_point, out_scale, output_zero_point)
    table = tf.cast(table - output_zero_point, tf.float32) * out_scale
    codes = tf.cast(tf.round(x / in_scale), tf.int32) + input_zero_point
    y = tf.gather(table, tf.clip_by_value(codes, -128, 127) + 128)
    return tf.where(valid, y, x * tf.clip_by_value(x + 3.0, 0.0, 6.0) / 6.0)


__all__ = [
    "FIXED_OUTPUT_RANGES",
    "NUM_BITS",
    "batch_range",
    "fake_quant",
    "hard_swish_int8",
    "moving_average",
    "nudged_range",
    "quantize_bias",
    "quantize_depthwise_kernel",
    "quantize_weight",
    "scale_and_zero_point",
    "symmetric_range",
    "weight_scale",
]

"""Folding an inference-mode BatchNormalization into the preceding layer.

With ``s = gamma / sqrt(var + eps)``, ``BN(W x + b) = (W s) x + (b - mean) s + beta``:
the folded kernel is scaled per output channel, so its int8 scales (and the
TFLite file) see the weights the device will actually use.
"""

import numpy as np


def batch_norm_scale_shift(bn):
    """Per-channel ``(scale, shift)`` of an inference-mode BatchNormalization.

    Args:
        bn: a built `keras.layers.BatchNormalization`.

    Returns:
        Two float32 NumPy vectors with ``BN(y) = y * scale + shift``.
    """
    variance = bn.moving_variance.numpy().astype(np.float64)
    mean = bn.moving_mean.numpy().astype(np.float64)
    gamma = bn.gamma.numpy().astype(np.float64) if bn.scale else np.ones_like(mean)
    beta = bn.beta.numpy().astype(np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return scale, beta - mean * scale


def fold_batch_norm(kernel, bias, bn, depthwise=False):
    """Folds `bn` into a kernel whose last axis (or last two, depthwise) is the channel.

    Args:
        kernel: kernel array; output channels on the last axis, or for a
            depthwise kernel ``(..., in_channels, depth_multiplier)`` flattened
            row-major over the last two axes.
        bias: bias vector, or None for a layer without bias.
        bn: the BatchNormalization applied to the layer's output (axis -1).
        depthwise: whether `kernel` is a depthwise kernel.

    Returns:
        ``(kernel, bias)`` float32 NumPy arrays of the folded layer.

    Raises:
        ValueError: if `bn` has not as many channels as the kernel has outputs.

    Example:
        >>> import keras
        >>> bn = keras.layers.BatchNormalization(); bn.build((None, 3))
        >>> k, b = fold_batch_norm(np.ones((2, 3)), None, bn)
        >>> k.shape, b.shape
        ((2, 3), (3,))
    """
    scale, shift = batch_norm_scale_shift(bn)
    kernel = np.asarray(kernel, dtype=np.float64)
    channel_shape = kernel.shape[-2:] if depthwise else kernel.shape[-1:]
    if scale.size != int(np.prod(channel_shape)):
        raise ValueError(
            f"`bn` normalizes {scale.size} channels but the kernel has "
            f"{int(np.prod(channel_shape))} output channels (depthwise={depthwise}). "
            f"Received: kernel.shape={kernel.shape}"
        )
    folded_kernel = kernel * scale.reshape(channel_shape)
    bias = np.zeros_like(scale) if bias is None else np.asarray(bias, dtype=np.float64)
    return folded_kernel.astype(np.float32), (bias * scale + shift).astype(np.float32)


def can_fold(bn, output_rank):
    """Whether `bn` normalizes the channel axis of a tensor of `output_rank`."""
    axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
    return axis is not None and axis in (-1, output_rank - 1)

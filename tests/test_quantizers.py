"""Fake-quant maths against TensorFlow's op and an independent NumPy reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_reference

from tfcompress.quantization import quantizers


def numpy_fake_quant(x, lo, hi, narrow_range=False):
    """TFLite/TF fake-quant written out from the nudging rule, in float32."""
    x, lo, hi = np.float32(x), np.float32(lo), np.float32(hi)
    q_min, q_max = (1 if narrow_range else 0), 255
    scale = (hi - lo) / np.float32(q_max - q_min)
    zero_from_min = q_min - lo / scale
    zero = np.clip(np.floor(zero_from_min + np.float32(0.5)), q_min, q_max)
    n_lo, n_hi = (q_min - zero) * scale, (q_max - zero) * scale
    clamped = np.clip(x, n_lo, n_hi)
    return np.floor((clamped - n_lo) / scale + 0.5) * scale + n_lo


def test_fake_quant_matches_tf_op_and_numpy():
    for lo, hi in [(-1.0, 1.0), (-0.3, 2.7), (0.0, 6.0), (-4.1, 0.0)]:
        for narrow_range in (False, True):
            x = np.random.default_rng(0).uniform(lo - 1, hi + 1, size=1000).astype(np.float32)
            ours = np.asarray(quantizers.fake_quant(x, lo, hi, narrow_range=narrow_range))
            tf_op = tf.quantization.fake_quant_with_min_max_vars(
                x, lo, hi, num_bits=8, narrow_range=narrow_range
            ).numpy()
            np.testing.assert_array_equal(ours, tf_op)
            np.testing.assert_allclose(ours, numpy_fake_quant(x, lo, hi, narrow_range), atol=1e-6)
            assert len(np.unique(ours)) <= (255 if narrow_range else 256)


def test_per_channel_is_per_column_per_tensor():
    w = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    ours = np.asarray(quantizers.quantize_weight(w, per_channel=True))
    for c in range(4):
        m = np.abs(w[:, c]).max()
        np.testing.assert_allclose(ours[:, c], numpy_fake_quant(w[:, c], -m, m, True), atol=1e-6)


def test_weight_quantization_is_symmetric_int8():
    w = np.random.default_rng(2).normal(size=(64, 32)).astype(np.float32)
    q = np.asarray(quantizers.quantize_weight(w))
    scale = np.abs(w).max() / 127
    ints = q / scale
    np.testing.assert_allclose(ints, np.round(ints), atol=1e-3)
    assert ints.min() >= -127 - 1e-3 and ints.max() <= 127 + 1e-3
    np.testing.assert_array_equal(np.asarray(quantizers.quantize_weight(np.zeros((3, 2)))), 0)


def test_depthwise_kernel_is_per_output_channel():
    w = np.random.default_rng(3).normal(size=(3, 3, 4, 2)).astype(np.float32)
    q = np.asarray(quantizers.quantize_depthwise_kernel(w))
    for i in range(4):
        for j in range(2):
            m = np.abs(w[:, :, i, j]).max()
            expected = numpy_fake_quant(w[:, :, i, j], -m, m, True)
            np.testing.assert_allclose(q[:, :, i, j], expected, atol=1e-6)


def test_straight_through_gradient():
    x = tf.constant([-2.0, -0.5, 0.0, 0.7, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizers.fake_quant(x, -1.0, 1.0)
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0, 1, 1, 1, 0])
    w = tf.Variable([[0.5, -1.0], [2.0, 0.1]])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(quantizers.quantize_weight(w) * 3.0)
    np.testing.assert_allclose(tape.gradient(y, w).numpy(), np.full((2, 2), 3.0))


def test_batch_range_contains_zero():
    lo, hi = quantizers.batch_range(np.array([0.5, 2.0], np.float32))
    assert (float(lo), float(hi)) == (0.0, 2.0)
    lo, hi = quantizers.batch_range(np.array([-3.0, -1.0], np.float32))
    assert (float(lo), float(hi)) == (-3.0, 0.0)


def test_batch_range_is_global_under_mirrored(mirrored):
    x = np.arange(-8, 8, dtype=np.float32).reshape(4, 4)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
    batch = next(iter(mirrored.experimental_distribute_dataset(dataset)))
    per_replica = mirrored.run(lambda t: tf.stack(quantizers.batch_range(t)), args=(batch,))
    for value in mirrored.experimental_local_results(per_replica):
        np.testing.assert_array_equal(value.numpy(), [-8.0, 7.0])


def test_nudged_range_matches_tflite_params():
    for lo, hi, narrow in [(-1.0, 1.0, False), (0.0, 255 / 256, False), (-0.5, 0.5, True)]:
        scale, zero = quantizers.nudged_range(lo, hi, narrow)
        grid = numpy_fake_quant(np.linspace(lo, hi, 50), lo, hi, narrow)
        ints = grid / scale + zero
        np.testing.assert_allclose(ints, np.round(ints), atol=1e-3)
        assert -128 <= ints.min() and ints.max() <= 127
    assert quantizers.nudged_range(0.0, 255 / 256) == (1 / 256, -128)


@pytest.mark.slow
@pytest.mark.reference
def test_weight_quantizer_matches_tfmot():
    w = np.random.default_rng(4).normal(size=(3, 3, 2, 5)).astype(np.float32)
    reference = run_reference(
        f"""
        import json, numpy as np, tensorflow as tf
        from tensorflow_model_optimization.python.core.quantization.keras import quantizers
        w = tf.constant(np.array({w.tolist()}, np.float32))
        out = {{}}
        for per_axis in (False, True):
            q = quantizers.LastValueQuantizer(8, per_axis=per_axis, symmetric=True,
                                              narrow_range=True)
            layer = tf.keras.layers.Layer()
            weights = q.build(w.shape, "w", layer)
            out[str(per_axis)] = q(w, training=True, weights=weights).numpy().tolist()
        print(json.dumps(out))
        """
    )
    for per_channel in (False, True):
        ours = np.asarray(quantizers.quantize_weight(w, per_channel=per_channel))
        np.testing.assert_allclose(ours, np.array(reference[str(per_channel)]), atol=1e-6)
    assert keras.backend.backend() == "tensorflow"

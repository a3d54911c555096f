"""Post-training calibration through the fake-quantized graph (`tfc.quantization.calibrate`)."""

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress.export import LiteModel, to_tflite
from tfcompress.quantization import ActivationQuantizer, QuantizeWrapper, calibration


def _quantizers(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, ActivationQuantizer):
            found.append(layer)
        elif isinstance(layer, QuantizeWrapper):
            found.append(layer.output_quantizer)
    return found


def _cnn():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(6.0),
            keras.layers.DepthwiseConv2D(3, padding="same"),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )


def _mse(values, lo, hi):
    """Squared error of asymmetric int8 rounding and clipping to [lo, hi], in NumPy."""
    scale = (hi - lo) / 255.0
    zero = np.round(-lo / scale)
    codes = np.clip(np.round(values / scale) + zero, 0, 255)
    return float(np.mean(((codes - zero) * scale - values) ** 2))


def test_minmax_ranges_are_the_extremes_of_the_data():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    x = np.random.default_rng(0).normal(size=(300, 4)).astype("float32")
    ptq = tfc.quantization.calibrate(model, x, method="minmax", batch_size=7)
    input_q, output_q = _quantizers(ptq)
    np.testing.assert_allclose(
        [input_q.min_value, input_q.max_value], [x.min(), x.max()], rtol=1e-6
    )
    # The Dense output runs on the int8 weights, as TFLite will compute it.
    wrapper = next(layer for layer in ptq.layers if isinstance(layer, QuantizeWrapper))
    kernel = keras.ops.convert_to_numpy(wrapper.quantized_kernels()[0])
    y = x @ kernel + model.layers[0].bias.numpy()
    np.testing.assert_allclose(
        [output_q.min_value, output_q.max_value], [y.min(), y.max()], rtol=1e-5
    )


def test_mse_range_is_the_brute_force_optimum_on_a_heavy_tail():
    values = np.random.default_rng(1).standard_t(2, size=20000).astype("float32")
    edges = np.linspace(values.min(), values.max(), 2049)
    counts = np.histogram(values, bins=edges)[0]
    lo, hi = calibration._best_range(edges, counts)
    assert hi < values.max() and lo > values.min()
    # The best of the candidate ranges (5%..100% of the extremes), by brute force.
    brute = min(
        _mse(values, values.min() * r, values.max() * r) for r in np.geomspace(0.05, 1, 300)
    )
    assert _mse(values, lo, hi) <= 1.05 * brute
    assert _mse(values, lo, hi) < _mse(values, values.min(), values.max())


@pytest.mark.slow
def test_calibrated_model_is_its_int8_file(digits_image):
    (x, y), (xt, yt) = digits_image
    model = _cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    before = [w.numpy().copy() for w in model.weights]
    ptq = tfc.quantization.calibrate(model, x[:200])
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())  # the float model is untouched
    blob = to_tflite(ptq, quantization="int8")
    lite = LiteModel(blob)
    assert lite.is_fully_int8()
    keras_out = ptq.predict(xt, verbose=0)
    lite_out = lite.predict(xt)
    assert np.mean(keras_out.argmax(-1) == lite_out.argmax(-1)) >= 0.99
    step = np.ptp(keras_out) / 255  # about the int8 output's scale (the file's output is float)
    assert np.max(np.abs(keras_out - lite_out)) <= 3 * step
    # to_tflite(calibration=...) is the same path in one call.
    again = to_tflite(model, quantization="int8", representative_data=x[:200], calibration="mse")
    np.testing.assert_allclose(LiteModel(again).predict(xt), lite_out, atol=1e-6)
    float_out = model.predict(xt, verbose=0)
    assert np.mean(lite_out.argmax(-1) == float_out.argmax(-1)) >= 0.97


def test_recalibrating_a_quantized_model_in_place(digits_image):
    (x, _), _ = digits_image
    qat = tfc.quantization.quantize_model(_cnn())
    out = tfc.quantization.calibrate(qat, x[:100], method="minmax")
    assert out is qat
    assert all(float(q.initialized) == 1.0 for q in _quantizers(qat) if q.fixed_range is None)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"method": "percentile"}, "method"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"representative_data": np.zeros((0, 4))}, "representative_data"),
        ({"representative_data": np.full((3, 4), np.nan)}, "representative_data"),
        ({"representative_data": [["a", "b", "c", "d"]]}, "representative_data"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_built(kwargs, name):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    kwargs = {"representative_data": np.ones((5, 4)), **kwargs}
    with pytest.raises(ValueError, match=f"Received: {name}"):
        tfc.quantization.calibrate(model, **kwargs)


def test_to_tflite_refuses_an_unknown_calibration():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="Received: calibration='kl'"):
        to_tflite(model, quantization="int8", representative_data=np.ones((5, 4)), calibration="kl")


@pytest.mark.slow
def test_subclassed_model_calibrates_and_exports(digits):
    from test_qat import TwoLayerNet

    (x, y), (xt, _) = digits
    model = TwoLayerNet()
    model(x[:1])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    ptq = tfc.quantization.calibrate(model, x[:300], method="minmax")
    assert isinstance(ptq, tfc.quantization.QuantizedModel)
    lite = LiteModel(to_tflite(ptq, quantization="int8"))
    assert lite.is_fully_int8()
    keras_out = ptq.predict(xt, verbose=0)
    assert np.mean(keras_out.argmax(-1) == lite.predict(xt).argmax(-1)) >= 0.99
    assert np.mean(keras_out.argmax(-1) == model.predict(xt, verbose=0).argmax(-1)) >= 0.97

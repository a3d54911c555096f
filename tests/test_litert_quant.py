"""int4 weights, int16x8 activations and AI Edge Quantizer recipes (quantization.litert)."""

import json

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress import cli


def _trained_mlp(digits, hidden, epochs):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(n, activation="relu", name=f"d{i + 1}")
              for i, n in enumerate(hidden)]
    model = keras.Sequential([keras.Input((64,)), *layers, keras.layers.Dense(10, name="out")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=15)
    model.fit(x, y, epochs=epochs, verbose=0)
    return model


@pytest.fixture(scope="module")
def mlp(digits):
    """The digits MLP 64-256-128-10 of the issue's table."""
    return _trained_mlp(digits, (256, 128), 20)


@pytest.fixture(scope="module")
def files(mlp, digits):
    (x, _), _ = digits
    return {
        "int8": tfc.export.to_tflite(mlp, quantization="int8", representative_data=x[:300]),
        "int4": tfc.export.to_tflite(mlp, quantization="int4"),
        "int16x8": tfc.export.to_tflite(mlp, quantization="int16x8", representative_data=x[:300]),
        "weight_only_wi4_afp32": tfc.export.to_tflite(mlp, recipe="weight_only_wi4_afp32"),
    }


@pytest.mark.slow
def test_int4_file_is_smaller_and_as_accurate(mlp, files, digits):
    _, (xt, yt) = digits
    float_acc = np.mean(mlp.predict(xt, verbose=0).argmax(-1) == yt)
    int4 = tfc.export.LiteModel(files["int4"])
    assert len(files["int4"]) <= 0.65 * len(files["int8"])
    assert int4.evaluate(xt, yt) >= float_acc - 0.01
    assert not int4.is_fully_int8()  # float activations, quantized on the fly
    bits = int4.weight_bits()
    kernels = [name for name, b in bits.items() if b == 4]
    assert len(kernels) == 3 and set(bits.values()) <= {4, 32}


def test_int4_values_unpack_to_the_keras_kernels(mlp, files):
    # Two 4-bit values a byte, low nibble first: unpacked in the wrong order, the
    # values would not follow the Keras kernels.
    lite = tfc.export.LiteModel(files["int4"])
    bits = lite.weight_bits()
    int4 = sorted(
        (v for name, (v, _) in lite.weights().items() if bits[name] == 4), key=lambda v: v.size
    )
    kernels = sorted((k for k in mlp.get_weights() if k.ndim == 2), key=lambda k: k.size)
    for values, kernel in zip(int4, kernels):
        assert values.size == kernel.size and -8 <= values.min() and values.max() <= 7
        rows = values.reshape(kernel.shape[1], kernel.shape[0])  # (out, in), as TFLite keeps it
        # Symmetric per-channel scales: max |w| of the channel is 7 steps.
        scale = np.abs(kernel.T).max(axis=1, keepdims=True) / 7
        assert np.all(np.abs(rows * scale - kernel.T) <= 0.5 * scale + 1e-6)


def test_int16x8_agrees_with_float_keras(mlp, files, digits):
    _, (xt, _) = digits
    lite = tfc.export.LiteModel(files["int16x8"])
    agree = np.mean(lite.predict(xt).argmax(-1) == mlp.predict(xt, verbose=0).argmax(-1))
    assert agree >= 0.995
    assert lite.wide_int_ops() == {"FULLY_CONNECTED"} and not lite.float_ops()
    assert not lite.is_fully_int8()  # int16 activations are not int8
    assert tfc.export.LiteModel(files["int8"]).is_fully_int8()


def test_recipe_by_name_and_by_list(mlp, files, digits):
    _, (xt, yt) = digits
    by_name = tfc.export.LiteModel(files["weight_only_wi4_afp32"])
    assert "DEQUANTIZE" in by_name.ops() and 4 in by_name.weight_bits().values()
    steps = tfc.quantization.litert.resolve("dynamic_wi4_afp32")
    assert tfc.export.to_tflite(mlp, recipe=steps) == files["int4"]
    assert by_name.evaluate(xt, yt) > 0.94
    assert "static_wi8_ai16" in tfc.quantization.litert.recipe_names()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(recipe="int3_magic"), "Received: recipe='int3_magic'"),
        (dict(recipe=[]), r"Received: recipe=\[\]"),
        (dict(recipe=42), "Received: recipe=42"),
        (dict(quantization="int16x8"), "Received: representative_data=None"),
        (dict(recipe="static_wi8_ai8"), "Received: representative_data=None"),
        (dict(quantization="int4", recipe="static_wi8_ai8"), "not both"),
        (dict(quantization="int4", int8_io=True), "Received: quantization='int4'"),
        (dict(quantization="int2"), "Received: quantization='int2'"),
    ],
)
def test_bad_recipes_and_modes_write_nothing(mlp, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfc.export.to_tflite(mlp, tmp_path / "m.tflite", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_qat_model_refuses_file_level_modes(digits):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    qat = tfc.quantization.quantize_model(model)
    with pytest.raises(ValueError, match="quantization-aware"):
        tfc.export.to_tflite(qat, quantization="int4")


@pytest.mark.slow
def test_cli_export_and_compress_take_int4_and_int16x8(mlp, digits, tmp_path):
    (x, y), (xt, yt) = digits
    mlp.save(tmp_path / "mlp.keras")
    np.save(tmp_path / "x.npy", x[:200])
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=xt, y=yt)
    assert cli.main(["export", str(tmp_path / "mlp.keras"), "-o", str(tmp_path / "e.tflite"),
                     "--quantization", "int16x8", "--calibration", str(tmp_path / "x.npy")]) == 0
    assert tfc.export.LiteModel(tmp_path / "e.tflite").wide_int_ops()
    assert cli.main(["compress", str(tmp_path / "mlp.keras"), "--data", str(tmp_path / "train.npz"),
                     "--eval", str(tmp_path / "test.npz"), "--quantization", "int4",
                     "--units", "0.25", "--epochs", "1", "-o", str(tmp_path / "c.tflite")]) == 0
    report = json.loads((tmp_path / "c.report.json").read_text())
    assert report["agreement"] >= 0.98
    assert 4 in tfc.export.LiteModel(tmp_path / "c.tflite").weight_bits().values()


@pytest.fixture(scope="module")
def small(digits):
    return _trained_mlp(digits, (64, 32), 10)


@pytest.mark.slow
def test_sensitivity_ranks_the_layer_that_int4_hurts_first(small, digits, tmp_path):
    _, (xt, yt) = digits
    report = tfc.quantization.sensitivity(small, xt, yt, quantization="int4")
    assert sorted(r["layer"] for r in report.rows) == ["d1", "d2", "out"]
    assert all(r["error"] > 0 for r in report.rows)
    assert report.plot(tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    # One large weight per output unit of d2 stretches each channel's int4 grid:
    # the rest of d2 rounds to zero, so d2 alone moves the file the most.
    skewed = keras.models.clone_model(small)
    skewed.set_weights(small.get_weights())
    kernel = skewed.get_layer("d2").kernel.numpy()
    kernel[0] = 40 * np.abs(kernel).max()
    skewed.get_layer("d2").kernel.assign(kernel)
    ranked = tfc.quantization.sensitivity(skewed, xt, quantization="int4").ranking()
    assert ranked[0] == "d2"
    assert "d2" in str(tfc.quantization.sensitivity(skewed, xt[:50], yt[:50]))


@pytest.mark.slow
def test_mixed_precision_keeps_the_fewest_most_sensitive_layers(small, digits):
    _, (xt, yt) = digits
    everything = tfc.quantization.mixed_precision(small, (xt, yt), 0.0, quantization="int4")
    assert everything.accuracy == pytest.approx(everything.float_accuracy)
    ranking = everything.sensitivity.ranking() if everything.sensitivity else []
    assert everything.kept_float == ranking[: len(everything.kept_float)]
    if everything.kept_float:
        assert everything.evaluations == 1 + 3 + len(everything.kept_float)
    loose = tfc.quantization.mixed_precision(small, (xt, yt), 100.0, quantization="int4")
    assert loose.kept_float == [] and loose.evaluations == 1
    assert 4 in tfc.export.LiteModel(loose.tflite).weight_bits().values()


def test_to_tflite_max_accuracy_drop_writes_the_file_and_names_kept_layers(small, digits, tmp_path):
    _, (xt, yt) = digits
    path = tmp_path / "m.tflite"
    with pytest.warns(UserWarning, match="these layers stay float") as caught:
        blob = tfc.export.to_tflite(small, path, quantization="int4", max_accuracy_drop=0.0,
                                    eval_data=(xt, yt))
    messages = [str(w.message) for w in caught if "stay float" in str(w.message)]
    assert path.read_bytes() == blob and "files evaluated" in messages[0]
    lite = tfc.export.LiteModel(blob)
    float_acc = np.mean(small.predict(xt, verbose=0).argmax(-1) == yt)
    assert lite.evaluate(xt, yt) >= float_acc - 1e-9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(quantization="int8", max_accuracy_drop=-1.0), "Received: max_accuracy_drop=-1.0"),
        (dict(quantization="int8", max_accuracy_drop=0.5), "eval_data is None=True"),
        (dict(quantization="dynamic", max_accuracy_drop=0.5), "Received: quantization='dynamic'"),
        (dict(quantization="int8", max_accuracy_drop=0.5, eval_data=np.zeros((4, 64))),
         "`eval_data` must be an \\(x, y\\) tuple"),
        (dict(quantization="int8", max_accuracy_drop=0.5,
              eval_data=(np.zeros((4, 64)), np.zeros(3))), "labels must be one per input"),
    ],
)
def test_bad_mixed_precision_arguments_write_nothing(small, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfc.export.to_tflite(small, tmp_path / "m.tflite", representative_data=np.zeros((4, 64)),
                             **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_layers_are_found_in_the_file_also_with_batchnorm_folded_in():
    L = keras.layers
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, use_bias=False), L.BatchNormalization(), L.ReLU(),
        L.DepthwiseConv2D(3), L.BatchNormalization(), L.ReLU(),
        L.Flatten(), L.Dense(16, activation="relu"), L.Dense(10),
    ])
    x = np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32)
    model.compile("adam", "mse")
    model.fit(x, np.random.default_rng(1).random((32, 10)), epochs=2, verbose=0)  # moving stats
    lite = tfc.export.LiteModel(tfc.export.to_tflite(model))
    pairs = tfc.quantization.precision.layer_ops(model, lite)
    assert [name for name, _ in pairs] == ["conv2d", "depthwise_conv2d", "dense", "dense_1"]
    kinds = {op["output"]: op["op"] for op in lite.op_table()}
    assert [kinds[out] for _, out in pairs] == [
        "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"
    ]


def _skewed_depthwise_cnn(digits_image):
    """A depthwise CNN with a dead channel (its ReLU input is never positive) whose
    depthwise weights are huge, as MobileNets grow them: harmless per channel, but one
    scale per tensor rounds every other channel's weights to a few levels."""
    (x, y), _ = digits_image
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem"),
        keras.layers.DepthwiseConv2D(3, padding="same", name="dw"),
        keras.layers.Conv2D(16, 1, activation="relu", name="pw"),
        keras.layers.Flatten(), keras.layers.Dense(10, name="out"),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=8, verbose=0)
    stem, dw = model.get_layer("stem"), model.get_layer("dw")
    kernel, bias = stem.kernel.numpy(), stem.bias.numpy()
    kernel[..., 0], bias[0] = 0.0, -1.0
    stem.kernel.assign(kernel)
    stem.bias.assign(bias)
    depthwise = dw.kernel.numpy()
    depthwise[:, :, 0, 0] = 300 * np.abs(depthwise).max()
    dw.kernel.assign(depthwise)
    return model


@pytest.mark.slow
def test_per_tensor_int8_and_its_accuracy_bound(digits_image):
    (x, _), (xt, yt) = digits_image
    model = _skewed_depthwise_cnn(digits_image)
    float_acc = np.mean(model.predict(xt, verbose=0).argmax(-1) == yt)
    per_channel = tfc.export.LiteModel(tfc.export.to_tflite(
        model, quantization="int8", representative_data=x[:300]))
    per_tensor = tfc.export.LiteModel(tfc.export.to_tflite(
        model, quantization="int8", representative_data=x[:300], per_tensor=True))
    assert per_tensor.is_fully_int8()

    def scales(lite):  # of the int8 kernels, as the file stores them
        bits = lite.weight_bits()
        return sorted(len(t.quantization.scale) for t in lite._flat.subgraphs[0].tensors
                      if bits.get(t.name.decode()) == 8 and t.quantization.scale is not None)

    assert scales(per_tensor) == [1, 1, 1, 1] and scales(per_channel) == [1, 8, 8, 16]
    assert per_channel.evaluate(xt, yt) >= float_acc - 0.01
    assert per_tensor.evaluate(xt, yt) < float_acc - 0.5  # measured: 92.8% -> 10.0%
    with pytest.warns(UserWarning, match=r"stay float: \['dw'\]"):
        blob = tfc.export.to_tflite(model, quantization="int8", per_tensor=True,
                                    max_accuracy_drop=0.5, eval_data=(xt, yt))
    bounded = tfc.export.LiteModel(blob)
    assert bounded.evaluate(xt, yt) >= float_acc - 0.005
    assert "DEPTHWISE_CONV_2D" in bounded.float_ops()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(quantization="dynamic"), "quantization='dynamic'"),
        (dict(quantization="int8", calibration="mse"), "calibration='mse'"),
        (dict(quantization="int8", per_channel_dense=True), "per_channel_dense=True"),
        (dict(quantization="int8", per_tensor="yes"), "per_tensor='yes'"),
    ],
)
def test_bad_per_tensor_arguments_write_nothing(small, tmp_path, kwargs, match):
    kwargs.setdefault("per_tensor", True)
    with pytest.raises(ValueError, match=match):
        tfc.export.to_tflite(small, tmp_path / "m.tflite", representative_data=np.zeros((4, 64)),
                             **kwargs)
    assert list(tmp_path.iterdir()) == []
    qat = tfc.quantization.quantize_model(small)
    with pytest.raises(ValueError, match="weight_granularity='per_tensor'"):
        tfc.export.to_tflite(qat, quantization="int8", per_tensor=True)

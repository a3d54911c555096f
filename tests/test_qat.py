"""Quantization-aware training: Keras model vs its fully int8 TFLite file."""

import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from conftest import small_mlp
from test_quantizers import numpy_fake_quant

import tfcompress as tfc
from tfcompress.quantization import (
    ActivationQuantizer,
    QuantizeConfig,
    QuantizedModel,
    QuantizeWrapper,
    fold_batch_norms,
    quantize_model,
    quantizers,
)

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_fit(model, x, y, epochs=2, batch_size=64, **kwargs):
    model.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, **kwargs)
    return model


def agreement(qat, x):
    lite = tfc.export.LiteModel(tfc.export.to_tflite(qat, quantization="int8", int8_io=True))
    assert lite.is_fully_int8(), lite.ops()
    keras_classes = np.argmax(qat.predict(x, verbose=0), axis=-1)
    lite_classes = np.argmax(lite.predict(x), axis=-1)
    return float(np.mean(keras_classes == lite_classes)), lite


@pytest.fixture(scope="module")
def float_mlp(digits):
    (x, y), _ = digits
    return compile_fit(small_mlp(hidden=(64,)), x, y, epochs=20, batch_size=64)


def cnn(with_bn=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(16, 3, padding="same", use_bias=not with_bn)(inputs)
    if with_bn:
        x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = L.Flatten()(x)
    x = L.Dropout(0.1)(x)
    return keras.Model(inputs, L.Dense(10)(x))


@pytest.mark.slow
def test_mlp_qat_exports_fully_int8_and_agrees(float_mlp, digits):
    (x, y), (x_test, y_test) = digits
    before = [w.copy() for w in float_mlp.get_weights()]
    qat = compile_fit(quantize_model(float_mlp), x, y, epochs=2)
    for old, new in zip(before, float_mlp.get_weights()):
        np.testing.assert_array_equal(old, new)  # the float model is left untouched
    agree, lite = agreement(qat, x_test)
    assert agree >= 0.99
    assert lite.ops() == {"FULLY_CONNECTED"}
    float_accuracy = float_mlp.evaluate(x_test, y_test, verbose=0)[1]
    assert lite.evaluate(x_test, y_test) >= float_accuracy - 0.03
    # The file's input scale is the nudged moving-average range of the input.
    q = next(layer for layer in qat.layers if isinstance(layer, ActivationQuantizer))
    scale, zero = quantizers.nudged_range(float(q.min_value), float(q.max_value))
    np.testing.assert_allclose(lite.input_details["quantization"], (scale, zero), rtol=1e-5)


def test_qat_of_sequential_takes_a_plain_tensor_without_warnings():
    # The Functional copy of a Sequential used to expect a one-item list of inputs,
    # so every `qat(x)` warned "The structure of `inputs` doesn't match".
    qat = quantize_model(small_mlp(hidden=(8,)))
    x = np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(qat(x).numpy(), qat.predict(x, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_cnn_with_batchnorm_folds_fuses_and_agrees(digits_image):
    (x, y), (x_test, _) = digits_image
    model = compile_fit(cnn(), x, y, epochs=3)
    qat = quantize_model(model)
    assert not any(isinstance(layer, (L.BatchNormalization, L.ReLU)) for layer in qat.layers)
    conv = next(layer for layer in qat.layers if isinstance(layer, QuantizeWrapper))
    assert conv.layer.use_bias and conv.layer.activation is keras.activations.relu
    compile_fit(qat, x, y, epochs=1)
    agree, lite = agreement(qat, x_test)
    assert agree >= 0.99
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED"} <= lite.ops()


@pytest.mark.slow
def test_batchnorm_folding_is_exact():
    for kind in ["dense", "conv", "depthwise", "separable", "conv1d", "depthwise1d", "separable1d"]:
        check_folding(kind)


def check_folding(kind):
    keras.utils.set_random_seed(1)
    layer = {
        "dense": lambda: L.Dense(6, use_bias=False),
        "conv": lambda: L.Conv2D(6, 3, padding="same"),
        "depthwise": lambda: L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
        "separable": lambda: L.SeparableConv2D(6, 3, padding="same"),
        "conv1d": lambda: L.Conv1D(6, 3, padding="causal", dilation_rate=2),
        "depthwise1d": lambda: L.DepthwiseConv1D(3, depth_multiplier=2),
        "separable1d": lambda: L.SeparableConv1D(6, 3, strides=2),
    }[kind]()
    shape = {"dense": (5,), "conv1d": (7, 3), "depthwise1d": (7, 3), "separable1d": (7, 3)}
    shape = shape.get(kind, (6, 6, 3))
    model = keras.Sequential([keras.Input(shape), layer, L.BatchNormalization(), L.ReLU()])
    rng = np.random.default_rng(0)
    bn = model.layers[1]
    channels = bn.gamma.shape[0]
    for var, values in [
        (bn.gamma, rng.uniform(0.5, 2, channels)),
        (bn.beta, rng.normal(size=channels)),
        (bn.moving_mean, rng.normal(size=channels)),
        (bn.moving_variance, rng.uniform(0.2, 3, channels)),
    ]:
        var.assign(values.astype(np.float32))
    x = rng.normal(size=(16,) + shape).astype(np.float32)
    folded = fold_batch_norms(model)
    assert not any(isinstance(lyr, L.BatchNormalization) for lyr in folded.layers)
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_zoo_of_layers_is_fully_int8(digits_image):
    (x, y), (x_test, _) = digits_image
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    a = L.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    b = L.SeparableConv2D(8, 3, padding="same")(a)
    b = L.BatchNormalization()(b)
    b = L.ReLU(max_value=6.0)(b)
    s = L.MaxPooling2D()(L.Add()([a, b]))
    c = L.Conv1D(4, 2)(L.Reshape((16, 8))(s))
    g = L.Concatenate()([L.GlobalAveragePooling2D()(s), L.Flatten()(c)])
    outputs = L.Dense(10, activation="softmax")(L.Dense(16, activation="tanh")(g))
    model = keras.Model(inputs, outputs)
    qat = quantize_model(model)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=1, batch_size=32, verbose=0)
    agree, lite = agreement(qat, x_test)
    assert agree >= 0.97
    expected = {"ADD", "CONCATENATION", "SOFTMAX", "TANH", "MEAN", "CONV_2D", "DEPTHWISE_CONV_2D"}
    assert expected <= lite.ops()


def file_scales(lite):
    return [float(d["quantization"][0]) for d in lite._interpreter.get_tensor_details()]


def assert_ranges_in_file(qat, lite):
    """Every learned range of the QAT model is the scale of a tensor of the file.

    A range the converter drops (it fuses the ops around it) would round the
    Keras model where TFLite does not: the two would then disagree.
    """
    scales = file_scales(lite)
    for layer in qat.layers:
        q = getattr(layer, "output_quantizer", layer)
        if not isinstance(q, ActivationQuantizer) or q.fixed_range is not None:
            continue
        scale, _ = quantizers.nudged_range(float(q.min_value), float(q.max_value))
        assert any(abs(s - scale) <= 1e-6 * scale for s in scales), layer.name


@pytest.mark.slow
def test_fused_relus_hard_swish_and_single_value_means_follow_the_converter():
    # The converter fuses a ReLU/ReLU6 into the ADD/SUB/MUL before it, turns
    # x * relu6(x + 3) / 6 into one HARD_SWISH, and removes a mean over 1x1:
    # the ranges in between go, so the QAT graph must not have them either.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    a = L.Conv2D(8, 1)(inputs)
    b = L.Conv2D(8, 1)(inputs)
    x = L.ReLU()(L.Add()([a, b]))
    x = keras.ops.relu6(x - 1.0)
    x = x * keras.ops.relu6(x + 3.0) / 6.0
    x = L.Conv2D(8, 4)(x)  # 1x1 output
    x = L.ReLU()(L.GlobalAveragePooling2D(keepdims=True)(x))
    x = L.Multiply()([x, L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    qat = quantize_model(keras.Model(inputs, L.Conv2D(4, 1)(x)))
    ops = [type(op).__name__ for op in qat.operations]
    swish = [
        op
        for op in qat.operations
        if getattr(getattr(op, "layer", None), "activation", None) is keras.activations.hard_silu
    ]
    assert len(swish) == 1 and ops.count("Relu6") == 1  # the chain is one hard swish
    assert ops.count("ActivationQuantizer") == 3  # input, relu6(x - 1), gate
    x = np.random.default_rng(0).normal(size=(64, 4, 4, 3)).astype(np.float32)
    qat.compile("sgd", "mse")
    qat.fit(x, np.zeros((64, 1, 1, 4)), epochs=1, verbose=0)
    lite = tfc.export.LiteModel(tfc.export.to_tflite(qat, quantization="int8", int8_io=True))
    assert lite.is_fully_int8(), lite.ops()
    assert "HARD_SWISH" in lite.ops() and not {"RELU", "RELU6", "MEAN", "QUANTIZE"} & lite.ops()
    assert_ranges_in_file(qat, lite)
    scale = quantizers.nudged_range(
        float(qat.layers[-1].output_quantizer.min_value),
        float(qat.layers[-1].output_quantizer.max_value),
    )[0]
    assert np.abs(lite.predict(x) - qat.predict(x, verbose=0)).max() <= 1.01 * scale


@pytest.mark.slow
def test_hard_swish_matches_the_int8_kernel_code_for_code():
    # TFLite's int8 HARD_SWISH works in 16-bit fixed point: for a few input
    # codes it lands one step away from rounding hard_swish(x); QAT computes
    # the kernel's integers, on every one of the 256 input codes.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((256,))
    swish = L.Activation("hard_swish")
    qat = quantize_model(keras.Model(inputs, L.Dense(4)(swish(inputs))))
    x = np.random.default_rng(0).uniform(-4, 8, (32, 256)).astype(np.float32)
    qat.compile("sgd", "mse")
    qat.fit(x, np.zeros((32, 4)), epochs=1, verbose=0)
    q = qat.layers[1]
    scale, zero = quantizers.nudged_range(float(q.min_value), float(q.max_value))
    grid = ((np.arange(-128, 128) - zero) * np.float32(scale)).astype(np.float32)[None]
    wrapper = qat.get_layer(f"quant_{swish.name}")
    ours = keras.Model(qat.inputs, wrapper.output).predict(grid, verbose=0)
    out = wrapper.output_quantizer
    out_scale, out_zero = quantizers.nudged_range(float(out.min_value), float(out.max_value))
    blob = tfc.export.to_tflite(qat, quantization="int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "for debugging purposes only": it is
        interpreter = Interpreter(model_content=blob, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    (tensor,) = [
        d
        for d in interpreter.get_tensor_details()
        if abs(d["quantization"][0] - out_scale) <= 1e-6 * out_scale and d["shape"][-1] == 256
    ]
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], grid)
    interpreter.invoke()
    codes = interpreter.get_tensor(tensor["index"]).astype(int)
    np.testing.assert_array_equal(np.round(ours / out_scale).astype(int) + out_zero, codes)
    grid = grid.astype(np.float64)
    rounded = np.floor(grid * np.clip(grid + 3, 0, 6) / 6 / out_scale + 0.5) + out_zero
    assert np.sum(np.clip(rounded, -128, 127) != codes) >= 1  # plain rounding would miss


def hard_swish_se_cnn():
    """A MobileNetV3-style CNN: hard-swish op chain, hard-sigmoid gate, SE block."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1))
    x = L.Conv2D(16, 3, padding="same")(inputs)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = x * keras.ops.relu6(x + 3.0) / 6.0
    x = L.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.Activation("hard_swish")(x)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(16, 1)(L.ReLU()(L.Conv2D(8, 1)(s)))
    x = L.Multiply()([x, L.ReLU(6.0)(s + 3.0) * (1.0 / 6.0)])
    x = L.GlobalAveragePooling2D()(L.Conv2D(16, 1)(x))
    return keras.Model(inputs, L.Dense(10)(x))


@pytest.mark.slow
def test_hard_swish_se_cnn_agrees_with_its_int8_file(digits_image):
    (x, y), (x_test, y_test) = digits_image
    x, x_test = (np.repeat(np.repeat(a, 2, axis=1), 2, axis=2) for a in (x, x_test))
    model = hard_swish_se_cnn()
    model.compile(keras.optimizers.Adam(1e-2), LOSS, metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.5  # a trained model
    qat = compile_fit(quantize_model(model), x, y, epochs=2, batch_size=32)
    agree, lite = agreement(qat, x_test)
    assert agree >= 0.99
    assert {"HARD_SWISH", "MEAN", "MUL", "ADD", "DEPTHWISE_CONV_2D"} <= lite.ops()
    assert_ranges_in_file(qat, lite)
    # The QAT model predicts the file's integers: logits at most a step or two
    # apart (float ties), and almost all of them equal.
    scale = lite.output_details["quantization"][0]
    error = np.abs(lite.predict(x_test) - qat.predict(x_test, verbose=0))
    assert error.max() <= 2.01 * scale
    assert np.mean(error > scale / 2) < 0.01


@pytest.mark.slow
def test_one_d_convolutions_are_fully_int8():
    # 1-D convs run as explicit 2-D ones: the converter cannot expand the dims
    # of a per-channel quantized kernel.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 4))
    x = L.Conv1D(8, 3, padding="causal", dilation_rate=2, use_bias=False)(inputs)
    x = L.ReLU()(L.BatchNormalization()(x))
    x = L.DepthwiseConv1D(3, depth_multiplier=2, strides=2, activation="relu")(x)
    x = L.SeparableConv1D(6, 3, padding="same")(x)
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(x)))
    qat = quantize_model(model)
    wrappers = [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert [w.per_channel for w in wrappers] == [True, True, True, False]
    assert wrappers[2].intermediate_quantizer is not None
    # The dilated conv's fused ReLU gets its own input range (no fusing across
    # SPACE_TO_BATCH_ND/BATCH_TO_SPACE_ND); the strided one's stays fused.
    assert wrappers[0].pre_activation_quantizer is not None
    assert wrappers[1].pre_activation_quantizer is None
    x = np.random.default_rng(0).normal(size=(64, 16, 4)).astype(np.float32)
    for _ in range(3):
        qat(x, training=True)
    lite = tfc.export.LiteModel(tfc.export.to_tflite(qat, quantization="int8", int8_io=True))
    assert lite.is_fully_int8(), lite.ops()
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= lite.ops()
    step, _ = lite.output_details["quantization"]
    np.testing.assert_allclose(lite.predict(x), qat.predict(x, verbose=0), atol=2 * step)
    kernel = wrappers[0].quantized_kernels()[0].numpy()  # (1, 3, 4, 8), per output channel
    for c in range(8):
        m = np.abs(wrappers[0].layer.kernel.numpy()[..., c]).max()
        expected = numpy_fake_quant(wrappers[0].layer.kernel.numpy()[..., c], -m, m, True)
        np.testing.assert_allclose(kernel[0, ..., c], expected, atol=1e-6)


@pytest.mark.slow
def test_rbm_layer_is_quantized(digits):
    (x, y), (x_test, _) = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), tfc.RBM(32), L.Dense(10)])
    qat = compile_fit(quantize_model(model), x, y, epochs=3, batch_size=32)
    wrapper = qat.layers[2]
    assert isinstance(wrapper, QuantizeWrapper) and isinstance(wrapper.layer, tfc.RBM)
    # The visible bias plays no part in the forward pass: frozen, so no "missing gradient".
    assert not any("visible_bias" in v.path for v in qat.trainable_weights)
    inputs_q, pre_q = qat.layers[1], wrapper.pre_activation_quantizer
    m = np.abs(wrapper.layer.kernel.numpy()).max()
    v = numpy_fake_quant(x_test[:8], float(inputs_q.min_value), float(inputs_q.max_value))
    pre = v @ numpy_fake_quant(wrapper.layer.kernel.numpy(), -m, m, narrow_range=True)
    pre = numpy_fake_quant(
        pre + wrapper.layer.hidden_bias.numpy(), float(pre_q.min_value), float(pre_q.max_value)
    )
    expected = numpy_fake_quant(1 / (1 + np.exp(-pre)), 0.0, 255 / 256)
    got = keras.Model(qat.inputs, wrapper.output).predict(x_test[:8], verbose=0)
    np.testing.assert_allclose(got, expected, atol=1 / 256 + 1e-6)
    assert np.mean(np.abs(got - expected) < 1e-6) > 0.95
    agree, lite = agreement(qat, x_test)
    assert agree >= 0.99 and "LOGISTIC" in lite.ops()


@pytest.mark.slow
def test_sparsity_is_preserved(float_mlp, digits):
    (x, y), _ = digits
    pruned = keras.models.clone_model(float_mlp)
    pruned.set_weights(float_mlp.get_weights())
    kernel = pruned.layers[0].kernel
    w = np.asarray(kernel)
    w[np.abs(w) < np.quantile(np.abs(w), 0.7)] = 0.0
    kernel.assign(w)
    qat = compile_fit(quantize_model(pruned), x, y, epochs=2)
    trained = np.asarray(qat.layers[2].layer.kernel)
    np.testing.assert_array_equal(trained[w == 0], 0.0)
    assert np.any(trained[w != 0] != w[w != 0])
    weights = tfc.export.LiteModel(tfc.export.to_tflite(qat, quantization="int8")).weights()
    lite_kernel = max((values for values, _ in weights.values()), key=np.size)
    assert lite_kernel.size == w.size and np.mean(lite_kernel == 0) >= np.mean(w == 0)


@keras.saving.register_keras_serializable(package="test_qat")
class TwoLayerNet(keras.Model):
    def __init__(self, hidden=32, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.first = L.Dense(hidden, activation="relu")
        self.blocks = [L.Dense(hidden), L.ReLU()]
        self.head = L.Dense(10)

    def call(self, x):
        x = self.first(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


@pytest.mark.slow
def test_subclassed_model(digits, tmp_path):
    (x, y), (x_test, _) = digits
    model = TwoLayerNet()
    model(x[:1])
    compile_fit(model, x, y, epochs=4)
    qat = quantize_model(model)
    assert isinstance(qat, QuantizedModel)
    assert isinstance(qat.model.first, QuantizeWrapper)
    assert [type(b) for b in qat.model.blocks] == [QuantizeWrapper, QuantizeWrapper]
    assert len(qat.trainable_weights) == 6
    compile_fit(qat, x, y, epochs=1)
    agree, _ = agreement(qat, x_test)
    assert agree >= 0.99
    path = tmp_path / "sub.keras"
    qat.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        reloaded.predict(x_test, verbose=0), qat.predict(x_test, verbose=0), atol=1e-6
    )


@keras.saving.register_keras_serializable(package="test_qat")
class WithEncoder(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # auto-named layers: re-creating the model (copy, `.keras` load) renames them
        self.encoder = keras.Sequential(
            [keras.Input((64,)), L.Dense(16, activation="relu"), L.Dense(12, activation="relu")]
        )
        self.head = L.Dense(10)

    def call(self, x):
        return self.head(self.encoder(x))


def test_sub_model_configs_and_masks_survive_reload(digits, tmp_path):
    # A Sequential inside a subclassed model: per-layer configs for its layers used to
    # be accepted and ignored, and a pruned kernel's mask broke `.keras` loading
    # ("expected 0 variables, but received 1") since it was re-decided from fresh weights.
    (x, y), (x_test, _) = digits
    model = WithEncoder()
    model(x[:1])
    first, second = model.encoder.layers
    w = first.kernel.numpy()
    w[:, ::2] = 0.0
    first.kernel.assign(w)
    configs = {second.name: QuantizeConfig(mode="float")}
    with pytest.raises(ValueError, match=rf"\['{second.name}'\]. Received: fully_int8=True"):
        quantize_model(model, layer_configs=configs, fully_int8=True)
    qat = quantize_model(model, layer_configs=configs)
    kinds = ["InputLayer", "ActivationQuantizer", "QuantizeWrapper", "Dense"]
    assert [type(layer).__name__ for layer in qat.model.encoder.layers] == kinds
    compile_fit(qat, x[:256], y[:256], epochs=1)
    np.testing.assert_array_equal(qat.model.encoder.layers[2].layer.kernel.numpy()[:, ::2], 0.0)
    qat.save(tmp_path / "enc.keras")
    reloaded = keras.saving.load_model(tmp_path / "enc.keras")
    assert [type(layer).__name__ for layer in reloaded.model.encoder.layers] == kinds
    np.testing.assert_allclose(
        reloaded.predict(x_test, verbose=0), qat.predict(x_test, verbose=0), atol=1e-6
    )
    mask = reloaded.model.encoder.layers[2].kernel_masks[0].numpy()
    np.testing.assert_array_equal(mask, w != 0)


@pytest.mark.slow
def test_mirrored_strategy_parity(mirrored, digits):
    (x, y), _ = digits
    x, y = x[:256], y[:256]

    def train(strategy):
        with strategy.scope():
            qat = quantize_model(small_mlp(hidden=(32,), seed=3))
            qat.compile(keras.optimizers.SGD(0.1), LOSS)
        qat.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
        return [np.asarray(w) for w in qat.weights]

    single = train(tf.distribute.get_strategy())
    double = train(mirrored)
    for a, b in zip(single, double):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_activation_range_is_moving_average_of_batch_extremes(digits):
    (x, y), _ = digits
    x, y = x[:256], y[:256]
    qat = quantize_model(small_mlp(hidden=(8,)), layer_configs=None)
    compile_fit(qat, x, y, epochs=1, batch_size=64, shuffle=False)
    lo, hi = None, None
    for start in range(0, 256, 64):
        b_lo, b_hi = min(x[start : start + 64].min(), 0), max(x[start : start + 64].max(), 0)
        lo = b_lo if lo is None else 0.99 * lo + 0.01 * b_lo
        hi = b_hi if hi is None else 0.99 * hi + 0.01 * b_hi
    q = qat.layers[1]
    np.testing.assert_allclose([float(q.min_value), float(q.max_value)], [lo, hi], rtol=1e-6)


@pytest.mark.slow
def test_layer_opt_out_and_unsupported_layers(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            L.Dense(16, name="d1"),
            L.RMSNormalization(name="ln"),
            L.Dense(10, name="d2"),
        ]
    )
    with pytest.warns(UserWarning, match="ln") as record:
        qat = quantize_model(model, layer_configs={"d2": QuantizeConfig(mode="float")})
    warning = next(r for r in record if "Leaving these layers" in str(r.message))
    assert warning.filename == __file__  # it points at the caller's line
    assert [type(layer).__name__ for layer in qat.layers[1:]] == [
        "ActivationQuantizer",
        "QuantizeWrapper",
        "RMSNormalization",
        "Dense",
    ]
    with pytest.raises(ValueError, match=r"\['ln', 'd2'\]"):
        quantize_model(model, layer_configs={"d2": QuantizeConfig(mode="float")}, fully_int8=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize_model(model, layer_configs={"ln": QuantizeConfig(mode="float")})
    compile_fit(qat, x[:128], y[:128], epochs=1)
    with pytest.raises(ValueError, match=r"compute in float: \[.*'RSQRT'"):
        tfc.export.to_tflite(qat, quantization="int8", int8_io=True)
    with pytest.warns(UserWarning, match=r"still computes these ops in float: \[.*'RSQRT'"):
        tfc.export.to_tflite(qat, quantization="int8")


class ScaledDense(L.Dense):
    def call(self, x):
        return 2.0 * super().call(x)


def test_conv3d_stays_float_with_a_warning():
    # TFLite has no int8 CONV_3D kernel.
    model = keras.Sequential(
        [keras.Input((4, 4, 4, 1)), L.Conv3D(2, 2, name="c3"), L.Flatten(), L.Dense(3)]
    )
    with pytest.warns(UserWarning, match="c3"):
        qat = quantize_model(model)
    assert type(qat.get_layer("c3")) is L.Conv3D
    with pytest.raises(ValueError, match=r"\['c3'\]"):
        quantize_model(model, fully_int8=True)


def test_dense_subclass_with_own_call_stays_float():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), L.Dense(3), ScaledDense(2, name="scaled")])
    with pytest.warns(UserWarning, match="scaled"):
        qat = quantize_model(model)
    assert type(qat.layers[-1]) is ScaledDense
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(
        qat.layers[-1](qat.layers[-2](x)).numpy(), qat.predict(x, verbose=0), atol=1e-6
    )


@pytest.mark.slow
def test_per_tensor_and_per_channel_configs(float_mlp, digits):
    (x, y), (x_test, _) = digits
    first, second = (layer.name for layer in float_mlp.layers)
    per_channel = QuantizeConfig(weight_granularity="per_channel")
    qat = quantize_model(float_mlp, layer_configs={first: per_channel})
    wrappers = [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert wrappers[0].per_channel and not wrappers[1].per_channel
    saved = qat.get_layer(f"quant_{first}").get_config()["quantize_config"]["config"]
    assert saved["weight_granularity"] == "per_channel"
    compile_fit(qat, x, y, epochs=1)
    agree, lite = agreement(qat, x_test)
    assert agree >= 0.99 and {"CONV_2D", "FULLY_CONNECTED"} <= lite.ops()
    scales = [
        len(np.atleast_1d(d["quantization_parameters"]["scales"]))
        for d in lite._interpreter.get_tensor_details()
    ]
    assert max(scales) == wrappers[0].layer.units


def test_config_round_trips():
    config = QuantizeConfig(weight_granularity="per_tensor", ema_decay=0.9)
    assert QuantizeConfig.from_config(config.get_config()) == config
    wrapper = QuantizeWrapper(L.Dense(3, activation="sigmoid"), config)
    clone = QuantizeWrapper.from_config(json.loads(json.dumps(wrapper.get_config())))
    assert clone.quantize_config == config and clone.layer.units == 3
    quantizer = ActivationQuantizer(ema_decay=0.5, fixed_range=(0.0, 1.0))
    assert ActivationQuantizer.from_config(quantizer.get_config()).fixed_range == (0.0, 1.0)


def test_call_arguments_reach_only_a_custom_layers_own_call():
    wrapper = QuantizeWrapper(L.Dense(3))
    with pytest.raises(ValueError, match=r"Dense takes no call arguments.*\['scale'\]"):
        wrapper(np.ones((2, 4), "float32"), scale=2.0)


def test_invalid_config_values():
    for kwargs, match in [
        ({"mode": "int4"}, "mode=int4"),
        ({"num_bits": 4}, "num_bits=4"),
        ({"weight_granularity": "per_row"}, "weight_granularity=per_row"),
        ({"ema_decay": 1.0}, "ema_decay=1.0"),
        ({"ema_decay": True}, "ema_decay=True"),
        ({"preserve_sparsity": "no"}, "preserve_sparsity=no"),
    ]:
        with pytest.raises(ValueError, match=match):
            QuantizeConfig(**kwargs)
    # NumPy scalars are numbers too (np.float32 used to be rejected as out of range)
    assert QuantizeConfig(ema_decay=np.float32(0.5)).ema_decay == 0.5
    assert ActivationQuantizer(ema_decay=np.float32(0.5)).ema_decay == 0.5
    for name in ("preserve_sparsity", "fully_int8"):
        with pytest.raises(ValueError, match=f"{name}=None"):
            quantize_model(small_mlp(), **{name: None})


def test_bad_models():
    with pytest.raises(ValueError, match="not built"):
        quantize_model(keras.Sequential([L.Dense(3)]))
    no_weights = keras.Sequential([keras.Input((4,)), L.Flatten(), L.Dropout(0.1)])
    with pytest.raises(ValueError, match="no layer that QAT can quantize"):
        quantize_model(no_weights)
    qat = quantize_model(small_mlp())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(qat)
    with pytest.raises(ValueError, match="not in the model"):
        quantize_model(small_mlp(), layer_configs={"nope": QuantizeConfig()})
    with pytest.raises(ValueError, match="must be a QuantizeConfig"):
        quantize_model(small_mlp(), layer_configs={"dense": "float"})
    with pytest.raises(ValueError, match="model="):
        quantize_model("not a model")
    with pytest.raises(ValueError, match="strip_pruning"):
        quantize_model(tfc.pruning.prune_low_magnitude(small_mlp()))
    shell = TwoLayerNet()
    with pytest.warns(UserWarning):  # Keras: marked built with unbuilt layers
        shell.build((None, 64))
    with pytest.raises(ValueError, match=r"not built: \['dense"):
        quantize_model(shell)
    for fixed_range in [(0.5, 1.0), 0.5, (0.0, 0.0), ("a", 1.0), (-1.0, 0.0, 1.0)]:
        with pytest.raises(ValueError, match=r"Received: fixed_range="):
            ActivationQuantizer(fixed_range=fixed_range)
    bn = L.BatchNormalization()
    bn.build((None, 3))
    with pytest.raises(ValueError, match=r"`bn` normalizes 3 channels .*kernel.shape=\(2, 4\)"):
        tfc.quantization.fold_batch_norm(np.ones((2, 4)), None, bn)


@pytest.mark.slow
def test_standalone_affine_layers_run_as_int8_mul_and_add(digits_image):
    # EfficientNet's input Rescaling/Normalization, DenseNet's BN-ReLU after a
    # Concatenate, ResNetV2's BN after an Add: none has a kernel to fold into.
    (x, y), (x_test, _) = digits_image
    inputs = keras.Input((8, 8, 1))
    h = L.Rescaling(1.7, offset=-0.3)(inputs)
    h = L.Normalization(mean=0.23, variance=0.61)(h)
    a = L.Conv2D(8, 3, padding="same")(h)
    b = L.Conv2D(8, 3, padding="same")(h)
    h = L.Concatenate()([a, b])
    h = L.BatchNormalization()(h)
    h = L.ReLU()(h)
    c = L.Conv2D(16, 3, padding="same", use_bias=False)(h)
    c = L.BatchNormalization()(c)  # folded into the conv
    h = L.Add()([c, L.Conv2D(16, 1)(h)])
    h = L.BatchNormalization()(h)
    h = L.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, L.Dense(10)(h))
    model = compile_fit(model, x, y, epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qat = quantize_model(model)
    affine = [w for w in qat.layers if isinstance(w, QuantizeWrapper) and w.kind is None
              and isinstance(w.layer, (L.BatchNormalization, L.Rescaling, L.Normalization))]
    assert len(affine) == 4
    assert [w.fused_activation for w in affine].count("relu") == 1
    assert not any(isinstance(layer, L.ReLU) for layer in qat.layers)
    compile_fit(qat, x, y, epochs=1)
    agree, lite = agreement(qat, x_test)
    assert lite.is_fully_int8()
    assert {"MUL", "ADD", "CONCATENATION"} <= lite.ops()
    # Not 0.99: an ADD of a constant shifts a whole grid by one fixed fraction of a
    # step; here that fraction is a half, and TFLite's ADD rounds the ties away from
    # zero where FakeQuant rounds them up (one step on part of the normalized input).
    # Measured 99.4% with oneDNN's kernels (Intel), 97.5% without (AMD, ARM).
    assert agree >= 0.97


@pytest.mark.slow
def test_concatenate_inputs_take_its_range_as_tflite_does(digits_image):
    # The converter writes a layer read only by a CONCATENATION straight onto the
    # concatenation's grid; one read elsewhere too keeps its own and is requantized.
    (x, y), (x_test, _) = digits_image

    def model(second_reader):
        inputs = keras.Input((8, 8, 1))
        a = L.Conv2D(8, 3, padding="same", name="a")(inputs)
        b = L.Conv2D(8, 3, padding="same", activation="relu", name="b")(inputs)
        c = L.ReLU()(L.Conv2D(8, 3, padding="same", name="c")(inputs))
        h = L.Conv2D(16, 3, padding="same")(L.Concatenate()([a, b, c]))
        if second_reader:
            h = L.Add()([h, L.Conv2D(16, 1)(a)])
        return keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(h)))

    def own_ranges(qat):
        wrappers = {w.layer.name: w for w in qat.layers if isinstance(w, QuantizeWrapper)}
        return [wrappers[name].output_quantizer is not None for name in "abc"]

    assert own_ranges(quantize_model(model(True))) == [True, False, False]
    qat = quantize_model(compile_fit(model(False), x, y, epochs=2))
    assert own_ranges(qat) == [False, False, False]
    compile_fit(qat, x, y, epochs=1)
    agree, lite = agreement(qat, x_test)
    assert agree == 1.0
    out = np.abs(lite.predict(x_test) - qat.predict(x_test, verbose=0))
    assert out.max() <= 2 * lite.output_details["quantization"][0] + 1e-6


@pytest.mark.slow
def test_swish_runs_as_int8_logistic_then_mul(digits_image):
    # EfficientNet's activation: TFLite rounds the sigmoid onto its 1/256 grid first.
    (x, y), (x_test, _) = digits_image
    inputs = keras.Input((8, 8, 1))
    h = L.Conv2D(16, 3, padding="same")(inputs)
    h = L.BatchNormalization()(h)
    h = L.Activation("swish")(h)
    se = L.GlobalAveragePooling2D(keepdims=True)(h)
    se = L.Conv2D(16, 1, activation="sigmoid")(se)
    h = L.Multiply()([h, se])
    h = L.Conv2D(16, 3, padding="same", activation="silu")(h)
    model = keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(h)))
    qat = quantize_model(compile_fit(model, x, y, epochs=3))
    compile_fit(qat, x, y, epochs=1)
    agree, lite = agreement(qat, x_test)
    assert agree == 1.0
    assert {"LOGISTIC", "MUL"} <= lite.ops()


def _convnext_like():
    """ConvNeXt's parts at toy size: a nested Sequential stem (patchify conv + LayerNorm),
    a block (depthwise 7x7 conv, LayerNorm, GELU MLP, LayerScale, residual ADD), a nested
    Sequential downsampling (LayerNorm + strided conv)."""
    keras.utils.set_random_seed(0)
    layer_scale = tfc._compat.convnext_layer_scale()
    inputs = keras.Input((8, 8, 1))
    stem = keras.Sequential([L.Conv2D(16, 2, strides=2), L.LayerNormalization()], name="stem")
    x = stem(inputs)
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.Dense(32, activation="gelu")(L.LayerNormalization()(y))
    x = L.Add()([x, layer_scale(0.5, 16, name="scale")(L.Dense(16)(y))])
    down = keras.Sequential([L.LayerNormalization(), L.Conv2D(32, 2, strides=2)], name="down")
    x = L.GlobalAveragePooling2D()(down(x))
    return keras.Model(inputs, L.Dense(10)(x))


@pytest.mark.slow
def test_convnext_parts_quantize_fully_int8():
    (x, _), _ = tfc.datasets.load_digits(shape="image")
    model = _convnext_like()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the nested models and LayerScale are quantized
        qat = quantize_model(model)
    kinds = [type(layer).__name__ for layer in qat.layers]
    assert "Sequential" not in kinds and kinds.count("QuantizedLayerNorm") == 3
    for batch in np.array_split(x[:256], 4):
        qat(batch, training=True)  # ranges
    lite = tfc.export.LiteModel(tfc.export.to_tflite(qat, quantization="int8"))
    assert lite.is_fully_int8(), lite.float_ops()
    reference = qat.predict(x[:256], verbose=0)
    step = (reference.max() - reference.min()) / 255
    assert np.percentile(np.abs(lite.predict(x[:256]) - reference), 99) <= 4 * step
    # Leaving a nested model out leaves its layers float.
    partial = quantize_model(model, exclude=["stem"])
    kinds = [type(layer).__name__ for layer in partial.layers]
    assert kinds.count("Conv2D") == 1 and kinds.count("QuantizedLayerNorm") == 2

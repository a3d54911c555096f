"""Cluster-preserving QAT (CQAT/PCQAT): `quantize_model(..., preserve_clusters=True)`."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from conftest import small_mlp

import tfcompress as tfc
from tfcompress.clustering import cluster_weights, strip_clustering
from tfcompress.quantization import QuantizeConfig, QuantizedModel, QuantizeWrapper, quantize_model

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compile_fit(model, x, y, epochs=1, lr=1e-3, batch_size=64):
    model.compile(keras.optimizers.Adam(lr), LOSS, metrics=["accuracy"])
    if epochs:
        model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


def clustered_mlp(x, y, k, hidden=(32,), per_channel=False, sparsity=None, epochs=10):
    """A trained MLP, optionally pruned, clustered with `k` clusters and stripped."""
    model = compile_fit(small_mlp(hidden=hidden), x, y, epochs=epochs)
    if sparsity is not None:
        for layer in model.layers:
            w = layer.kernel.numpy()
            w[np.abs(w) < np.quantile(np.abs(w), sparsity)] = 0.0
            layer.kernel.assign(w)
    clustered = cluster_weights(
        model,
        k,
        cluster_per_channel=per_channel,
        cluster_centroids_init="linear",
        preserve_sparsity=sparsity is not None,
    )
    compile_fit(clustered, x, y, epochs=1, lr=3e-4)
    return compile_fit(strip_clustering(clustered), x, y, epochs=0)


def wrappers(qat):
    return [layer for layer in qat.layers if getattr(layer, "kernel_centroids", None)]


def quantized(qat):
    return [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]


def max_distinct_per_channel(kernel, axis=-1):
    kernel = np.moveaxis(np.asarray(kernel), axis, 0).reshape(np.shape(kernel)[axis], -1)
    return max(len(np.unique(row)) for row in kernel)


def int8_kernels(blob, axes=False):
    """Every int8 constant of a TFLite file, shaped (with its quantized axis if `axes`)."""
    constants = {
        name: values
        for name, (values, _) in tfc.export.LiteModel(blob).weights().items()
        if values.dtype == np.int8
    }
    details = Interpreter(model_content=blob).get_tensor_details()
    return [
        (w, d["quantization_parameters"]["quantized_dimension"]) if axes else w
        for d in details
        if d["name"] in constants
        for w in [constants[d["name"]].reshape(d["shape"])]
    ]


@pytest.mark.slow
def test_cluster_count_per_channel_is_kept_in_keras_and_tflite(digits):
    (x, y), (xt, _) = digits
    final = clustered_mlp(x, y, 4, hidden=(96,), per_channel=True, epochs=4)
    kernels = [layer.kernel.numpy() for layer in final.layers]
    qat = quantize_model(final, preserve_clusters=True)
    first, second = wrappers(qat)
    # 96 channels x 4 values > 256: one centroid row per channel; 10 x 4 fit in one row
    assert tuple(first.kernel_centroids[0].shape) == (96, 4)
    assert second.kernel_centroids[0].shape[0] == 1 and second.kernel_centroids[0].shape[1] <= 40
    before = [w.float_kernels()[0].numpy() for w in (first, second)]
    indices = [w.kernel_indices[0].numpy().copy() for w in (first, second)]
    for w, kernel, b in zip((first, second), kernels, before):
        np.testing.assert_array_equal(b, kernel)  # the layout rebuilds the kernel exactly
        np.testing.assert_array_equal(
            b, w.kernel_centroids[0].numpy().ravel()[w.kernel_indices[0].numpy()]
        )
        assert not w.layer.kernel.trainable and w.kernel_centroids[0].trainable
    compile_fit(qat, x, y, epochs=2)
    for w, b, idx in zip((first, second), before, indices):
        after = w.float_kernels()[0].numpy()
        assert np.mean(after != b) > 0.7  # the centroids trained...
        np.testing.assert_array_equal(w.kernel_indices[0].numpy(), idx)  # ...the binding did not
        np.testing.assert_array_equal(after, w.kernel_centroids[0].numpy().ravel()[idx])
        assert 2 <= max_distinct_per_channel(after) <= 4
    blob = tfc.export.to_tflite(qat, quantization="int8", int8_io=True)
    lite = tfc.export.LiteModel(blob)
    assert lite.is_fully_int8()
    weights = int8_kernels(blob)
    assert [w.shape for w in weights] == [(96, 64), (10, 96)]
    assert all(2 <= max_distinct_per_channel(w, axis=0) <= 4 for w in weights)
    agree = np.mean(np.argmax(lite.predict(xt), -1) == np.argmax(qat.predict(xt, verbose=0), -1))
    assert agree >= 0.98


@pytest.mark.slow
def test_centroid_gradient_is_the_sum_of_member_gradients(digits):
    (x, y), _ = digits
    final = clustered_mlp(x, y, 6, epochs=2)
    cqat = quantize_model(final, preserve_clusters=True)
    plain = quantize_model(final)  # same forward pass, kernel trained per weight
    wrapper, plain_wrapper = wrappers(cqat)[0], quantized(plain)[0]
    with tf.GradientTape() as tape:
        loss = LOSS(y[:128], cqat(x[:128], training=False))
    grad_c = tape.gradient(loss, wrapper.kernel_centroids[0]).numpy().ravel()
    with tf.GradientTape() as tape:
        loss_plain = LOSS(y[:128], plain(x[:128], training=False))
    grad_w = tape.gradient(loss_plain, plain_wrapper.layer.kernel).numpy()
    np.testing.assert_allclose(float(loss), float(loss_plain), rtol=1e-6)
    idx = wrapper.kernel_indices[0].numpy()
    expected = np.bincount(idx.ravel(), weights=grad_w.ravel(), minlength=grad_c.size)
    np.testing.assert_allclose(grad_c, expected, rtol=1e-4, atol=1e-7)
    assert np.sum(np.abs(expected) > 0) >= 5


@pytest.mark.slow
def test_pruned_and_clustered_zeros_stay_exactly_zero(digits):
    (x, y), (xt, _) = digits
    final = clustered_mlp(x, y, 8, sparsity=0.6, epochs=4)
    zeros = [layer.kernel.numpy() == 0 for layer in final.layers]
    assert all(np.mean(z) >= 0.6 for z in zeros)
    qat = compile_fit(quantize_model(final, preserve_clusters=True), x, y, epochs=2)
    for w, was_zero in zip(wrappers(qat), zeros):
        kernel = w.float_kernels()[0].numpy()
        np.testing.assert_array_equal(kernel == 0, was_zero)
        centroids = w.kernel_centroids[0].numpy().ravel()
        zero_slots = np.unique(w.kernel_indices[0].numpy()[was_zero])
        np.testing.assert_array_equal(centroids[zero_slots], 0.0)  # the zero centroid is pinned
        assert len(np.unique(kernel)) <= 8
    blob = tfc.export.to_tflite(qat, quantization="int8", int8_io=True)
    for w, was_zero in zip(int8_kernels(blob), zeros):
        np.testing.assert_array_equal(w.T == 0, was_zero)
        assert len(np.unique(w)) <= 8


@pytest.mark.slow
def test_accuracy_of_clustered_digits_mlp_is_kept(digits):
    (x, y), (xt, yt) = digits
    final = clustered_mlp(x, y, 16, hidden=(64,), epochs=20)
    base = final.evaluate(xt, yt, verbose=0)[1]
    qat = compile_fit(quantize_model(final, preserve_clusters=True), x, y, epochs=2, lr=3e-4)
    keras_acc = qat.evaluate(xt, yt, verbose=0)[1]
    blob = tfc.export.to_tflite(qat, quantization="int8", int8_io=True)
    lite_acc = float(np.mean(np.argmax(tfc.export.LiteModel(blob).predict(xt), -1) == yt))
    print(f"clustered float {base:.4f}, CQAT Keras {keras_acc:.4f}, int8 TFLite {lite_acc:.4f}")
    assert keras_acc >= base - 0.012 and lite_acc >= base - 0.012, (base, keras_acc, lite_acc)
    assert all(len(np.unique(w)) <= 16 for w in int8_kernels(blob))


@keras.saving.register_keras_serializable(package="test_cqat")
class Net(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = L.Dense(24, activation="relu")
        self.head = L.Dense(10)

    def call(self, x):
        return self.head(self.first(x))


@pytest.mark.slow
def test_subclassed_model_round_trip(digits, tmp_path):
    (x, y), (xt, _) = digits
    net = Net()
    net(x[:1])
    compile_fit(net, x, y, epochs=2)
    sub = strip_clustering(cluster_weights(net, 4))
    sub_qat = compile_fit(quantize_model(sub, preserve_clusters=True), x[:512], y[:512])
    assert isinstance(sub_qat, QuantizedModel)
    assert tuple(sub_qat.model.first.kernel_centroids[0].shape) == (1, 4)
    sub_qat.save(tmp_path / "sub.keras")
    reloaded = keras.saving.load_model(tmp_path / "sub.keras")
    np.testing.assert_allclose(
        reloaded.predict(xt, verbose=0), sub_qat.predict(xt, verbose=0), atol=1e-6
    )
    assert len(np.unique(reloaded.model.first.float_kernels()[0].numpy())) <= 4


def test_per_layer_configs_and_defaults(digits):
    (x, y), _ = digits
    model = small_mlp(hidden=(16,))
    first = model.layers[0]
    w, values = first.kernel.numpy(), np.array([-0.2, 0.05, 0.3], np.float32)
    first.kernel.assign(values[np.argmin(np.abs(w[..., None] - values), -1)])  # 3 clusters
    with pytest.raises(ValueError, match=r"Layer 'dense_1' .*not clustered"):
        quantize_model(model, preserve_clusters=True)
    with pytest.raises(ValueError, match=r"Layer 'dense_1'"):
        quantize_model(model, layer_configs={"dense_1": QuantizeConfig(preserve_clusters=True)})
    opted = quantize_model(
        model,
        preserve_clusters=True,
        layer_configs={"dense_1": QuantizeConfig(preserve_clusters=False)},
    )
    selected = quantize_model(
        model, layer_configs={first.name: QuantizeConfig(preserve_clusters=True)}
    )
    for qat in (opted, selected):
        assert [w.layer.name for w in wrappers(qat)] == [first.name]
        assert tuple(wrappers(qat)[0].kernel_centroids[0].shape) == (1, 3)
    off = quantize_model(model)  # preserve_clusters=False: the kernel trains as before
    assert not wrappers(off) and all(w.layer.kernel.trainable for w in quantized(off))
    assert "cluster_shapes" not in quantized(off)[0].get_config()


def test_bad_inputs_name_the_problem():
    model = small_mlp(hidden=(8,))
    for value in ["yes", None, 1.5]:
        with pytest.raises(ValueError, match=f"preserve_clusters={value}"):
            quantize_model(model, preserve_clusters=value)
    with pytest.raises(ValueError, match="preserve_clusters=maybe"):
        QuantizeConfig(preserve_clusters="maybe")
    config = QuantizeConfig(preserve_clusters=True)
    assert QuantizeConfig.from_config(config.get_config()) == config
    with pytest.raises(ValueError, match=r"Layer 'dense' .*`kernel` is not clustered"):
        quantize_model(model, preserve_clusters=True)


@pytest.mark.slow
def test_mirrored_strategy_parity(mirrored, digits):
    (x, y), _ = digits
    x, y = x[:256], y[:256]
    final = strip_clustering(cluster_weights(small_mlp(hidden=(32,), seed=3), 6))

    def train(strategy):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            qat = quantize_model(final, preserve_clusters=True)
            qat.compile(keras.optimizers.SGD(0.1), LOSS)
        qat.fit(x, y, epochs=2, batch_size=64, shuffle=False, verbose=0)
        return qat

    single, double = train(tf.distribute.get_strategy()), train(mirrored)
    for a, b in zip(single.weights, double.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    kernel = wrappers(double)[0].float_kernels()[0].numpy()
    assert len(np.unique(kernel)) <= 6
    assert not np.array_equal(kernel, final.layers[0].kernel.numpy())


def cluster_by_hand(model, k):
    """Snaps every kernel, per output channel, to `k` evenly spaced values (NumPy)."""
    for layer in model.layers:
        names = ["kernel"]
        if hasattr(layer, "pointwise_kernel"):
            names = ["depthwise_kernel", "pointwise_kernel"]
        for name in names:
            var = getattr(layer, name, None)
            if var is None or isinstance(layer, L.BatchNormalization):
                continue
            w = var.numpy()
            depthwise = isinstance(layer, L.DepthwiseConv2D) or name == "depthwise_kernel"
            view = w.reshape(-1, w.shape[-1] * (w.shape[-2] if depthwise else 1))
            for j in range(view.shape[1]):
                values = np.linspace(view[:, j].min(), view[:, j].max(), k)
                view[:, j] = values[np.argmin(np.abs(view[:, j, None] - values), -1)]
            var.assign(view.reshape(w.shape))


@pytest.mark.slow
def test_every_layer_kind_keeps_per_channel_count_through_folding(digits_image):
    (x, y), _ = digits_image
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(inputs))
    h = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu")(h)
    h = L.SeparableConv2D(8, 3, activation="relu")(h)
    h = L.Conv1D(4, 2)(L.Reshape((36, 8))(h))
    model = keras.Model(inputs, L.Dense(10)(L.Flatten()(h)))
    compile_fit(model, x, y, epochs=1)
    cluster_by_hand(model, 4)
    qat = quantize_model(model, preserve_clusters=True)
    # the BatchNorm folded into the conv scales each channel: 4 values per channel
    assert tuple(wrappers(qat)[0].kernel_centroids[0].shape) == (1, 32)
    compile_fit(qat, x[:512], y[:512])
    n_kernels = 0
    for wrapper in wrappers(qat):
        for i, kernel in enumerate(wrapper.float_kernels()):
            kernel = kernel.numpy()
            depthwise = wrapper.kind.depthwise or (wrapper.kind.separable and i == 0)
            view = kernel.reshape(-1, kernel.shape[-1] * (kernel.shape[-2] if depthwise else 1))
            assert 2 <= max_distinct_per_channel(view) <= 4, wrapper.name
            n_kernels += 1
    assert n_kernels == 6
    blob = tfc.export.to_tflite(qat, quantization="int8", int8_io=True)
    assert tfc.export.LiteModel(blob).is_fully_int8()
    counts = [max_distinct_per_channel(w, axis) for w, axis in int8_kernels(blob, axes=True)]
    assert len(counts) == 6 and all(2 <= c <= 4 for c in counts), counts


@pytest.mark.slow
def test_clustered_depthwise_with_folded_batchnorm_is_accepted():
    # Folding BatchNorm scales each 3x3 depthwise channel: 9 weights, up to 8 distinct
    # values, which the "is it clustered" rule alone would reject. The kernel is
    # checked before folding; after it each channel keeps its <= 8 values.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 16)),
            L.DepthwiseConv2D(3, use_bias=False),
            L.BatchNormalization(),
            L.Flatten(),
            L.Dense(3),
        ]
    )
    rng = np.random.default_rng(0)
    model.layers[1].gamma.assign(rng.uniform(0.5, 2.0, 16).astype(np.float32))
    model.layers[1].moving_variance.assign(rng.uniform(0.5, 2.0, 16).astype(np.float32))
    for layer, k in [(model.layers[0], 8), (model.layers[3], 4)]:
        w = layer.kernel.numpy()
        values = np.linspace(w.min(), w.max(), k).astype(np.float32)
        layer.kernel.assign(values[np.argmin(np.abs(w[..., None] - values), -1)])
    qat = quantize_model(model, preserve_clusters=True)
    depthwise = wrappers(qat)[0]
    before = depthwise.float_kernels()[0].numpy()
    np.testing.assert_array_equal(before, depthwise.layer.kernel.numpy())  # the folded kernel
    assert max_distinct_per_channel(before.reshape(9, 16)) <= 8
    x = rng.normal(size=(64, 8, 8, 16)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    compile_fit(qat, x, y, epochs=2, lr=1e-2, batch_size=16)
    kernel = depthwise.float_kernels()[0].numpy().reshape(9, 16)
    assert max_distinct_per_channel(kernel) <= 8
    assert not np.allclose(kernel, depthwise.layer.kernel.numpy().reshape(9, 16))  # trained
    blob = tfc.export.to_tflite(qat, quantization="int8", int8_io=True)
    counts = [max_distinct_per_channel(w, axis) for w, axis in int8_kernels(blob, axes=True)]
    assert len(counts) == 2 and counts[0] <= 8 and counts[1] <= 4, counts

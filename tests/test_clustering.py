"""Tests of tfcompress.clustering: k-means maths, the wrapper, strip, sparsity, export."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from conftest import compile_classifier as _compile
from conftest import small_mlp
from sklearn.cluster import KMeans

import tfcompress as tfc
from tfcompress.clustering import (
    ClusterWeights,
    cluster_weights,
    init_centroids,
    kmeans_1d,
    strip_clustering,
)


def _nearest_numpy(values, centroids):
    return centroids[np.argmin(np.abs(values[..., None] - centroids), axis=-1)]


# ---------------------------------------------------------------- k-means maths


@pytest.mark.parametrize("k", [2, 5, 16])
def test_kmeans_1d_matches_scikit_learn_lloyd(k):
    rng = np.random.default_rng(k)
    values = np.concatenate([rng.normal(size=300), rng.laplace(2, 0.5, size=200)])
    init = np.sort(rng.choice(values, size=k, replace=False))
    ours = kmeans_1d(values, init)
    theirs = KMeans(k, init=init[:, None], n_init=1, tol=0, max_iter=300).fit(values[:, None])
    np.testing.assert_allclose(ours, np.sort(theirs.cluster_centers_.ravel()), atol=1e-9)


def test_centroid_initialisations():
    rng = np.random.default_rng(0)
    values = rng.normal(size=1000)
    np.testing.assert_allclose(
        init_centroids(values, 5, "linear", rng), np.linspace(values.min(), values.max(), 5)
    )
    density = init_centroids(values, 4, "density", rng)
    shares = [np.mean(values <= c) for c in density]
    np.testing.assert_allclose(shares, [0.125, 0.375, 0.625, 0.875], atol=2e-3)
    plus = init_centroids(values, 8, "kmeans++", np.random.default_rng(3))
    assert len(np.unique(plus)) == 8 and np.all(np.isin(plus, values))
    again = init_centroids(values, 8, "kmeans++", np.random.default_rng(3))
    np.testing.assert_array_equal(plus, again)


@pytest.mark.parametrize("init", ["linear", "kmeans++", "density"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_wrapper_centroids_are_lloyd_from_the_chosen_initialisation(init, per_channel):
    model = small_mlp(hidden=(16,))
    clustered = cluster_weights(model, 6, cluster_centroids_init=init,
                                cluster_per_channel=per_channel, seed=3)
    for wrapper, layer in zip(clustered.layers, model.layers):
        kernel = layer.kernel.numpy().astype("float64")
        columns = kernel.T if per_channel else kernel.reshape(1, -1)
        rng = np.random.default_rng(3)  # each wrapper seeds its own generator
        expected = [kmeans_1d(col, init_centroids(col, 6, init, rng)) for col in columns]
        np.testing.assert_allclose(wrapper._centroids[0].numpy(), expected, atol=1e-6)


# ---------------------------------------------------------------- every layer type

LAYERS = {
    "Dense": (lambda: keras.layers.Dense(6), (5,)),
    "EinsumDense": (lambda: keras.layers.EinsumDense("ab,bc->ac", output_shape=6), (5,)),
    "Conv1D": (lambda: keras.layers.Conv1D(4, 3), (7, 3)),
    "Conv2D": (lambda: keras.layers.Conv2D(4, 3), (6, 6, 2)),
    "Conv3D": (lambda: keras.layers.Conv3D(3, 2), (4, 4, 4, 2)),
    "Conv1DTranspose": (lambda: keras.layers.Conv1DTranspose(4, 3), (5, 3)),
    "Conv2DTranspose": (lambda: keras.layers.Conv2DTranspose(4, 3), (5, 5, 3)),
    "DepthwiseConv1D": (lambda: keras.layers.DepthwiseConv1D(3, depth_multiplier=2), (7, 3)),
    "DepthwiseConv2D": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3)),
    "SeparableConv1D": (lambda: keras.layers.SeparableConv1D(4, 3), (7, 3)),
    "SeparableConv2D": (lambda: keras.layers.SeparableConv2D(4, 3), (6, 6, 3)),
    "Embedding": (lambda: keras.layers.Embedding(20, 6), (4,)),
}


def _channel_matrix(layer, name, values):
    """(n, channels) view of a weight, channels along TFLite's output axis."""
    if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose)):
        values = np.moveaxis(values, -2, -1)
    # A separable conv's depthwise kernel runs as DEPTHWISE_CONV_2D: channels in x multiplier.
    if name == "depthwise_kernel" or isinstance(
        layer, (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    ):
        return values.reshape(-1, values.shape[-2] * values.shape[-1])
    return values.reshape(-1, values.shape[-1])


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_every_layer_type_clusters_and_strips(kind, per_channel):
    make, shape = LAYERS[kind]
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape, dtype="int32" if kind == "Embedding" else "float32")
    model = keras.Model(inputs, make()(inputs))
    if kind == "Embedding":
        x = np.random.default_rng(0).integers(0, 20, size=(8,) + shape)
    else:
        x = np.random.default_rng(0).normal(size=(8,) + shape).astype("float32")
    clustered = cluster_weights(model, 3, cluster_per_channel=per_channel, seed=0)
    wrapper = clustered.layers[-1]
    assert isinstance(wrapper, ClusterWeights)
    stripped = strip_clustering(clustered)
    layer = stripped.layers[-1]
    assert type(layer) is type(model.layers[-1])
    for name in wrapper.clustered_names:
        original = next(w for w in model.layers[-1].weights if w.name == name).numpy()
        values = next(w for w in layer.weights if w.name == name).numpy()
        if per_channel:
            matrix = _channel_matrix(layer, name, values)
            source = _channel_matrix(layer, name, original)
            assert max(len(np.unique(col)) for col in matrix.T) <= 3
            centroids = wrapper._centroids[wrapper.clustered_names.index(name)].numpy()
            expected = np.stack(
                [_nearest_numpy(source[:, c], centroids[c]) for c in range(source.shape[1])], 1
            )
            np.testing.assert_allclose(matrix, expected, atol=1e-6)
        else:
            assert len(np.unique(values)) <= 3
            centroids = wrapper._centroids[wrapper.clustered_names.index(name)].numpy()[0]
            np.testing.assert_allclose(values, _nearest_numpy(original, centroids), atol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(stripped(x)), keras.ops.convert_to_numpy(clustered(x)),
        atol=1e-5,
    )


# ---------------------------------------------------------------- training


def test_weightless_layers_between_clustered_ones():
    L = keras.layers
    model = keras.Sequential([keras.Input((12,)), L.Dense(16), L.ReLU(), L.Reshape((4, 4)),
                              L.Flatten(), L.Dense(3)])
    x = np.random.default_rng(0).normal(size=(8, 12)).astype("float32")
    clustered = cluster_weights(model, number_of_clusters=4)
    final = strip_clustering(clustered)
    np.testing.assert_allclose(final(x), clustered(x), atol=1e-5)
    for kernel in (final.layers[0].kernel, final.layers[-1].kernel):
        assert len(np.unique(keras.ops.convert_to_numpy(kernel))) <= 4


def test_gradients_reach_centroids_as_summed_member_gradients(digits):
    (x, y), _ = digits
    model = small_mlp(hidden=(16,))
    clustered = cluster_weights(model, 4, cluster_centroids_init="linear")
    wrapper = clustered.layers[0]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y[:64], clustered(x[:64]))
    latent = wrapper.layer.kernel
    centroids = wrapper._centroids[0]
    grad_c, grad_w = tape.gradient(loss, [centroids, latent])
    # reference: gradient w.r.t. the shared kernel of the stripped (plain) model
    plain = strip_clustering(clustered)
    with tf.GradientTape() as tape:
        loss_plain = loss_fn(y[:64], plain(x[:64]))
    grad_kernel = tape.gradient(loss_plain, plain.layers[0].kernel).numpy()
    assignment = np.argmin(np.abs(latent.numpy()[..., None] - centroids.numpy()[0]), axis=-1)
    expected = np.bincount(assignment.ravel(), weights=grad_kernel.ravel(), minlength=4)
    np.testing.assert_allclose(grad_c.numpy()[0], expected, rtol=1e-4, atol=1e-7)
    # straight through: the latent kernel gets the shared kernel's gradient
    np.testing.assert_allclose(grad_w.numpy(), grad_kernel, rtol=1e-4, atol=1e-7)
    assert np.all(np.abs(expected) > 0)


@pytest.mark.slow
def test_fit_trains_centroids_and_keeps_accuracy(digits):
    (x, y), (xt, yt) = digits
    model = _compile(small_mlp(hidden=(32,)))
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    base = model.evaluate(xt, yt, verbose=0)[1]
    kernel = model.layers[0].kernel.numpy().copy()
    clustered = _compile(cluster_weights(model, 16, cluster_centroids_init="linear"), lr=3e-4)
    start = clustered.layers[0]._centroids[0].numpy().copy()
    clustered.fit(x, y, epochs=2, verbose=0)
    assert np.any(clustered.layers[0]._centroids[0].numpy() != start)
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), kernel)  # original untouched
    final = strip_clustering(clustered)
    assert all(len(np.unique(layer.kernel.numpy())) <= 16 for layer in final.layers)
    assert _compile(final).evaluate(xt, yt, verbose=0)[1] >= base - 0.03


@pytest.mark.slow
def test_preserve_sparsity_keeps_zeros_through_training(digits):
    (x, y), _ = digits
    model = small_mlp(hidden=(32,))
    for layer in model.layers:
        kernel = layer.kernel.numpy()
        kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.6)] = 0.0
        layer.kernel.assign(kernel)
    zeros = [layer.kernel.numpy() == 0 for layer in model.layers]
    clustered = _compile(cluster_weights(model, 8, preserve_sparsity=True, seed=1))
    clustered.fit(x[:512], y[:512], epochs=2, verbose=0)
    for wrapper in clustered.layers:
        assert np.all(wrapper._centroids[0].numpy()[:, 0] == 0)  # pinned
    final = strip_clustering(clustered)
    for layer, was_zero in zip(final.layers, zeros):
        kernel = layer.kernel.numpy()
        np.testing.assert_array_equal(kernel == 0, was_zero)
        assert len(np.unique(kernel)) <= 8
    # without the option the zero cluster trains like the others and leaves zero
    loose = _compile(cluster_weights(model, 8, seed=1))
    loose.fit(x[:512], y[:512], epochs=1, verbose=0)
    assert np.sum(strip_clustering(loose).layers[0].kernel.numpy() == 0) < np.sum(zeros[0]) / 2


class Block(keras.layers.Layer):
    """A custom layer holding a Dense: clustering reaches it by the path `block/inner`."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = keras.layers.Dense(units, activation="relu")

    def call(self, x):
        return self.inner(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@tfc._serialization.register
class Net(keras.Model):
    def __init__(self, hidden=16, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.stem = keras.layers.Dense(hidden, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.block = Block(hidden)
        self.heads = {"mid": keras.layers.Dense(hidden, activation="relu"),
                      "out": keras.layers.Dense(10)}

    def call(self, x, training=None):
        x = self.block(self.norm(self.stem(x), training=training))
        return self.heads["out"](self.heads["mid"](x))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


@pytest.mark.slow
def test_subclassed_model_clusters_trains_saves_and_strips(digits, tmp_path):
    (x, y), (xt, _) = digits
    model = Net()
    model(x[:2])
    clustered = _compile(cluster_weights(model, 6, cluster_per_channel=True))
    assert isinstance(clustered, tfc.clustering.ClusteredModel)
    assert sorted(clustered.paths) == ["block/inner", "heads.mid", "heads.out", "stem"]
    inner = clustered.model
    assert isinstance(inner, Net) and isinstance(inner.stem, ClusterWeights)
    assert isinstance(inner.block.inner, ClusterWeights)
    assert isinstance(inner.heads["mid"], ClusterWeights)
    assert isinstance(inner.norm, keras.layers.BatchNormalization)
    assert isinstance(model.stem, keras.layers.Dense)  # the original is untouched
    clustered.fit(x[:256], y[:256], epochs=1, verbose=0)
    expected = clustered.predict(xt, verbose=0)
    clustered.save(tmp_path / "clustered_net.keras")
    reloaded = keras.models.load_model(tmp_path / "clustered_net.keras")
    assert isinstance(reloaded.model.heads["out"], ClusterWeights)
    np.testing.assert_allclose(reloaded.predict(xt, verbose=0), expected, atol=1e-5)
    final = strip_clustering(reloaded)
    assert type(final) is Net and isinstance(final.stem, keras.layers.Dense)
    for layer in (final.stem, final.block.inner, final.heads["mid"], final.heads["out"]):
        assert max(len(np.unique(col)) for col in layer.kernel.numpy().T) <= 6
    np.testing.assert_allclose(final.predict(xt, verbose=0), expected, atol=1e-5)
    lite = tfc.export.LiteModel(tfc.export.to_tflite(final))
    np.testing.assert_allclose(lite.predict(xt), expected, atol=1e-4)


@pytest.mark.slow
def test_under_mirrored_strategy(mirrored, digits):
    (x, y), _ = digits
    model = small_mlp(hidden=(24,))
    assert mirrored.num_replicas_in_sync == 2
    with mirrored.scope():
        clustered = _compile(cluster_weights(model, 5))
    assert type(clustered.layers[0]._centroids[0].value).__name__ == "MirroredVariable"
    history = clustered.fit(x[:512], y[:512], epochs=2, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    final = strip_clustering(clustered)
    assert all(len(np.unique(layer.kernel.numpy())) <= 5 for layer in final.layers)


# ---------------------------------------------------------------- saving and export


def _int8_weights(blob):
    """Every int8 constant tensor (kernel) of a TFLite file, shaped, channel axis first."""
    constants = {
        name: values
        for name, (values, _) in tfc.export.LiteModel(blob).weights().items()
        if values.dtype == np.int8
    }
    interpreter = Interpreter(model_content=blob)
    return [
        constants[d["name"]].reshape(d["shape"])
        for d in interpreter.get_tensor_details()
        if d["name"] in constants
    ]


def _cnn(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(24, activation="relu"),
        keras.layers.Dense(10),
    ])


@pytest.mark.slow
def test_int8_ptq_keeps_cluster_count_per_channel(digits_image):
    (x, y), (xt, _) = digits_image
    model = _compile(_cnn())
    model.fit(x, y, epochs=1, verbose=0)
    final = strip_clustering(cluster_weights(model, 4, cluster_per_channel=True))
    lite = tfc.export.LiteModel(tfc.export.to_tflite(final))
    np.testing.assert_allclose(lite.predict(xt), final.predict(xt, verbose=0), atol=1e-4)
    blob = tfc.export.to_tflite(final, quantization="int8", representative_data=x[:100],
                                per_channel_dense=True)
    weights = _int8_weights(blob)
    assert len(weights) == 3
    for w in weights:
        counts = [len(np.unique(w[c])) for c in range(w.shape[0])]
        assert max(counts) <= 4 and max(counts) >= 2
    agree = np.mean(np.argmax(tfc.export.LiteModel(blob).predict(xt), -1)
                    == np.argmax(final.predict(xt, verbose=0), -1))
    assert agree > 0.9


@pytest.mark.slow
def test_int8_cluster_preserving_qat_keeps_cluster_count(digits):
    (x, y), (xt, yt) = digits
    model = _compile(small_mlp(hidden=(24,)))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    final = strip_clustering(cluster_weights(model, 5))
    # the shared values train as centroids; each weight stays bound to its cluster
    qat = tfc.quantization.quantize_model(final, preserve_clusters=True)
    _compile(qat).fit(x[:512], y[:512], epochs=1, verbose=0)
    blob = tfc.export.to_tflite(qat, quantization="int8")
    weights = _int8_weights(blob)
    assert len(weights) == 2
    assert all(2 <= len(np.unique(w)) <= 5 for w in weights)
    lite_classes = np.argmax(tfc.export.LiteModel(blob).predict(xt), -1)
    assert np.mean(lite_classes == np.argmax(qat.predict(xt, verbose=0), -1)) > 0.97
    assert np.mean(lite_classes == yt) >= _compile(final).evaluate(xt, yt, verbose=0)[1] - 0.02


# ---------------------------------------------------------------- bad input


class Custom(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 3), name="w")

    def call(self, x):
        return keras.ops.matmul(x, self.w)


@pytest.mark.parametrize("k", [1, 0, -2, 2.5, True, "16"])
def test_bad_number_of_clusters(k):
    model = small_mlp(hidden=(8,))
    with pytest.raises(ValueError, match="number_of_clusters"):
        cluster_weights(model, k)


def test_bad_inputs_name_the_problem():
    model = small_mlp(hidden=(8,))
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match="number_of_clusters=81"):
        cluster_weights(model, 81)  # the last kernel holds 8 * 10 = 80 values
    with pytest.raises(ValueError, match="number_of_clusters=9"):
        cluster_weights(model, 9, cluster_per_channel=True)  # 8 values per output unit
    with pytest.raises(ValueError, match="cluster_centroids_init='random'"):
        cluster_weights(model, 4, cluster_centroids_init="random")
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    norm = keras.Sequential([keras.Input((5, 3)), keras.layers.LayerNormalization(name="my_norm")])
    with pytest.raises(ValueError, match="'my_norm' of type LayerNormalization"):
        cluster_weights(norm, 4)
    custom = keras.Sequential([keras.Input((5,)), Custom(name="mine")])
    with pytest.raises(ValueError, match="'mine' of type Custom"):
        cluster_weights(custom, 2)
    with pytest.raises(ValueError, match="type Custom"):
        ClusterWeights(Custom(), 4)
    with pytest.raises(ValueError, match="built"):
        cluster_weights(keras.Sequential([keras.layers.Dense(3)]), 4)
    with pytest.raises(ValueError, match="already clustered"):
        cluster_weights(cluster_weights(model, 4), 4)
    with pytest.raises(ValueError, match="to_cluster"):
        cluster_weights("model", 4)
    with pytest.raises(ValueError, match="model="):
        strip_clustering(np.zeros(3))

"""Tests of tfcompress.factorization: low-rank SVD of Dense/Conv layers and the PCA layer."""

import keras
import numpy as np
import pytest
from conftest import compile_classifier as _compile
from conftest import small_mlp
from sklearn.decomposition import PCA as SkPCA

import tfcompress as tfc
from tfcompress.factorization import PCA, energy_rank, low_rank, low_rank_report, truncated_svd


def _rank_r(kernel, r):
    """NumPy reference: the rank-r truncated SVD of a kernel read as a matrix."""
    matrix = kernel.reshape(-1, kernel.shape[-1]).astype("float64")
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return ((u[:, :r] * s[:r]) @ vt[:r]).reshape(kernel.shape)


# ---------------------------------------------------------------- SVD maths


@pytest.mark.parametrize("shape,rank", [((20, 12), 3), ((9, 30), 5), ((64, 64), 1), ((7, 5), 4)])
def test_truncated_svd_error_is_discarded_singular_values(shape, rank):
    rng = np.random.default_rng(sum(shape) + rank)
    w = rng.normal(size=shape)
    first, second, s = truncated_svd(w, rank)
    assert first.shape == (shape[0], rank) and second.shape == (rank, shape[1])
    error = np.linalg.norm(w - first @ second)
    np.testing.assert_allclose(error, np.sqrt(np.sum(s[rank:] ** 2)), rtol=1e-10)
    # Eckart-Young: no other rank-r matrix does better (random ones are much worse)
    for _ in range(3):
        a, b = rng.normal(size=(shape[0], rank)), rng.normal(size=(rank, shape[1]))
        assert np.linalg.norm(w - a @ b) >= error


def test_energy_rank_matches_enumeration():
    rng = np.random.default_rng(1)
    s = np.sort(rng.uniform(0, 3, size=12))[::-1]
    for energy in (0.05, 0.3, 0.5, 0.9, 0.99, 1.0):
        expected = next(
            r for r in range(1, 13) if np.sum(s[:r] ** 2) / np.sum(s**2) >= energy - 1e-12
        )
        assert energy_rank(s, energy) == expected


# ---------------------------------------------------------------- low_rank


def test_low_rank_sequential_equals_truncated_kernels_and_report(digits):
    (x, _), _ = digits
    model = small_mlp(hidden=(48, 32))
    report = low_rank_report(model, energy=0.6)
    small = low_rank(model, energy=0.6)
    expected = x[:50]
    for layer, row in zip(model.layers, report):
        kernel = layer.kernel.numpy()
        assert row["layer"] == layer.name and row["shape"] == kernel.shape
        s = np.linalg.svd(kernel, compute_uv=False)
        assert row["rank"] == (energy_rank(s, 0.6) if row["factorized"] else min(kernel.shape))
        kernel_r = _rank_r(kernel, row["rank"]) if row["factorized"] else kernel
        if row["factorized"]:
            np.testing.assert_allclose(
                row["error"], np.linalg.norm(kernel - kernel_r) / np.linalg.norm(kernel), rtol=1e-5
            )
            m, n = kernel.shape
            assert row["params_after"] == row["rank"] * (m + n) + n < row["params_before"]
        expected = expected @ kernel_r + layer.bias.numpy()
        if layer.activation is keras.activations.relu:
            expected = np.maximum(expected, 0)
    np.testing.assert_allclose(small.predict(x[:50], verbose=0), expected, atol=1e-4)
    assert small.count_params() == sum(row["params_after"] for row in report)
    assert model.count_params() == sum(row["params_before"] for row in report)
    assert "total parameters" in str(report)


def test_low_rank_only_when_it_saves_parameters():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64), keras.layers.Dense(3)]
    )
    # rank 2 saves on 64x64 (256 < 4096) but not on 64x3 (134 >= 192 is false: saves);
    # rank 32 on 64x64 saves nothing (4096 >= 4096) and is too high for 64x3.
    rows = {row["layer"]: row for row in low_rank_report(model, rank=32)}
    assert not any(row["factorized"] for row in rows.values())
    same = low_rank(model, rank=32)
    assert [type(layer).__name__ for layer in same.layers] == ["Dense", "Dense"]
    assert not low_rank_report(model, energy=1.0)[0]["factorized"]
    two = low_rank(model, rank=2)
    names = [layer.name for layer in two.layers]
    assert names == [f"{n}_{part}" for n in (m.name for m in model.layers) for part in "uv"]
    assert [layer.kernel.shape for layer in two.layers] == [(64, 2), (2, 64), (64, 2), (2, 3)]


@pytest.mark.slow
def test_low_rank_functional_conv_per_layer_dict(digits_image):
    (x, _), _ = digits_image
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    h = keras.layers.Conv2D(24, 3, strides=2, dilation_rate=1, name="c2")(h)
    outputs = keras.layers.Dense(10, name="out")(keras.layers.Flatten()(h))
    model = keras.Model(inputs, outputs)
    small = low_rank(model, rank={"c2": 4})
    assert [layer.name for layer in small.layers if layer.name.startswith("c2")] == ["c2_u", "c2_v"]
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    c2 = reference.get_layer("c2")
    c2.kernel.assign(_rank_r(c2.kernel.numpy(), 4).astype("float32"))
    np.testing.assert_allclose(small.predict(x[:40], verbose=0),
                               reference.predict(x[:40], verbose=0), atol=1e-4)
    assert small.get_layer("c2_u").kernel.shape == (3, 3, 16, 4)
    assert small.get_layer("c2_v").kernel.shape == (1, 1, 4, 24)
    assert small.get_layer("c2_v").strides == (1, 1) and small.get_layer("c2_u").strides == (2, 2)
    lite = tfc.export.LiteModel(tfc.export.to_tflite(small))
    np.testing.assert_allclose(lite.predict(x[:40]), small.predict(x[:40], verbose=0), atol=1e-4)
    int8 = tfc.export.LiteModel(
        tfc.export.to_tflite(small, quantization="int8", representative_data=x[:100])
    )
    assert int8.is_fully_int8()


@pytest.mark.slow
def test_low_rank_fine_tunes_saves_and_exports(digits, tmp_path):
    (x, y), (xt, yt) = digits
    model = _compile(small_mlp(hidden=(64,)))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    small = _compile(low_rank(model, rank=8))
    before = [w.numpy().copy() for w in small.trainable_weights]
    small.fit(x, y, epochs=1, verbose=0)
    assert all(np.any(b != w.numpy()) for b, w in zip(before, small.trainable_weights))
    path = tmp_path / "low_rank.keras"
    small.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(xt, verbose=0), small.predict(xt, verbose=0),
                               atol=1e-6)
    lite = tfc.export.LiteModel(tfc.export.to_tflite(small))
    np.testing.assert_allclose(lite.predict(xt), small.predict(xt, verbose=0), atol=1e-4)
    int8 = tfc.export.LiteModel(
        tfc.export.to_tflite(small, quantization="int8", representative_data=x[:200])
    )
    assert int8.is_fully_int8()
    qat = tfc.quantization.quantize_model(small)  # the factors are plain Dense layers
    assert sum(hasattr(layer, "quantize_config") for layer in qat.layers) == 4
    agree = np.mean(np.argmax(int8.predict(xt), -1) == np.argmax(small.predict(xt, verbose=0), -1))
    assert agree > 0.95


@keras.saving.register_keras_serializable("tfc_test_factorization")
class Tower(keras.Model):
    def __init__(self, hidden=32, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.stem = keras.layers.Dense(hidden, activation="relu")
        self.heads = [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(10)]

    def call(self, x):
        x = self.stem(x)
        for head in self.heads:
            x = head(x)
        return x

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


def test_low_rank_subclassed_model_swaps_attributes_and_saves(digits, tmp_path):
    (x, y), _ = digits
    model = Tower()
    model(x[:2])
    small = low_rank(model, rank={model.stem.name: 4, model.heads[0].name: 3})
    assert isinstance(small, tfc.factorization.LowRankModel)
    assert small.ranks == {"stem": 4, "heads.0": 3}
    inner = small.model
    assert isinstance(inner, Tower) and isinstance(inner.stem, keras.Sequential)
    assert isinstance(inner.heads[0], keras.Sequential)
    assert isinstance(model.stem, keras.layers.Dense)  # the original is untouched
    h = np.maximum(x[:20] @ _rank_r(model.stem.kernel.numpy(), 4) + model.stem.bias.numpy(), 0)
    h = np.maximum(h @ _rank_r(model.heads[0].kernel.numpy(), 3) + model.heads[0].bias.numpy(), 0)
    expected = h @ model.heads[1].kernel.numpy() + model.heads[1].bias.numpy()
    np.testing.assert_allclose(small.predict(x[:20], verbose=0), expected, atol=1e-4)
    assert small.count_params() < model.count_params()
    _compile(small).fit(x[:256], y[:256], epochs=1, verbose=0)
    small.save(tmp_path / "tower.keras")
    reloaded = keras.models.load_model(tmp_path / "tower.keras")
    assert isinstance(reloaded.model.heads[0], keras.Sequential)
    np.testing.assert_allclose(reloaded.predict(x[:20], verbose=0),
                               small.predict(x[:20], verbose=0), atol=1e-6)


class Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inner = keras.layers.Dense(32, name="hidden_inside_block")

    def call(self, x):
        return self.inner(x)


class NoConfig(keras.Model):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def call(self, x):
        return self.layer(x)


def test_low_rank_reaches_inside_custom_layers_and_names_what_it_cannot_copy():
    inputs = keras.Input((32,))
    block = Block()
    model = keras.Model(inputs, keras.layers.Dense(4)(block(inputs)))
    small = low_rank(model, rank={"block/hidden_inside_block": 2})
    assert isinstance(small.get_layer("block"), tfc.factorization.LowRankLayer)
    first, second = small.get_layer("block").layer.inner.layers
    u, s, vt = np.linalg.svd(block.inner.kernel.numpy().astype("float64"))
    expected = (u[:, :2] * s[:2]) @ vt[:2]
    np.testing.assert_allclose(first.kernel.numpy() @ second.kernel.numpy(), expected, atol=1e-5)
    unconfigurable = NoConfig(keras.layers.Dense(32))
    unconfigurable(np.zeros((1, 32), "float32"))
    with pytest.raises(ValueError, match="NoConfig"):
        low_rank(unconfigurable, rank=2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"rank": 0}, "rank=0"),
        ({"rank": -3}, "rank=-3"),
        ({"rank": 2.5}, "rank=2.5"),
        ({"rank": 32}, "rank=32"),
        ({"rank": {"d1": 10}}, "rank=10"),
        ({"rank": {"d1": 0}}, "rank=0"),
        ({"rank": {"nope": 2}}, "nope"),
        ({"energy": 0.0}, "energy=0.0"),
        ({"energy": 1.5}, "energy=1.5"),
        ({"energy": -0.2}, "energy=-0.2"),
    ],
)
def test_low_rank_bad_input(kwargs, match):
    model = keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(10, name="d1"), keras.layers.Dense(4, name="d2")]
    )
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=match):
        low_rank(model, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


@pytest.mark.slow
def test_low_rank_under_mirrored_strategy(mirrored, digits):
    (x, y), _ = digits
    model = small_mlp(hidden=(32,))
    assert mirrored.num_replicas_in_sync == 2
    with mirrored.scope():
        small = _compile(low_rank(model, rank={model.layers[0].name: 4}))
    first = small.get_layer(f"{model.layers[0].name}_u")
    assert type(first.kernel.value).__name__ == "MirroredVariable"
    history = small.fit(x[:512], y[:512], epochs=2, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


# ---------------------------------------------------------------- PCA


@pytest.mark.parametrize(
    "n_components,whiten", [(0.95, False), (0.5, True), (10, False), (3, True)]
)
def test_pca_equals_scikit_learn_up_to_sign(digits, n_components, whiten):
    (x, _), (xt, _) = digits
    pca = PCA(n_components, whiten=whiten)
    pca.adapt(x)
    reference = SkPCA(n_components, whiten=whiten, svd_solver="full").fit(x.astype("float64"))
    assert pca.n_components_ == reference.n_components_
    ours = keras.ops.convert_to_numpy(pca(xt))
    theirs = reference.transform(xt.astype("float64"))
    signs = np.sign(np.sum(ours * theirs, axis=0))
    np.testing.assert_allclose(ours * signs, theirs, atol=2e-4)


@pytest.mark.slow
def test_pca_first_layer_trains_saves_exports(digits, tmp_path):
    (x, y), (xt, _) = digits
    pca = PCA(0.9)
    pca.adapt(x)
    model = _compile(keras.Sequential([keras.Input((64,)), pca, keras.layers.Dense(10)]))
    mean = pca.mean.numpy().copy()
    model.fit(x, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(pca.mean.numpy(), mean)  # not trainable
    assert len(model.trainable_weights) == 2
    config = pca.get_config()
    assert config["n_components"] == 0.9 and PCA.from_config(config).n_components == 0.9
    path = tmp_path / "pca.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(xt, verbose=0), model.predict(xt, verbose=0),
                               atol=1e-6)
    lite = tfc.export.LiteModel(tfc.export.to_tflite(model))
    np.testing.assert_allclose(lite.predict(xt), model.predict(xt, verbose=0), atol=1e-4)


def test_pca_adapts_from_dataset_and_under_mirrored(mirrored, digits):
    import tensorflow as tf

    (x, y), _ = digits
    with mirrored.scope():
        pca = PCA(12)
        pca.adapt(tf.data.Dataset.from_tensor_slices((x, y)).batch(100))
        model = _compile(keras.Sequential([keras.Input((64,)), pca, keras.layers.Dense(10)]))
    assert type(pca.components.value).__name__ == "MirroredVariable"
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    reference = SkPCA(12, svd_solver="full").fit(x.astype("float64"))
    np.testing.assert_allclose(pca.mean.numpy(), reference.mean_, atol=1e-6)


@pytest.mark.parametrize("n_components", [0, -1, 0.0, 1.5, True, "all", None])
def test_pca_bad_n_components(n_components):
    with pytest.raises(ValueError, match="n_components"):
        PCA(n_components)


def test_pca_too_many_components_or_no_adapt():
    x = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
    with pytest.raises(ValueError, match="n_components=7"):
        PCA(7).adapt(x)  # more than features
    with pytest.raises(ValueError, match="n_components=5"):
        PCA(5).adapt(x[:4])  # more than samples
    with pytest.raises(ValueError, match="data.shape"):
        PCA(2).adapt(x.reshape(20, 3, 2))
    never = PCA(2, name="never_adapted")
    with pytest.raises(ValueError, match="never_adapted.*adapt"):
        never(x)
    with pytest.raises(ValueError, match="adapt"):
        keras.Sequential([keras.Input((6,)), PCA(2)])


def test_pca_whitening_refuses_zero_variance_components():
    x = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
    x[:, 5] = 0.0  # a constant feature: the 6th component has no variance
    pca = PCA(6, whiten=True)
    with pytest.raises(ValueError, match="n_components=6"):
        pca.adapt(x)
    assert not pca.built
    whitened = PCA(5, whiten=True)
    whitened.adapt(x)
    z = keras.ops.convert_to_numpy(whitened(x))
    np.testing.assert_allclose(z.std(axis=0, ddof=1), np.ones(5), rtol=1e-4)
    PCA(6).adapt(x)  # without whitening a flat component is harmless


def test_low_rank_keeps_weightless_layers():
    L = keras.layers
    model = keras.Sequential([keras.Input((32,)), L.Dense(32), L.ReLU(), L.Reshape((8, 4)),
                              L.Flatten(), L.Dense(3)])
    x = np.random.default_rng(0).normal(size=(8, 32)).astype("float32")
    small = low_rank(model, rank=4)
    assert [type(layer).__name__ for layer in small.layers][2:5] == ["ReLU", "Reshape", "Flatten"]
    w, b = (keras.ops.convert_to_numpy(v) for v in model.layers[0].weights)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    hidden = np.maximum(x @ (u[:, :4] * s[:4]) @ vt[:4] + b, 0.0)
    w2, b2 = (keras.ops.convert_to_numpy(v) for v in model.layers[-1].weights)
    u2, s2, vt2 = np.linalg.svd(w2, full_matrices=False)
    np.testing.assert_allclose(small(x), hidden @ (u2[:, :3] * s2[:3]) @ vt2[:3] + b2, atol=1e-4)

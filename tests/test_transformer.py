"""Transformer blocks (MultiHeadAttention, LayerNormalization, GELU MLP) through export."""

import importlib.util
import pathlib
import warnings

import keras
import numpy as np
import pytest
from conftest import compile_classifier, trained_on_digit_rows
from keras import ops

from tfcompress import datasets
from tfcompress.clustering import cluster_weights, strip_clustering
from tfcompress.export import LiteModel, to_tflite
from tfcompress.factorization import LowRankLayer, low_rank, low_rank_report
from tfcompress.pruning import prune_units
from tfcompress.quantization import (
    QuantizedAttention,
    QuantizedComposite,
    QuantizedEmbedding,
    QuantizedLayerNorm,
    quantize_model,
)
from tfcompress.surgery import all_layers

L = keras.layers
_spec = importlib.util.spec_from_file_location(
    "transformer_bench", pathlib.Path(__file__).parents[1] / "benchmarks" / "transformer_bench.py"
)
transformer_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(transformer_bench)
encoder = transformer_bench.encoder



@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [{}, {"axis": [1, 2]}, {"center": False}, {"scale": False}, {"epsilon": 0.1}],
    ids=["default", "two_axes", "no_center", "no_scale", "epsilon"],
)
def test_layer_norm_file_matches_keras(options):
    inputs = keras.Input((6, 5))
    norm = L.LayerNormalization(name="norm", **options)
    model = keras.Model(inputs, norm(L.Dense(5)(inputs)))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(1, 0.5, w.shape).astype("float32") for w in model.weights])
    x = rng.normal(2, 3, (8, 6, 5)).astype("float32")
    lite = LiteModel(to_tflite(model))
    np.testing.assert_allclose(lite.predict(x), model.predict(x, verbose=0), atol=1e-4)
    assert "NEG" not in lite.ops()
    assert "call" not in vars(norm)  # the export leaves the layer as it was


@pytest.fixture(scope="module")
def trained_encoder():
    keras.utils.set_random_seed(0)
    return trained_on_digit_rows(encoder(), 20, 2e-3)


@pytest.mark.slow
def test_int8_ptq_is_fully_int8(trained_encoder):
    model, (x, _), (xt, yt) = trained_encoder
    reference = model.predict(xt, verbose=0)
    accuracy = np.mean(reference.argmax(1) == yt)
    assert accuracy > 0.8
    lite = LiteModel(to_tflite(model, quantization="int8", representative_data=x[:300]))
    # LayerNorm's -mean was a float NEG; attention's BATCH_MATMUL and SOFTMAX, GELU,
    # MEAN and RSQRT all run int8.
    assert lite.is_fully_int8(), lite.float_ops()
    assert {"BATCH_MATMUL", "SOFTMAX", "GELU", "RSQRT"} <= set(lite.ops())
    predicted = lite.predict(xt).argmax(1)
    assert np.mean(predicted == reference.argmax(1)) >= 0.97
    assert abs(np.mean(predicted == yt) - accuracy) <= 0.02


def _silence_heads(attention, heads):
    """Zero the query, key and value weights of `heads`: each attends uniformly to
    zero values, so its output is exactly 0 and removing it changes nothing."""
    for dense in (attention.query_dense, attention.key_dense, attention.value_dense):
        kernel, bias = dense.kernel.numpy(), dense.bias.numpy()
        kernel[:, heads] = 0
        bias[heads] = 0
        dense.kernel.assign(kernel)
        dense.bias.assign(bias)


@pytest.mark.slow
def test_prune_units_removes_whole_heads():
    model = encoder(dim=16, heads=4)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.weights])
    attention = model.get_layer("mha0")
    _silence_heads(attention, [0, 2])
    small = prune_units(model, {"mha0": 0.5})
    new = small.get_layer("mha0")
    assert new.num_heads == 2
    np.testing.assert_array_equal(
        new.value_dense.kernel.numpy(), attention.value_dense.kernel.numpy()[:, [1, 3]]
    )
    np.testing.assert_array_equal(
        new.output_dense.kernel.numpy(), attention.output_dense.kernel.numpy()[[1, 3]]
    )
    x = rng.normal(size=(8, 8, 8)).astype("float32")
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    # The whole encoder at half: half the heads and half the MLP units, exported.
    half = prune_units(model, 0.5)
    assert half.get_layer("mha0").num_heads == 2
    assert half.get_layer("mlp0a").units == 16
    assert half.count_params() < 0.75 * model.count_params()
    lite = LiteModel(to_tflite(half))
    np.testing.assert_allclose(lite.predict(x), half.predict(x, verbose=0), atol=1e-4)


def _int8_agreement(qat, x):
    """The int8 file of a QAT model: its ops, and its top-1 agreement with the Keras model."""
    lite = LiteModel(to_tflite(qat, quantization="int8"))
    reference = qat.predict(x, verbose=0)
    return lite, float(np.mean(lite.predict(x).argmax(1) == reference.argmax(1)))


def _ranged_file_error(qat, x):
    """Ranges from four training-mode calls (no weight update), then the int8 file and its
    99th-percentile distance from the QAT model, in steps of the output's range / 255."""
    for batch in np.array_split(x[:256], 4):
        qat(batch, training=True)
    lite = LiteModel(to_tflite(qat, quantization="int8"))
    reference = qat.predict(x, verbose=0)
    step = (reference.max() - reference.min()) / 255
    return lite, float(np.percentile(np.abs(lite.predict(x) - reference), 99) / step)


@pytest.mark.slow
def test_qat_encoder_is_fully_int8_within_a_point_of_float(trained_encoder):
    model, (x, y), (xt, yt) = trained_encoder
    float_accuracy = np.mean(model.predict(xt, verbose=0).argmax(1) == yt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left float
        qat = quantize_model(model)
    kinds = {type(layer).__name__ for layer in qat.layers}
    assert {"QuantizedAttention", "QuantizedLayerNorm"} <= kinds
    compile_classifier(qat, 5e-4).fit(x, y, epochs=3, batch_size=32, verbose=0)
    lite, agreement = _int8_agreement(qat, xt)
    # Every Dense/EinsumDense, both BATCH_MATMULs, SOFTMAX, the layer norms' MEAN/RSQRT,
    # GELU, the residual ADDs and the pooling run int8.
    assert lite.is_fully_int8(), lite.float_ops()
    assert {"BATCH_MATMUL", "SOFTMAX", "GELU", "RSQRT", "MEAN"} <= set(lite.ops())
    assert agreement >= 0.99
    assert np.mean(lite.predict(xt).argmax(1) == yt) >= float_accuracy - 0.01


def test_quantized_attention_and_layer_norm_compute_the_float_layers():
    """With ranges fitted to the data, the int8 grids stay close to Keras' float layers."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 8)).astype("float32")
    attention = L.MultiHeadAttention(2, 4, value_dim=3)
    expected = attention(x, x).numpy()
    quantized = QuantizedAttention(attention, quantize_inputs=True)
    quantized(x, x, training=True)  # ranges from this batch
    got = quantized(x, x).numpy()
    span = expected.max() - expected.min()
    assert np.max(np.abs(got - expected)) < 0.05 * span
    assert quantized.ranges["output"].min_value.numpy() <= expected.min()

    norm = L.LayerNormalization()
    norm.build((None, 6, 8))
    norm.set_weights([rng.normal(m, 0.3, 8).astype("float32") for m in (1, 0)])
    expected = norm(x * 3 + 1).numpy()
    quantized = QuantizedLayerNorm(norm, quantize_inputs=True)
    quantized(x * 3 + 1, training=True)
    got = quantized(x * 3 + 1).numpy()
    assert np.max(np.abs(got - expected)) < 0.05 * (expected.max() - expected.min())
    with pytest.raises(ValueError, match="MultiHeadAttention"):
        QuantizedAttention(L.Dense(3))
    with pytest.raises(ValueError, match="one axis"):
        QuantizedLayerNorm(L.LayerNormalization(axis=[1, 2]))


@keras.saving.register_keras_serializable("tfc_tests")
class PatchEncoder(L.Layer):
    """keras.io's ViT patch encoder: a projection plus a learned position embedding."""

    def __init__(self, num_patches, projection_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_patches, self.projection_dim = num_patches, projection_dim
        self.projection = L.Dense(projection_dim, name="projection")
        self.position_embedding = L.Embedding(num_patches, projection_dim, name="position")

    def call(self, patch):
        positions = ops.expand_dims(ops.arange(0, self.num_patches, 1), axis=0)
        return self.projection(patch) + self.position_embedding(positions)

    def get_config(self):
        config = {"num_patches": self.num_patches, "projection_dim": self.projection_dim}
        return {**super().get_config(), **config}


def _vit(dim=32, heads=4):
    """A ViT on the 8x8 digits: 2x2 patches by a strided Conv2D, keras.io's patch encoder."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    patches = L.Reshape((16, dim))(L.Conv2D(dim, 2, strides=2)(inputs))
    x = PatchEncoder(16, dim, name="patch_encoder")(patches)
    x = L.LayerNormalization()(x + L.MultiHeadAttention(heads, dim // heads, name="mha")(x, x))
    mlp = L.Dense(dim, name="mlp_out")(L.Dense(2 * dim, activation="gelu", name="mlp_in")(x))
    x = L.LayerNormalization()(x + mlp)
    return keras.Model(inputs, L.Dense(10, name="head")(L.GlobalAveragePooling1D()(x)))


@pytest.fixture(scope="module")
def trained_vit():
    (x, y), test = datasets.load_digits(shape="image")
    model = compile_classifier(_vit(), 2e-3, steps_per_execution=15)
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    return model, (x, y), test


@pytest.mark.slow
def test_vit_with_keras_io_patch_encoder_through_qat_saved_and_reloaded(trained_vit, tmp_path):
    model, (x, y), (xt, _) = trained_vit
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the encoder's sublayers are quantized
        qat = quantize_model(model)
    encoder_layer = qat.get_layer("patch_encoder")
    assert isinstance(encoder_layer, QuantizedComposite)
    compile_classifier(qat, 5e-4).fit(x, y, epochs=1, batch_size=32, verbose=0)
    lite, agreement = _int8_agreement(qat, xt)
    assert lite.is_fully_int8(), lite.float_ops()
    assert {"CONV_2D", "BATCH_MATMUL", "SOFTMAX"} <= set(lite.ops())
    assert agreement >= 0.99
    qat.save(tmp_path / "vit.keras")
    reloaded = keras.saving.load_model(tmp_path / "vit.keras")
    expected = qat.predict(xt, verbose=0)
    np.testing.assert_allclose(reloaded.predict(xt, verbose=0), expected, atol=1e-5)


def test_masked_attention_stays_float_and_is_named():
    inputs = keras.Input((6, 8))
    x = L.MultiHeadAttention(2, 4, name="causal")(inputs, inputs, use_causal_mask=True)
    model = keras.Model(inputs, L.Dense(3)(L.Flatten()(x)))
    with pytest.warns(UserWarning, match="causal"):
        qat = quantize_model(model)
    assert not any(isinstance(layer, QuantizedAttention) for layer in qat.layers)
    x = np.random.default_rng(0).normal(size=(4, 6, 8)).astype("float32")
    np.testing.assert_allclose(qat.get_layer("causal")(x, x, use_causal_mask=True),
                               model.get_layer("causal")(x, x, use_causal_mask=True), atol=1e-6)


@keras.saving.register_keras_serializable("tfc_tests")
class SubclassedEncoder(keras.Model):
    """A transformer block written as a subclassed model."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embed = L.Dense(16)
        self.attention = L.MultiHeadAttention(2, 8)
        self.norm = L.LayerNormalization()
        self.head = L.Dense(10)

    def call(self, x):
        x = self.embed(x)
        x = self.norm(x + self.attention(x, x))
        return self.head(ops.mean(x, axis=1))


@pytest.mark.slow
def test_subclassed_transformer_quantizes_attention_and_norm():
    (x, _), _ = datasets.load_digits(shape="sequence")
    keras.utils.set_random_seed(0)
    model = SubclassedEncoder()
    model(x[:2])
    qat = quantize_model(model)
    assert isinstance(qat.model.attention, QuantizedAttention)
    assert isinstance(qat.model.norm, QuantizedLayerNorm)
    lite, error = _ranged_file_error(qat, x[:256])
    assert {"BATCH_MATMUL", "SOFTMAX", "RSQRT"} <= set(lite.ops())
    assert not {"BATCH_MATMUL", "SOFTMAX", "RSQRT"} & lite.float_ops()
    assert error <= 8


def _low_rank_weights(layer, rank, rng):
    """Gives the layer's kernel, read as attention contracts it, an exact rank `rank`."""
    kernel = layer.kernel.numpy()
    rows = kernel.shape[0] if kernel.ndim == 2 or layer.name != "attention_output" else -1
    matrix = kernel.reshape(rows, -1) if rows != -1 else kernel.reshape(-1, kernel.shape[-1])
    a = rng.normal(0, 0.3, (matrix.shape[0], rank))
    layer.kernel.assign((a @ rng.normal(0, 0.3, (rank, matrix.shape[1]))).reshape(kernel.shape))


@pytest.mark.slow
def test_low_rank_reaches_attention_and_custom_layers_exactly(tmp_path):
    model = _vit()
    rng = np.random.default_rng(0)
    attention = model.get_layer("mha")
    exact = {"mha/query": 3, "mha/attention_output": 5, "patch_encoder/projection": 4,
             "mlp_in": 6}  # fmt: skip
    layers = {label: model.get_layer(label.split("/")[0]) for label in exact}
    inner = {"query": attention.query_dense, "attention_output": attention.output_dense,
             "projection": layers["patch_encoder/projection"].projection}  # fmt: skip
    for label, rank in exact.items():
        _low_rank_weights(inner.get(label.split("/")[-1], layers[label]), rank, rng)
    report = low_rank_report(model, rank=exact)
    assert [row["layer"] for row in report] == list(exact)
    assert all(row["factorized"] and row["error"] < 1e-6 for row in report), str(report)
    small = low_rank(model, rank=exact)
    assert isinstance(small.get_layer("mha"), LowRankLayer)
    assert isinstance(small.get_layer("patch_encoder"), LowRankLayer)
    assert small.count_params() < model.count_params()
    x = rng.normal(size=(8, 8, 8, 1)).astype("float32")
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(small.predict(x, verbose=0), expected, atol=1e-4)
    np.testing.assert_allclose(LiteModel(to_tflite(small)).predict(x), expected, atol=1e-4)
    small.save(tmp_path / "small.keras")
    reloaded = keras.saving.load_model(tmp_path / "small.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=1e-4)
    # A plain sublayer name means every layer of that name; exclude= works on containers.
    assert [row["layer"] for row in low_rank_report(model, rank={"key": 2})] == ["mha/key"]
    kept = low_rank(model, rank=4, exclude=["mha"])
    assert isinstance(kept.get_layer("mha"), L.MultiHeadAttention)


@pytest.mark.slow
def test_quantized_attention_runs_low_rank_projections(trained_vit):
    model, (x, y), (xt, _) = trained_vit
    small = low_rank(model, rank=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        qat = quantize_model(small)
    attention = qat.get_layer("mha").layer.layer
    assert isinstance(attention, QuantizedAttention)
    assert "query_factor" in attention.ranges
    lite, error = _ranged_file_error(qat, xt)
    assert lite.is_fully_int8(), lite.float_ops()
    assert error <= 8


def test_einsum_dense_factorizes_inline():
    inputs = keras.Input((5, 12))
    x = L.EinsumDense("abc,cd->abd", output_shape=(None, 10), bias_axes="d", name="ein")(inputs)
    model = keras.Model(inputs, L.Dense(3)(x))
    rng = np.random.default_rng(1)
    _low_rank_weights(model.get_layer("ein"), 2, rng)
    small = low_rank(model, rank={"ein": 2})
    assert [type(layer).__name__ for layer in small.layers[1:3]] == ["EinsumDense"] * 2
    x = rng.normal(size=(4, 5, 12)).astype("float32")
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_unregistered_custom_layers_cluster_strip_and_export():
    class LocalPatchEncoder(PatchEncoder):  # not registered: a keras.io notebook's layer
        pass

    (x, y), (xt, _) = datasets.load_digits(shape="image")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    patches = L.Reshape((16, 8))(L.Conv2D(8, 2, strides=2)(inputs))
    encoded = LocalPatchEncoder(16, 16)(patches)
    model = keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling1D()(encoded)))
    clustered = cluster_weights(model, 8)
    compile_classifier(clustered, 1e-3).fit(x[:256], y[:256], epochs=1, verbose=0)
    final = strip_clustering(clustered)
    projection = final.layers[3].projection.kernel.numpy()
    assert len(np.unique(projection)) <= 8
    np.testing.assert_allclose(
        LiteModel(to_tflite(final)).predict(xt[:64]), final.predict(xt[:64], verbose=0), atol=1e-4
    )


@pytest.mark.slow
def test_keras_hub_transformer_encoder_through_qat_and_low_rank(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    (x, _), (xt, _) = datasets.load_digits(shape="sequence")
    model = _hub_encoder(keras_hub)
    qat = quantize_model(model)  # its attention, norms and MLP swapped inside it
    block = qat.get_layer("block")
    assert isinstance(block, QuantizedComposite)
    inner = {type(layer).__name__ for layer in all_layers(block)}
    assert {"QuantizedAttention", "QuantizedLayerNorm", "QuantizeWrapper"} <= inner
    lite, error = _ranged_file_error(qat, x)
    assert lite.is_fully_int8(), lite.float_ops()
    assert error <= 8
    qat.save(tmp_path / "hub.keras")
    reloaded = keras.saving.load_model(tmp_path / "hub.keras")
    expected = qat.predict(xt, verbose=0)
    np.testing.assert_allclose(reloaded.predict(xt, verbose=0), expected, atol=1e-5)
    small = low_rank(model, rank=8)
    assert isinstance(small.get_layer("block"), LowRankLayer)
    assert small.count_params() < model.count_params()
    lite = LiteModel(to_tflite(small))
    np.testing.assert_allclose(lite.predict(xt[:32]), small.predict(xt[:32], verbose=0), atol=1e-4)


@pytest.mark.slow
def test_keras_hub_token_and_position_embedding_gathers_int8(tmp_path):
    # Its token table is Keras' ReversibleEmbedding, its positions keras_hub's
    # PositionEmbedding (called with start_index=): both int8 tables, nothing left float.
    keras_hub = pytest.importorskip("keras_hub")
    (x, _), (xt, _) = datasets.load_digits()
    x, xt = np.rint(16 * x).astype("int32"), np.rint(16 * xt).astype("int32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), dtype="int32")
    embedded = keras_hub.layers.TokenAndPositionEmbedding(17, 64, 16, name="emb")(inputs)
    model = keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling1D()(embedded)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no layer is left float or unknown
        qat = quantize_model(model)
        cluster_weights(model, 8)
    inner = {type(layer).__name__ for layer in all_layers(qat.get_layer("emb"))}
    assert {"QuantizedEmbedding", "QuantizeWrapper"} <= inner
    lite, error = _ranged_file_error(qat, x)
    assert lite.is_fully_int8(), lite.float_ops()
    assert "GATHER" in lite.ops() and error <= 2
    qat.save(tmp_path / "emb.keras")
    reloaded = keras.saving.load_model(tmp_path / "emb.keras")
    np.testing.assert_allclose(
        reloaded.predict(xt, verbose=0), qat.predict(xt, verbose=0), atol=1e-6
    )
    token = next(layer for layer in all_layers(qat) if isinstance(layer, QuantizedEmbedding))
    with pytest.raises(ValueError, match="reverse=True"):
        token(ops.ones((2, 16)), reverse=True)  # a tied output projection stays float


@pytest.mark.slow
def test_prune_units_reaches_inside_keras_hub_encoder_blocks():
    keras_hub = pytest.importorskip("keras_hub")
    (x, _), _ = datasets.load_digits(shape="sequence")
    model = _hub_encoder(keras_hub)
    same = prune_units(model, {"block_feedforward_intermediate_dense": 0.0})
    np.testing.assert_allclose(same.predict(x[:32], verbose=0), model.predict(x[:32], verbose=0),
                               atol=1e-5)
    small = prune_units(model, 0.5)  # the block is called inline: half its heads and units
    assert small.get_layer("block_self_attention_layer").num_heads == 2
    assert small.get_layer("block_feedforward_intermediate_dense").units == 32
    assert small.count_params() < 0.6 * model.count_params()
    lite = LiteModel(to_tflite(small))
    np.testing.assert_allclose(lite.predict(x[:32]), small.predict(x[:32], verbose=0), atol=1e-4)


def _hub_encoder(keras_hub):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8))
    x = L.Dense(32)(inputs)
    x = keras_hub.layers.TransformerEncoder(64, 4, name="block")(x)
    # Untrained, its norms' betas are exactly zero: the converter folds their ADDs away
    # (the export then keeps each norm's result on its own grid).
    return keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling1D()(x)))

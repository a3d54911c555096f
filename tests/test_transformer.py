"""Transformer blocks (MultiHeadAttention, LayerNormalization, GELU MLP) through export."""

import importlib.util
import pathlib

import keras
import numpy as np
import pytest
from conftest import trained_on_digit_rows

from tfcompress.export import LiteModel, to_tflite
from tfcompress.pruning import prune_units

L = keras.layers
_spec = importlib.util.spec_from_file_location(
    "transformer_bench", pathlib.Path(__file__).parents[1] / "benchmarks" / "transformer_bench.py"
)
transformer_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(transformer_bench)
encoder = transformer_bench.encoder



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

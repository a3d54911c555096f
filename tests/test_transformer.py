"""Transformer blocks (MultiHeadAttention, LayerNormalization, GELU MLP) through export."""

import keras
import numpy as np
import pytest
from conftest import trained_on_digit_rows

from tfcompress.export import LiteModel, to_tflite

L = keras.layers


def encoder(steps=8, features=8, dim=32, heads=2, blocks=1, classes=10):
    """A small text-style encoder: Dense embedding, attention + GELU MLP blocks, mean pool."""
    inputs = keras.Input((steps, features))
    x = L.Dense(dim, name="embed")(inputs)
    for i in range(blocks):
        attention = L.MultiHeadAttention(heads, dim // heads, name=f"mha{i}")(x, x)
        x = L.LayerNormalization(name=f"ln{i}a")(x + attention)
        mlp = L.Dense(2 * dim, activation="gelu", name=f"mlp{i}a")(x)
        x = L.LayerNormalization(name=f"ln{i}b")(x + L.Dense(dim, name=f"mlp{i}b")(mlp))
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(classes, name="head")(x))


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

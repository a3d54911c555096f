"""prune_units: smaller models, the same function where removed units were silent."""

import keras
import numpy as np
import pytest
from conftest import small_mlp

import tfcompress as tfc
from tfcompress.pruning import prune_units

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _silence_removed(model, small):
    """Zero the outgoing weights in `model` of the units `small` dropped."""
    for layer in model.layers:
        if not isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            continue
        kept = small.get_layer(layer.name).kernel.shape[-1]
        if kept == layer.kernel.shape[-1]:
            continue
        kernel, bias = layer.get_weights()
        norms = np.abs(kernel.reshape(-1, kernel.shape[-1])).sum(0)
        dropped = np.argsort(-norms, kind="stable")[kept:]
        kernel[..., dropped] = 0
        bias[dropped] = 0
        layer.set_weights([kernel, bias])


def test_mlp_shapes_and_same_function_when_removed_units_are_silent():
    model = small_mlp(hidden=(16, 12))
    x = np.random.default_rng(0).random((20, 64), dtype=np.float32)
    small = prune_units(model, fraction=0.5)
    assert [layer.units for layer in small.layers] == [8, 6, 10]
    assert small.count_params() == 64 * 8 + 8 + 8 * 6 + 6 + 6 * 10 + 10
    _silence_removed(model, small)
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_cnn_with_batchnorm_pooling_flatten():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(12, activation="relu", name="d1"),
            keras.layers.Dense(10, name="out"),
        ]
    )
    bn = model.get_layer("bn")
    bn.set_weights([np.random.rand(8).astype("float32") + 0.5 for _ in range(4)])
    small = prune_units(model, {"c1": 0.5}, criterion="l2")
    assert small.get_layer("c1").filters == 4 and small.get_layer("d1").units == 12
    kernel = model.get_layer("c1").kernel.numpy()
    keep = np.sort(np.argsort(-np.sqrt((kernel.reshape(-1, 8) ** 2).sum(0)), kind="stable")[:4])
    for old, new in zip(bn.get_weights(), small.get_layer("bn").get_weights()):
        np.testing.assert_array_equal(new, old[keep])
    flat_keep = (np.arange(9)[:, None] * 8 + keep[None, :]).ravel()
    np.testing.assert_array_equal(
        small.get_layer("d1").kernel.numpy(), model.get_layer("d1").kernel.numpy()[flat_keep]
    )
    # Reference: the big model with the dropped channels cut out after the BatchNorm.
    x = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)
    features = keras.Model(model.inputs[0], model.get_layer("bn").output)(x).numpy()
    pooled = features[..., keep].reshape(6, 3, 2, 3, 2, 4).max(axis=(2, 4)).reshape(6, -1)
    d1 = small.get_layer("d1")
    hidden = np.maximum(pooled @ d1.kernel.numpy() + d1.bias.numpy(), 0)
    out = small.get_layer("out")
    np.testing.assert_allclose(
        small.predict(x, verbose=0), hidden @ out.kernel.numpy() + out.bias.numpy(), atol=1e-5
    )


def test_channels_first_reader_blocks_the_channels_last_conv():
    # Flatten(channels_first) moves the conv's channel axis: slicing d1's rows by channel
    # would be wrong, so c1 must stay whole.
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((5, 5, 1)),
            keras.layers.Conv2D(6, 3, name="c1"),
            keras.layers.Flatten(data_format="channels_first", name="flat"),
            keras.layers.Dense(8, name="d1"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    small = prune_units(model, 0.5)
    assert small.get_layer("c1").filters == 6 and small.get_layer("d1").units == 4
    with pytest.raises(ValueError, match="Layer 'c1' cannot lose units"):
        prune_units(model, {"c1": 0.5})


def test_functional_and_blocked_layers():
    inputs = keras.Input((6,))
    a = keras.layers.Dense(10, activation="relu", name="a")(inputs)
    b = keras.layers.Dense(10, name="b")(a)
    c = keras.layers.Dense(10, name="c")(a)
    merged = keras.layers.Add(name="add")([b, c])
    outputs = keras.layers.Dense(3, name="out")(merged)
    model = keras.Model(inputs, outputs)
    small = prune_units(model, 0.3)
    assert [small.get_layer(n).units for n in "abc"] == [7, 10, 10]  # b, c feed a merge
    assert small.get_layer("out").units == 3
    with pytest.raises(ValueError, match="Layer 'b' cannot lose units"):
        prune_units(model, {"b": 0.5})
    with pytest.raises(ValueError, match="Layer 'out' cannot lose units"):
        prune_units(model, {"out": 0.5})


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(fraction=1.0), "Received: fraction=1.0"),
        (dict(fraction=-0.2), "Received: fraction=-0.2"),
        (dict(fraction={"dense": 1.5}), r"Received: fraction\['dense'\]=1.5"),
        (dict(fraction={"nope": 0.5}), "Unknown layer name 'nope'"),
        (dict(criterion="l0"), "Received: criterion=l0"),
    ],
)
def test_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        prune_units(small_mlp(), **kw)


def test_subclassed_is_refused():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(4)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="Received: model=Net"):
        prune_units(net)
    nothing = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="No layer of the model can lose units"):
        prune_units(nothing)


def test_fine_tuned_accuracy_and_smaller_tflite(digits, tmp_path):
    (x, y), (xt, yt) = digits
    model = small_mlp(hidden=(128, 64))
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    model.fit(x, y, epochs=12, batch_size=64, verbose=0)
    base = model.evaluate(xt, yt, verbose=0)[1]
    small = prune_units(model, 0.5)
    small.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    small.fit(x, y, epochs=5, batch_size=64, verbose=0)
    tuned = small.evaluate(xt, yt, verbose=0)[1]
    assert tuned >= base - 0.02, (base, tuned)
    big_file = tfc.export.to_tflite(model, str(tmp_path / "big.tflite"))
    small_file = tfc.export.to_tflite(small, str(tmp_path / "small.tflite"))
    assert len(small_file) < 0.45 * len(big_file)
    lite = tfc.export.LiteModel(str(tmp_path / "small.tflite"))
    np.testing.assert_allclose(lite.predict(xt), small.predict(xt, verbose=0), atol=1e-4)

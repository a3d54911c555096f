"""prune_units: smaller models, the same function where removed units were silent."""

import keras
import numpy as np
import pytest
from conftest import small_mlp

import tfcompress as tfc
from tfcompress.pruning import prune_units

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
L = keras.layers


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
    assert isinstance(small, keras.Sequential)
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
    # b and c meet in the Add: they lose the same units, ranked by their summed norms.
    assert [small.get_layer(n).units for n in "abc"] == [7, 7, 7]
    assert small.get_layer("out").units == 3
    kernels = {n: model.get_layer(n).kernel.numpy() for n in "abc"}
    keep_a = np.sort(np.argsort(-np.abs(kernels["a"]).sum(0), kind="stable")[:7])
    scores = np.abs(kernels["b"]).sum(0) + np.abs(kernels["c"]).sum(0)
    keep = np.sort(np.argsort(-scores, kind="stable")[:7])
    for n in "bc":
        np.testing.assert_array_equal(
            small.get_layer(n).kernel.numpy(), kernels[n][keep_a][:, keep]
        )
    np.testing.assert_array_equal(
        small.get_layer("out").kernel.numpy(), model.get_layer("out").kernel.numpy()[keep]
    )
    assert prune_units(model, {"b": 0.5}).get_layer("c").units == 5  # c follows b
    with pytest.raises(ValueError, match=r"Layers \['b', 'c'\] must lose the same units"):
        prune_units(model, {"b": 0.5, "c": 0.2})
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


@pytest.mark.slow
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


# -- channel dependencies: op nodes, residuals, SE gates, concatenation, applications ------


def _randomize(model, seed=0):
    """Random weights everywhere (biases and BatchNorm statistics included)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = [rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()]
        if isinstance(layer, L.BatchNormalization):
            weights[-1] = np.abs(weights[-1]) + 0.5  # moving variance
        if weights:
            layer.set_weights(weights)


def _silence(model, names, channels):
    """Zero output channels `channels` of the named Dense/Conv/Depthwise/BatchNorm layers.

    The layers' outputs are then exactly 0 on those channels, so removing them
    (and the readers' matching inputs) must not change the model's output.
    """
    for name in names:
        layer = model.get_layer(name)
        weights = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            weights[0][channels] = 0  # gamma
            weights[1][channels] = 0  # beta
        elif isinstance(layer, L.DepthwiseConv2D):
            weights[0][..., channels, :] = 0
            weights[1][channels] = 0
        else:
            weights[0][..., channels] = 0
            weights[1][channels] = 0
        layer.set_weights(weights)


def _half(n, seed):
    return np.sort(np.random.default_rng(seed).permutation(n)[: n // 2])


def _assert_same_function(model, small, shape):
    x = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
    np.testing.assert_allclose(small(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)


def _kept(big, small, axis=-1):
    """Which channels of `big` (a kernel) survive in `small`, matched by their weights."""
    big, small = np.moveaxis(big, axis, 0), np.moveaxis(small, axis, 0)
    return [int(np.flatnonzero([np.array_equal(b, s) for b in big])[0]) for s in small]


def _hard_swish_net():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = x * keras.ops.relu6(x + 3.0) / 6.0  # MobileNetV3's hard-swish as op nodes
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = x * (L.ReLU(6.0)(x + 3.0) * (1.0 / 6.0))  # keras.applications' form
    x = L.Conv2D(8, 1, name="c2")(x)
    x = keras.ops.hard_silu(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(5, name="out")(x))


def test_hard_swish_op_nodes_and_depthwise_follow():
    model = _hard_swish_net()
    _randomize(model)
    small = prune_units(model, 0.5)
    assert small.get_layer("c1").filters == 4 and small.get_layer("c2").filters == 4
    assert small.get_layer("dw").kernel.shape == (3, 3, 4, 1)
    assert small.get_layer("out").kernel.shape == (4, 5)
    keep = _kept(model.get_layer("c1").kernel.numpy(), small.get_layer("c1").kernel.numpy())
    np.testing.assert_array_equal(
        small.get_layer("dw").kernel.numpy(), model.get_layer("dw").kernel.numpy()[..., keep, :]
    )
    dropped, dropped2 = _half(8, 1), _half(8, 2)
    _silence(model, ["c1", "dw"], dropped)
    _silence(model, ["c2"], dropped2)
    small = prune_units(model, 0.5)
    assert _kept(model.get_layer("c1").kernel.numpy(), small.get_layer("c1").kernel.numpy()) == [
        i for i in range(8) if i not in dropped
    ]
    _assert_same_function(model, small, (8, 8, 3))


def _residual_net():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.ReLU()(L.BatchNormalization(name="bn0")(x))
    y = L.Conv2D(6, 3, padding="same", name="a")(x)
    y = L.ReLU()(L.BatchNormalization(name="bn_a")(y))
    y = L.Conv2D(8, 3, padding="same", name="b")(y)
    y = L.BatchNormalization(name="bn_b")(y)
    x = L.ReLU()(L.Add(name="add")([x, y]))
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(5, name="out")(x))


def test_residual_add_producers_lose_the_same_units():
    model = _residual_net()
    _randomize(model)
    small = prune_units(model, 0.5)
    assert [small.get_layer(n).filters for n in ("stem", "a", "b")] == [4, 3, 4]
    kernels = {n: model.get_layer(n).kernel.numpy() for n in ("stem", "b")}
    scores = sum(np.abs(k.reshape(-1, 8)).sum(0) for k in kernels.values())
    keep = np.sort(np.argsort(-scores, kind="stable")[:4])
    stem = small.get_layer("stem").kernel.numpy()
    np.testing.assert_array_equal(stem, kernels["stem"][..., keep])
    np.testing.assert_array_equal(
        small.get_layer("bn_b").gamma.numpy(), model.get_layer("bn_b").gamma.numpy()[keep]
    )
    _silence(model, ["stem", "bn0", "b", "bn_b"], _half(8, 1))
    _silence(model, ["a", "bn_a"], _half(6, 2))
    _assert_same_function(model, prune_units(model, 0.5), (8, 8, 3))


def test_squeeze_excite_gate_is_tied_to_the_feature_map():
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.Conv2D(8, 3, padding="same", name="c1")(inputs))
    g = L.GlobalAveragePooling2D(keepdims=True)(x)
    g = L.ReLU()(L.Conv2D(4, 1, name="se1")(g))
    g = L.Conv2D(8, 1, name="se2")(g)
    g = L.ReLU(6.0)(g + 3.0) * (1.0 / 6.0)  # hard sigmoid as op nodes
    x = x * g  # (N, 8, 8, C) times (N, 1, 1, C)
    x = L.Conv2D(8, 1, name="c2")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(5, name="out")(x))
    _randomize(model)
    small = prune_units(model, 0.5)
    assert [small.get_layer(n).filters for n in ("c1", "se1", "se2", "c2")] == [4, 2, 4, 4]
    big = {n: model.get_layer(n).kernel.numpy() for n in ("c1", "se1", "se2")}
    keep_c1 = _kept(big["c1"], small.get_layer("c1").kernel.numpy())
    keep_se1 = _kept(big["se1"][..., keep_c1, :], small.get_layer("se1").kernel.numpy())
    # The gate loses the feature map's channels.
    np.testing.assert_array_equal(
        small.get_layer("se2").kernel.numpy(), big["se2"][..., keep_se1, :][..., keep_c1]
    )
    _silence(model, ["c1", "se2"], _half(8, 1))
    _silence(model, ["se1"], _half(4, 2))
    _silence(model, ["c2"], _half(8, 3))
    _assert_same_function(model, prune_units(model, 0.5), (8, 8, 3))


def test_concatenate_maps_channels_with_offsets():
    inputs = keras.Input((6, 6, 3))
    a = L.Conv2D(6, 3, padding="same", name="a")(inputs)
    b = L.Conv2D(4, 3, padding="same", name="b")(inputs)
    x = L.Concatenate(name="cat")([L.ReLU()(a), L.ReLU()(b)])
    x = L.Conv2D(8, 1, name="c")(x)
    x = L.Flatten()(L.MaxPooling2D()(x))
    model = keras.Model(inputs, L.Dense(5, name="out")(x))
    _randomize(model)
    small = prune_units(model, 0.5)
    assert [small.get_layer(n).filters for n in "abc"] == [3, 2, 4]
    keep_a = _kept(model.get_layer("a").kernel.numpy(), small.get_layer("a").kernel.numpy())
    keep_b = _kept(model.get_layer("b").kernel.numpy(), small.get_layer("b").kernel.numpy())
    rows = keep_a + [6 + i for i in keep_b]  # b's channels come after a's six
    c_big = model.get_layer("c").kernel.numpy()[..., rows, :]
    c_small = small.get_layer("c").kernel.numpy()
    np.testing.assert_array_equal(c_small, c_big[..., _kept(c_big, c_small)])
    _silence(model, ["a"], _half(6, 1))
    _silence(model, ["b"], _half(4, 2))
    _silence(model, ["c"], _half(8, 3))
    _assert_same_function(model, prune_units(model, 0.5), (6, 6, 3))


def test_unknown_layers_ops_and_nested_models_block():
    inputs = keras.Input((6,))
    x = L.Dense(8, name="p")(inputs)
    x = L.Dense(8, name="ln_in")(x)
    x = L.LayerNormalization()(x)  # mixes channels: ln_in stays whole
    x = L.Dense(8, name="const_in")(x)
    x = keras.ops.multiply(x, np.linspace(0.5, 1.5, 8).astype("float32"))  # per-channel constant
    x = L.Dense(8, name="nested_in")(x)
    x = keras.Sequential([keras.Input((8,)), L.Dense(8, name="inner")], name="sub")(x)
    model = keras.Model(inputs, L.Dense(3, name="out")(x))
    small = prune_units(model, 0.5)
    units = {n: small.get_layer(n).units for n in ("p", "ln_in", "const_in", "nested_in", "out")}
    assert units == {"p": 4, "ln_in": 8, "const_in": 8, "nested_in": 8, "out": 3}
    assert small.get_layer("sub").get_layer("inner").units == 8
    assert small(np.zeros((2, 6), "float32")).shape == (2, 3)


def _resnet():
    def block(x, filters, stride, name):
        y = L.Conv2D(filters, 3, stride, padding="same", use_bias=False, name=f"{name}_1")(x)
        y = L.ReLU()(L.BatchNormalization()(y))
        y = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_2")(y)
        y = L.BatchNormalization()(y)
        if stride != 1 or x.shape[-1] != filters:
            x = L.Conv2D(filters, 1, stride, use_bias=False, name=f"{name}_proj")(x)
            x = L.BatchNormalization()(x)
        return L.ReLU()(L.Add()([x, y]))

    inputs = keras.Input((32, 32, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same", name="stem")(inputs)))
    for i, (filters, stride) in enumerate([(16, 1), (16, 1), (32, 2), (32, 1), (64, 2)]):
        x = block(x, filters, stride, f"block{i}")
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(10, name="logits")(x), name="resnet")


@pytest.mark.slow
@pytest.mark.parametrize(
    "build",
    [
        lambda: keras.applications.MobileNetV2(
            input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10
        ),
        lambda: keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3),
            alpha=0.75,
            weights=None,
            classes=10,
            include_preprocessing=False,
        ),
        _resnet,
    ],
    ids=["mobilenet_v2", "mobilenet_v3_small", "resnet"],
)
def test_applications_shrink(build):
    model = build()
    small = prune_units(model, 0.5)
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    assert small(x).shape == (2, 10)
    ratio = small.count_params() / model.count_params()
    print(f"{model.name}: {model.count_params()} -> {small.count_params()} ({ratio:.2f})")
    assert ratio < 0.6, ratio


def test_shared_layers_prelu_and_reshapes():
    # A layer called twice keeps one set of units; Reshape/ops.reshape targets shrink.
    first, second = keras.Input((5,)), keras.Input((5,))
    enc, bn, mid = L.Dense(8, name="enc"), L.BatchNormalization(name="bn"), L.Dense(6, name="mid")
    x = L.Concatenate()([mid(bn(enc(first))), mid(bn(enc(second)))])
    x = L.Flatten()(L.Reshape((1, 12))(L.PReLU(name="prelu")(x)))
    x = keras.ops.reshape(L.Dense(8, name="d")(x), (-1, 1, 8))
    model = keras.Model([first, second], L.Dense(2, name="out")(L.Flatten()(x)))
    _randomize(model)
    _silence(model, ["enc", "bn"], _half(8, 1))
    _silence(model, ["mid"], _half(6, 2))
    _silence(model, ["d"], _half(8, 3))
    small = prune_units(model, 0.5)
    assert {n: small.get_layer(n).units for n in ("enc", "mid", "d")} == {
        "enc": 4,
        "mid": 3,
        "d": 4,
    }
    assert small.get_layer("prelu").alpha.shape == (6,)
    xs = [np.random.default_rng(i).random((4, 5), dtype=np.float32) for i in range(2)]
    np.testing.assert_allclose(small(xs).numpy(), model(xs).numpy(), rtol=1e-4, atol=1e-4)


class _MlpBlock(keras.layers.Layer):
    """A custom residual MLP block: its variables all sit in its Dense sublayers."""

    def __init__(self, width, hidden, **kwargs):
        super().__init__(**kwargs)
        self.width, self.hidden = width, hidden
        self.up = L.Dense(hidden, activation="relu", name="up")
        self.down = L.Dense(width, name="down")

    def build(self, shape):
        self.up.build(shape)
        self.down.build((*shape[:-1], self.hidden))

    def call(self, x):
        return x + self.down(self.up(x))

    def get_config(self):
        return {**super().get_config(), "width": self.width, "hidden": self.hidden}


class _TfBlock(_MlpBlock):
    """The same block calling TensorFlow directly: it cannot run on symbolic tensors."""

    def call(self, x):
        import tensorflow as tf

        return tf.add(x, self.down(self.up(x)))


def test_custom_layers_are_called_inline_and_lose_units(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = _MlpBlock(6, 16, name="first")(L.Dense(6, name="stem")(inputs))
    x = _TfBlock(6, 16, name="second")(x)
    model = keras.Model(inputs, L.Dense(3, name="out")(_MlpBlock(6, 8, name="third")(x)))
    data = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    # Nothing removed: the inlined graph computes the model's function.
    same = prune_units(model, {"first_up": 0.0})
    np.testing.assert_allclose(same.predict(data, verbose=0), model.predict(data, verbose=0),
                               atol=1e-5)
    small = prune_units(model, 0.5)
    names = [layer.name for layer in small.layers]
    assert {"first_up", "first_down", "third_up", "third_down", "second"} <= set(names)
    assert small.get_layer("first_up").units == 8 and small.get_layer("third_up").units == 4
    assert small.get_layer("first_down").units == 6  # the residual reaches second: kept
    assert isinstance(small.get_layer("second"), _TfBlock)  # whole, its units kept
    up = model.get_layer("first").up.kernel.numpy()
    keep = np.sort(np.argsort(-np.abs(up).sum(0), kind="stable")[:8])
    np.testing.assert_array_equal(small.get_layer("first_up").kernel.numpy(), up[:, keep])
    # exclude= names a custom layer (kept whole) or a layer inside one.
    kept = prune_units(model, 0.5, exclude=["first"])
    assert isinstance(kept.get_layer("first"), _MlpBlock)
    assert prune_units(model, 0.5, exclude=["up"]).get_layer("first_up").units == 16
    small.save(tmp_path / "small.keras")
    reloaded = keras.saving.load_model(tmp_path / "small.keras",
                                       custom_objects={"_TfBlock": _TfBlock})
    np.testing.assert_allclose(reloaded.predict(data, verbose=0), small.predict(data, verbose=0),
                               atol=1e-6)

"""The model-surgery core and the layer registry, under every technique.

The models here are the ones that broke each technique differently before
there was one walk: Keras op nodes in a Functional graph, a custom layer whose
weights live in sublayers, MultiHeadAttention, a Dense subclass with its own
`call`, and a user's layer made known with `tfc.register_layer`.
"""

import warnings

import keras
import numpy as np
import pytest
from keras import layers, ops

import tfcompress as tfc
from tfcompress import layers_registry, surgery


@keras.saving.register_keras_serializable("tfc_tests")
class TokenAndPositionEmbedding(layers.Layer):
    """The keras.io pattern: weights live in two Embedding sublayers built on call."""

    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.maxlen, self.vocab_size, self.embed_dim = maxlen, vocab_size, embed_dim
        self.token_emb = layers.Embedding(vocab_size, embed_dim)
        self.pos_emb = layers.Embedding(maxlen, embed_dim)

    def call(self, x):
        positions = ops.arange(0, ops.shape(x)[-1])
        return self.token_emb(x) + self.pos_emb(positions)

    def get_config(self):
        config = {"maxlen": self.maxlen, "vocab_size": self.vocab_size, "embed_dim": self.embed_dim}
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable("tfc_tests")
class MyDense(layers.Dense):
    """A Dense subclass with its own call: it computes something else."""

    def call(self, x):
        return super().call(x) * 2.0


@keras.saving.register_keras_serializable("tfc_tests")
class PlainSubDense(layers.Dense):
    """A Dense subclass that keeps Dense's call: treated as a Dense."""


@keras.saving.register_keras_serializable("tfc_tests")
class Scale(layers.Layer):
    """A user's layer with one kernel, unknown to tfcompress until registered."""

    def build(self, shape):
        self.w = self.add_weight(shape=shape[1:], initializer="random_normal", name="w")

    def call(self, x):
        return x * self.w


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [layers.Dense(8, activation="relu"), layers.Dense(8, activation="relu")]
        self.heads = {"out": layers.Dense(3)}

    def call(self, x):
        for block in self.blocks:
            x = block(x)
        return self.heads["out"](x)


def _hard_swish_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same")(inputs)
    x = x * ops.relu6(x + 3.0) / 6.0
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)
    x = layers.Conv2D(8, 1)(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4)(x))


def _token_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,), dtype="int32")
    x = TokenAndPositionEmbedding(6, 20, 16)(inputs)
    x = layers.Dense(16, activation="relu")(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(4)(x))


def _attention_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 16))
    x = layers.MultiHeadAttention(2, 8, name="mha")(inputs, inputs)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(4, name="head")(x))


def _image(n=16, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype("float32")


def _tokens(n=16, seed=1):
    return np.random.default_rng(seed).integers(0, 20, size=(n, 6)).astype("int32")


def _shares_no_variable(a, b):
    return not {id(v) for v in a.weights} & {id(v) for v in b.weights}


# ---------------------------------------------------------------- the walk and the copy


def test_graph_model_definition():
    assert surgery.is_graph_model(keras.Sequential([keras.Input((3,)), layers.Dense(2)]))
    assert surgery.is_graph_model(_hard_swish_model())
    model = Subclassed()
    model(np.zeros((1, 4), "float32"))
    assert not surgery.is_graph_model(model)
    assert not surgery.is_graph_model(layers.Dense(2))


@pytest.mark.parametrize(
    "make, data",
    [
        (_hard_swish_model, _image),
        (_token_model, _tokens),
        (_attention_model, lambda: np.random.default_rng(1).normal(size=(4, 6, 16))),
    ],
    ids=["op-nodes", "custom-sublayers", "attention"],
)
def test_copy_model_is_exact_and_shares_nothing(make, data):
    model, x = make(), data()
    copy = surgery.copy_model(model)
    np.testing.assert_array_equal(copy.predict(x, verbose=0), model.predict(x, verbose=0))
    assert _shares_no_variable(model, copy)


def test_copy_of_nested_shared_and_subclassed_models():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((4,)), layers.Dense(4, activation="relu")], name="inner")
    shared = layers.Dense(4, name="shared")
    inputs = keras.Input((4,))
    x = shared(inner(inputs))
    outputs = shared(x + 1.0)  # called twice: copied once
    model = keras.Model(inputs, outputs)
    copy = surgery.copy_model(model)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert len(copy.weights) == len(model.weights) and _shares_no_variable(model, copy)

    sub = Subclassed()
    sub(x)
    copy = surgery.copy_model(sub)
    np.testing.assert_allclose(copy(x), sub(x), atol=1e-6)
    assert _shares_no_variable(sub, copy)
    paths = surgery.layer_paths(copy, lambda layer: True)
    assert set(paths) == {"blocks.0", "blocks.1", "heads.out"}


def test_replace_layers_through_op_nodes_keeps_the_rest_exact():
    model = _hard_swish_model()
    x = _image()

    def doubled(copy, _):
        copy.kernel.assign(copy.kernel * 2.0)
        copy.bias.assign(copy.bias * 2.0)
        return copy

    new = surgery.replace_layers(model, lambda layer: isinstance(layer, layers.Dense), doubled)
    np.testing.assert_allclose(
        new.predict(x, verbose=0), 2.0 * model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_selection_validates_names():
    model = _attention_model()
    select = surgery.Selection(model, exclude=["mha"])
    mha = model.get_layer("mha")
    assert not select(mha) and select(model.get_layer("head"))
    with pytest.raises(ValueError, match="exclude"):
        surgery.Selection(model, exclude=["nope"])
    with pytest.raises(ValueError, match="layers"):
        surgery.Selection(model, layers=[3])


# ---------------------------------------------------------------- the cases of the issue


def _fit(model, x, y, epochs, lr):
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(lr), loss, metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


@pytest.mark.slow
def test_custom_sublayer_model_goes_through_qat_and_low_rank(tmp_path):
    x = _tokens(256)
    y = x[:, 0] % 4  # learnable from the first token
    model = _fit(_token_model(), x, y, epochs=20, lr=1e-2)
    qat = tfc.quantization.quantize_model(model)  # its embeddings are quantized inside it
    assert isinstance(
        qat.get_layer("token_and_position_embedding"), tfc.quantization.QuantizedComposite
    )
    _fit(qat, x, y, epochs=2, lr=1e-3)
    tfc.export.to_tflite(qat, tmp_path / "qat.tflite", quantization="int8")
    lite, keras_logits = tfc.export.LiteModel(tmp_path / "qat.tflite"), qat.predict(x, verbose=0)
    assert np.mean(lite.predict(x).argmax(1) == keras_logits.argmax(1)) >= 0.99
    assert {"FULLY_CONNECTED", "GATHER"} <= set(lite.ops())
    assert lite.is_fully_int8(), lite.float_ops()

    factorized = tfc.factorization.low_rank(model, rank=4)
    assert factorized.count_params() < model.count_params()
    assert {"dense_u", "dense_v"} <= {layer.name for layer in factorized.layers}
    exact = tfc.factorization.low_rank(model, rank={"dense_1": 3})
    u, s_, vt = np.linalg.svd(model.get_layer("dense_1").kernel.numpy().astype("float64"))
    first, second = exact.get_layer("dense_1_u"), exact.get_layer("dense_1_v")
    product = first.kernel.numpy() @ second.kernel.numpy()
    np.testing.assert_allclose(product, (u[:, :3] * s_[:3]) @ vt[:3], atol=1e-5)
    embedding = factorized.get_layer("token_and_position_embedding")
    for a, b in zip(embedding.weights, model.get_layer("token_and_position_embedding").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_attention_model_clusters_or_is_excluded():
    model = _attention_model()
    clustered = tfc.clustering.cluster_weights(model, 8)
    final = tfc.clustering.strip_clustering(clustered)
    mha = final.get_layer("mha")
    kernels = [w for w in mha.weights if w.name == "kernel"]
    assert len(kernels) == 4  # query, key, value, output projections
    assert all(len(np.unique(k.numpy())) <= 8 for k in kernels)
    assert len(np.unique(final.get_layer("head").kernel.numpy())) <= 8

    kept = tfc.clustering.strip_clustering(
        tfc.clustering.cluster_weights(model, 8, exclude=["mha"])
    )
    for a, b in zip(kept.get_layer("mha").weights, model.get_layer("mha").weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(np.unique(kept.get_layer("head").kernel.numpy())) <= 8


def _mydense_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((8,)), MyDense(16, name="mine"), layers.Dense(4, name="plain")]
    )


def _techniques():
    schedule = tfc.pruning.ConstantSparsity(0.5, 0, frequency=1)
    return {
        "pruning": lambda m: tfc.pruning.prune_low_magnitude(m, pruning_schedule=schedule),
        "clustering": lambda m: tfc.clustering.cluster_weights(m, 4),
        "quantization": lambda m: tfc.quantization.quantize_model(m),
        "low_rank": lambda m: tfc.factorization.low_rank(m, rank=2),
    }


def _treated(technique, result):
    """Whether `technique` changed the layer named "mine" of its result."""
    if technique == "pruning":
        return any("mine" in name for name in result.weight_names)
    names = [layer.name for layer in surgery.all_layers(result)]
    if technique == "low_rank":
        return "mine_u" in names
    wrapper = {"clustering": "cluster_mine", "quantization": "quant_mine"}[technique]
    return wrapper in names


@pytest.mark.parametrize("technique", sorted(_techniques()))
def test_a_subclass_overriding_call_gets_the_same_treatment_everywhere(technique):
    """Left alone, with the same warning, by every technique; registered `like=Dense`, treated."""
    make = _techniques()[technique]
    with pytest.warns(UserWarning, match=r"\['MyDense'\].*override call\(\).*register_layer"):
        result = make(_mydense_model())
    assert not _treated(technique, result)

    spec = layers_registry.register_layer(MyDense, like=layers.Dense)
    try:
        assert layers_registry.lookup(MyDense(2)) is spec
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            result = make(_mydense_model())
        assert _treated(technique, result)
    finally:
        del layers_registry._TABLE[MyDense]


def test_a_subclass_keeping_call_is_its_parent():
    layer = PlainSubDense(3)
    assert layers_registry.lookup(layer) is layers_registry.lookup(layers.Dense(3))
    assert not layers_registry.overrides_call(layer)
    assert layers_registry.overrides_call(MyDense(3))


def _scale_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((16,)), layers.Dense(16), Scale(name="scale"), layers.Dense(4)]
    )


@pytest.mark.slow
def test_register_layer_makes_a_user_layer_prunable_clusterable_quantizable(tmp_path, digits):
    layers_registry.register_layer(Scale, kernels=["w"])
    try:
        x = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
        y = np.random.default_rng(1).integers(0, 4, 32)
        # pruning: the registered kernel reaches the target sparsity
        schedule = tfc.pruning.ConstantSparsity(0.5, 0, frequency=1)
        pruned = tfc.pruning.prune_low_magnitude(_scale_model(), pruning_schedule=schedule)
        pruned.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        pruned.fit(x, y, epochs=1, batch_size=16, verbose=0)
        assert tfc.pruning.get_sparsity(pruned)["scale/w"] == pytest.approx(0.5)
        # clustering: at most k values, function of the stripped model = clustered model
        clustered = tfc.clustering.cluster_weights(_scale_model(), 3)
        final = tfc.clustering.strip_clustering(clustered)
        assert len(np.unique(final.get_layer("scale").w.numpy())) <= 3
        np.testing.assert_allclose(final.predict(x, verbose=0), clustered.predict(x, verbose=0),
                                   atol=1e-5)
        # QAT: the kernel is fake-quantized (int8 grid) and the file runs int8
        qat = tfc.quantization.quantize_model(_scale_model(), fully_int8=True)
        wrapper = qat.get_layer("quant_scale")
        (kernel,) = wrapper.quantized_kernels()
        w = wrapper.layer.w.numpy()
        step = np.abs(w).max() / 127
        np.testing.assert_allclose(np.round(kernel.numpy() / step), kernel.numpy() / step,
                                   atol=1e-3)
        tfc.export.to_tflite(qat, tmp_path / "scale.tflite", quantization="int8")
        lite = tfc.export.LiteModel(tmp_path / "scale.tflite")
        assert lite.is_fully_int8()
        agree = np.mean(lite.predict(x).argmax(1) == qat.predict(x, verbose=0).argmax(1))
        assert agree >= 0.9
    finally:
        del layers_registry._TABLE[Scale]


def test_register_layer_bad_input():
    with pytest.raises(ValueError, match="cls="):
        layers_registry.register_layer("Dense", kernels=["kernel"])
    with pytest.raises(ValueError, match="like="):
        layers_registry.register_layer(Scale, like=Scale)
    with pytest.raises(ValueError, match="kernels="):
        layers_registry.register_layer(Scale, kernels="w")
    with pytest.raises(ValueError, match="prune="):
        layers_registry.register_layer(Scale, kernels=["w"], prune=["v"])
    assert layers_registry.lookup(Scale()) is None  # nothing registered by failed calls


def test_every_technique_takes_layers_and_exclude():
    """`exclude=` leaves a layer untouched and `layers=` picks, in every technique."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((16,)), layers.Dense(16, activation="relu", name="a"),
         layers.Dense(16, activation="relu", name="b"), layers.Dense(4, name="out")]
    )
    schedule = tfc.pruning.ConstantSparsity(0.5, 0, frequency=1)
    pruned = tfc.pruning.prune_low_magnitude(model, pruning_schedule=schedule, exclude=["a"])
    assert not any(name.startswith("a/") for name in pruned.weight_names)
    clustered = tfc.clustering.cluster_weights(model, 4, layers=["b"])
    assert [layer.name for layer in clustered.layers if "cluster" in layer.name] == ["cluster_b"]
    qat = tfc.quantization.quantize_model(model, exclude=["a"])
    names = [layer.name for layer in qat.layers]
    assert "quant_b" in names and "quant_a" not in names and "a" in names
    factorized = tfc.factorization.low_rank(model, rank=2, exclude=["b"])
    assert "b" in [layer.name for layer in factorized.layers]
    assert "a_u" in [layer.name for layer in factorized.layers]
    small = tfc.pruning.prune_units(model, 0.5, exclude=["a"])
    assert small.get_layer("a").units == 16 and small.get_layer("b").units == 8
    small = tfc.pruning.prune_units(model, 0.5, layers=["a"])
    assert small.get_layer("a").units == 8 and small.get_layer("b").units == 16
    for technique in (
        lambda: tfc.clustering.cluster_weights(model, 4, exclude=["nope"]),
        lambda: tfc.quantization.quantize_model(model, exclude=["nope"]),
        lambda: tfc.factorization.low_rank(model, rank=2, exclude=["nope"]),
        lambda: tfc.pruning.prune_units(model, 0.5, exclude=["nope"]),
        lambda: tfc.pruning.prune_low_magnitude(model, exclude=["nope"]),
    ):
        with pytest.raises(ValueError, match="exclude"):
            technique()

"""Every tfcompress training path under mixed_float16 and mixed_bfloat16.

Each path (RBM, DBN, pruning, QAT, distillation with logits and features,
clustering, low-rank, PCA) trains through the public API with the global policy
set, keeps its variables (weights, masks, quantization ranges, centroids, RBM
and PCA statistics) in float32, reaches the state its technique promises, and
exports to TFLite with the same predictions as the Keras model.
"""

import itertools

import keras
import numpy as np
import pytest
from conftest import feature_models, small_mlp

import tfcompress as tfc

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
POLICIES = ["mixed_float16", "mixed_bfloat16"]


@pytest.fixture(params=POLICIES)
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def _float_variables(model):
    return [v for v in model.variables if "float" in str(v.dtype)]


def _assert_float32_state(model):
    variables = _float_variables(model)
    assert variables
    wrong = {v.path: str(v.dtype) for v in variables if v.dtype != "float32"}
    assert not wrong, wrong


def _assert_finite_history(history):
    for key, values in history.history.items():
        assert np.all(np.isfinite(values)), (key, values)


def _assert_exports(model, x, *, quantization=None, representative_data=None, agree=0.98):
    """The TFLite file predicts like the Keras model (mixed-precision tolerance)."""
    blob = tfc.export.to_tflite(model, quantization=quantization,
                                representative_data=representative_data)
    lite = tfc.export.LiteModel(blob)
    expected = np.asarray(model.predict(x, verbose=0), dtype="float32")
    got = lite.predict(x)
    assert got.shape == expected.shape
    if quantization is None:
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, atol=0.03 * scale)
    if agree is not None:
        assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= agree
    return lite


@pytest.mark.slow
def test_rbm_fit(policy, digits):
    (x, _), _ = digits
    v = (x[:256] > 0.5).astype("float32")
    rbm = tfc.RBM(12, k=1, seed=0)
    model = keras.Sequential([keras.Input((64,)), rbm])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5))
    before = rbm.kernel.numpy().copy()
    history = model.fit(v, epochs=2, batch_size=32, verbose=0)
    _assert_finite_history(history)
    _assert_float32_state(model)
    assert np.abs(rbm.kernel.numpy() - before).max() > 1e-3
    # The exact log Z of the float32 parameters, against brute-force NumPy enumeration.
    w, b, c = (np.float64(t.numpy()) for t in (rbm.kernel, rbm.visible_bias, rbm.hidden_bias))
    h = np.array(list(itertools.product([0, 1], repeat=12)), dtype="float64")
    terms = h @ c + np.logaddexp(0, b + h @ w.T).sum(-1)
    expected = terms.max() + np.log(np.exp(terms - terms.max()).sum())
    assert tfc.rbm.log_partition(rbm) == pytest.approx(expected, rel=1e-6)
    # Hidden probabilities, not class scores: compared by value only (bfloat16 rounds
    # near-equal probabilities into ties, so their argmax is not meaningful).
    _assert_exports(model, v[:64], agree=None)


@pytest.mark.slow
def test_pruning_fit(policy, digits):
    (x, y), _ = digits
    schedule = tfc.pruning.ConstantSparsity(0.5, begin_step=0, frequency=1)
    pm = tfc.pruning.prune_low_magnitude(small_mlp(hidden=(32,)), pruning_schedule=schedule)
    pm.compile(keras.optimizers.Adam(1e-3), SCCE, metrics=["accuracy"])
    history = pm.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0,
                     callbacks=[tfc.pruning.UpdatePruningStep()])
    _assert_finite_history(history)
    _assert_float32_state(pm)
    final = tfc.pruning.strip_pruning(pm)
    for name, sparsity in tfc.pruning.get_sparsity(final).items():
        assert sparsity == pytest.approx(0.5, abs=0.02), name
    _assert_exports(final, x[:128])


@pytest.mark.slow
def test_quantization_aware_fit(policy, digits):
    (x, y), _ = digits
    qat = tfc.quantization.quantize_model(small_mlp(hidden=(32,)))
    qat.compile(keras.optimizers.Adam(1e-3), SCCE, metrics=["accuracy"])
    history = qat.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    _assert_finite_history(history)
    _assert_float32_state(qat)
    lite = _assert_exports(qat, x[:128], quantization="int8", agree=0.9)
    assert lite.is_fully_int8()


@pytest.mark.slow
def test_distiller_fit(policy, digits):
    (x, y), _ = digits
    d = tfc.Distiller(student=small_mlp(hidden=(8,), seed=2),
                      teacher=small_mlp(hidden=(32,), seed=1))
    d.compile(keras.optimizers.Adam(1e-2), metrics=["accuracy"], student_loss_fn=SCCE,
              alpha=0.1, temperature=3)
    assert d.student.compute_dtype != "float32"
    history = d.fit(x[:256], y[:256], batch_size=64, epochs=3, verbose=0)
    _assert_finite_history(history)
    assert history.history["loss"][-1] < history.history["loss"][0]
    _assert_float32_state(d)
    loss = d.compute_loss(x[:8], y[:8], d(x[:8]))
    assert loss.dtype == "float32"
    _assert_exports(d.student, x[:128])


@pytest.mark.slow
def test_feature_distillation_fit_and_round_trip(policy, digits, tmp_path):
    (x, y), _ = digits
    teacher, student = feature_models()
    d = tfc.Distiller(student=student, teacher=teacher, feature_layers=[("t_hidden", "s_hidden")])
    d.compile(keras.optimizers.Adam(1e-2), student_loss_fn=SCCE)
    assert d.projections[0].compute_dtype == policy.split("_")[1]
    history = d.fit(x[:256], y[:256], batch_size=64, epochs=3, verbose=0)
    _assert_finite_history(history)
    assert history.history["feature_loss"][-1] < history.history["feature_loss"][0]
    _assert_float32_state(d)
    d.save(tmp_path / "d.keras")
    clone = keras.saving.load_model(tmp_path / "d.keras")
    assert clone.projections[0].kernel.dtype == "float32"
    np.testing.assert_array_equal(clone.predict(x[:16], verbose=0), d.predict(x[:16], verbose=0))


@pytest.mark.slow
def test_dbn_pretrain_and_classifier(policy, digits):
    (x, y), _ = digits
    v = (x[:128] > 0.5).astype("float32")
    dbn = tfc.DBN([16, 8], seed=0)
    histories = dbn.pretrain(v, epochs=1, batch_size=32, verbose=0)
    assert len(histories) == 2
    for history in histories:
        _assert_finite_history(history)
    _assert_float32_state(dbn)
    clf = dbn.to_classifier(10)
    clf.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    _assert_finite_history(clf.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0))
    _assert_float32_state(clf)
    _assert_exports(clf, x[:128], agree=0.9)


@pytest.mark.slow
def test_low_rank_fit(policy, digits):
    (x, y), _ = digits
    small = tfc.factorization.low_rank(small_mlp(hidden=(32,)), rank=4)
    assert small.count_params() < small_mlp(hidden=(32,)).count_params()
    small.compile(keras.optimizers.Adam(1e-3), SCCE)
    _assert_finite_history(small.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0))
    _assert_float32_state(small)
    _assert_exports(small, x[:128], agree=0.9)


@pytest.mark.slow
def test_pca_fit(policy, digits):
    (x, y), _ = digits
    pca = tfc.factorization.PCA(12)
    pca.adapt(x)
    model = keras.Sequential([keras.Input((64,)), pca, keras.layers.Dense(10)])
    assert pca.compute_dtype == policy.split("_")[1]
    model.compile(keras.optimizers.Adam(1e-3), SCCE)
    _assert_finite_history(model.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0))
    _assert_float32_state(model)  # mean, components, explained variance
    _assert_exports(model, x[:128], agree=0.9)


@pytest.mark.slow
def test_clustering_fit(policy, digits):
    (x, y), _ = digits
    clustered = tfc.clustering.cluster_weights(small_mlp(hidden=(32,)), number_of_clusters=8,
                                               seed=0)
    clustered.compile(keras.optimizers.Adam(1e-3), SCCE, metrics=["accuracy"])
    history = clustered.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    _assert_finite_history(history)
    _assert_float32_state(clustered)
    final = tfc.clustering.strip_clustering(clustered)
    for layer in final.layers:
        if getattr(layer, "kernel", None) is not None:
            assert len(np.unique(layer.kernel.numpy())) <= 8, layer.name
    _assert_exports(final, x[:128])

"""Tests of tfcompress.dbn: greedy pre-training, classifier, features, export."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits as sk_load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import minmax_scale
from threadpoolctl import threadpool_limits

import tfcompress as tfc
from tfcompress.dbn import DBN
from tfcompress.rbm import RBM


def _binary(n=96, d=12, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < 0.3).astype("float32")


def _shifted_digits():
    """Digits plus copies shifted one pixel up, down, left and right."""
    x, y = sk_load_digits(return_X_y=True)
    images = x.reshape(-1, 8, 8)
    copies = [images]
    for axis, step in ((1, 1), (1, -1), (2, 1), (2, -1)):
        shifted = np.roll(images, step, axis=axis)
        edge = 0 if step == 1 else -1
        if axis == 1:
            shifted[:, edge, :] = 0
        else:
            shifted[:, :, edge] = 0
        copies.append(shifted)
    x = minmax_scale(np.concatenate(copies).reshape(-1, 64), feature_range=(0, 1))
    return train_test_split(x.astype("float32"), np.tile(y, 5), test_size=0.2, random_state=0)


def test_upper_layer_is_trained_on_the_lower_layer_probabilities():
    x = _binary()
    dbn = DBN([6, 4], seed=3)
    dbn.pretrain(x, epochs=[0, 2], batch_size=16, shuffle=False, verbose=0)

    features = np.asarray(dbn.rbms[0](x))
    ref = RBM(4, seed=4)
    ref.init_visible_bias(features)
    model = keras.Sequential([keras.Input((6,)), ref])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    model.fit(features, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(dbn.rbms[1].weights, ref.weights):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("momentum,same", [(0.9, True), (0.5, False)])
def test_default_optimizer_is_sgd_with_momentum_0_9(momentum, same):
    # benchmarks/dbn_bench.py --variants: momentum 0.9 gives better classifiers
    # than 0.5 after the same pretraining epochs.
    x = _binary()
    default, explicit = DBN([5, 3], seed=2), DBN([5, 3], seed=2)
    default.pretrain(x, epochs=2, batch_size=16, shuffle=False, verbose=0)
    explicit.pretrain(x, epochs=2, batch_size=16, shuffle=False, verbose=0,
                      optimizer=keras.optimizers.SGD(0.05, momentum=momentum))
    gaps = [np.abs(np.array(a) - np.array(b)).max()
            for a, b in zip(default.weights, explicit.weights)]
    assert (max(gaps) < 1e-6) == same


@pytest.mark.slow
def test_pretrain_reads_a_generator_as_its_array():
    x = _binary()
    from_array, from_generator = DBN([5, 3], seed=2), DBN([5, 3], seed=2)
    from_array.pretrain(x, epochs=2, batch_size=16, shuffle=False, verbose=0)
    from_generator.pretrain((x[i:i + 16] for i in range(0, len(x), 16)), epochs=2,
                            batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(from_array.weights, from_generator.weights):
        np.testing.assert_array_equal(np.array(a), np.array(b))


@pytest.mark.slow
def test_pretrain_returns_histories_runs_callbacks_and_freezes_lower_layers():
    x = _binary()
    dbn = DBN([6, 4], seed=0)
    seen = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((self.model.name, logs["reconstruction_error"]))

    dbn.pretrain(x, epochs=1, batch_size=16, verbose=0)
    first = [np.array(w) for w in dbn.rbms[0].weights]
    histories = dbn.pretrain(x, epochs=[0, 3], batch_size=16, callbacks=[Count()], verbose=0)
    assert [len(h.history.get("loss", [])) for h in histories] == [0, 3]
    assert [name for name, _ in seen] == ["dbn_pretrain_1"] * 3
    for a, b in zip(first, dbn.rbms[0].weights):
        np.testing.assert_array_equal(a, b)  # the lower RBM stayed frozen
    assert all(rbm.trainable for rbm in dbn.rbms)
    np.testing.assert_allclose(dbn(x), dbn.rbms[1](dbn.rbms[0](x)), atol=1e-6)


@pytest.mark.slow
def test_pretrain_inside_mirrored_strategy_matches_one_device(mirrored):
    x = _binary(40)

    def run(strategy):
        with strategy.scope():
            dbn = DBN([6, 4], k=2, seed=1)
        dbn.pretrain(x, epochs=1, batch_size=16, shuffle=False, verbose=0)
        return [np.array(w) for w in dbn.weights]

    single = run(tf.distribute.get_strategy())
    for a, b in zip(single, run(mirrored)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    start = DBN([6, 4], k=2, seed=1)
    start.build((None, 12))
    for trained, fresh in zip(single[::3], start.weights[::3]):  # the kernels: moved by CD only
        assert np.abs(trained - np.array(fresh)).max() > 1e-4  # 10x the parity tolerance


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_dbn_features_beat_raw_pixels_on_shifted_digits():
    x_train, x_test, y_train, y_test = _shifted_digits()
    dbn = DBN([100], seed=0)
    dbn.pretrain(x_train, epochs=8, batch_size=32, steps_per_execution=16, verbose=0)
    with threadpool_limits(1):  # sklearn's BLAS threads fight TensorFlow's
        raw = LogisticRegression(C=10.0, max_iter=200).fit(x_train, y_train)
        feats = LogisticRegression(C=10.0, max_iter=200).fit(dbn.predict(x_train, verbose=0),
                                                            y_train)
    raw_acc = raw.score(x_test, y_test)
    dbn_acc = feats.score(dbn.predict(x_test, verbose=0), y_test)
    assert dbn_acc > raw_acc + 0.05


@pytest.mark.slow
def test_classifier_starts_from_rbms_fine_tunes_and_exports(digits, tmp_path):
    (x_tr, y_tr), (x_te, y_te) = digits
    dbn = DBN([32, 16], seed=0)
    dbn.pretrain(x_tr, epochs=1, batch_size=64, verbose=0)
    clf = dbn.to_classifier(10)
    hidden = keras.Sequential(clf.layers[:2])
    np.testing.assert_allclose(hidden(x_te), dbn(x_te), atol=1e-6)
    before = np.array(dbn.rbms[0].kernel)
    clf.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    clf.fit(x_tr, y_tr, epochs=10, batch_size=64, verbose=0)
    acc = clf.evaluate(x_te, y_te, verbose=0)[1]
    assert acc > 0.85
    np.testing.assert_array_equal(before, dbn.rbms[0].kernel)  # copies, DBN untouched
    assert not np.allclose(clf.layers[0].kernel, before)
    lite = tfc.export.LiteModel(tfc.export.to_tflite(clf, tmp_path / "dbn.tflite"))
    np.testing.assert_allclose(lite.predict(x_te), clf.predict(x_te, verbose=0), atol=1e-4)


def test_keras_round_trip(tmp_path):
    x = _binary()
    dbn = DBN([6, 4], visible="bernoulli", k=2, seed=0)
    dbn.pretrain(x, epochs=1, batch_size=16, verbose=0)
    dbn.save(tmp_path / "dbn.keras")
    loaded = keras.saving.load_model(tmp_path / "dbn.keras")
    assert isinstance(loaded, DBN) and loaded.get_config() == dbn.get_config()
    np.testing.assert_array_equal(loaded(x), dbn(x))
    assert [r.k for r in loaded.rbms] == [2, 2]


@pytest.mark.parametrize("batch_size", [0, 2.5, "32"])
def test_bad_batch_size_raises_before_any_change(batch_size):
    dbn = DBN([4, 3], seed=0)
    with pytest.raises(ValueError, match=f"batch_size={batch_size!r}"):
        dbn.pretrain(_binary(), epochs=1, batch_size=batch_size, verbose=0)
    assert not dbn.built  # neither built nor given data-initialised visible biases


@pytest.mark.parametrize("units", [[], [4, 0], 5, [2.5]])
def test_bad_units(units):
    with pytest.raises(ValueError, match="Received: units="):
        DBN(units)


@pytest.mark.parametrize(
    "kwargs,match", [({"k": 0}, "k=0"), ({"visible": "poisson"}, "visible='poisson'")]
)
def test_bad_rbm_arguments_of_a_dbn(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DBN([4, 3], **kwargs)


def test_bad_pretrain_and_classifier_arguments():
    dbn = DBN([4], seed=0)
    x = _binary()
    with pytest.raises(ValueError, match="no weights yet"):
        dbn.to_classifier(3)
    bad = x.copy()
    bad[0, 0] = 2.0
    with pytest.raises(ValueError, match="Received: x with min"):
        dbn.pretrain(bad, epochs=1, verbose=0)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        dbn.pretrain(bad, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="optimizer=42"):
        dbn.pretrain(x, epochs=1, optimizer=42, verbose=0)
    assert not dbn.built
    with pytest.raises(ValueError, match="epochs"):
        dbn.pretrain(x, epochs=[1, 2], verbose=0)
    dbn.pretrain(x, epochs=1, batch_size=32, verbose=0)
    with pytest.raises(ValueError, match="num_classes=1"):
        dbn.to_classifier(1)
    with pytest.raises(ValueError, match=r"x.shape=\(96, 5\)"):
        dbn.pretrain(x[:, :5], epochs=1, verbose=0)

"""prune_low_magnitude, strip_pruning, get_sparsity and the callbacks, end to end."""

import collections
import glob
import io
import json
import math
import os
import zipfile
from fractions import Fraction

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_mlp

import tfcompress as tfc
from tfcompress import pruning
from tfcompress.pruning import ConstantSparsity, PolynomialDecay

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _one_shot(sparsity=0.5):
    """Prune once at step 0 and keep that mask."""
    return ConstantSparsity(sparsity, begin_step=0, end_step=0, frequency=1)


def _zeros(variable):
    return keras.ops.convert_to_numpy(variable.value) == 0


def _expected_zero_count(size, sparsity):
    return math.ceil(Fraction(str(sparsity)) * size)


LAYER_CASES = {
    "dense": ((6,), lambda: keras.layers.Dense(4), ["kernel"]),
    "einsum": (
        (6,),
        lambda: keras.layers.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c"),
        ["kernel"],
    ),
    "conv1d": ((8, 3), lambda: keras.layers.Conv1D(4, 3), ["kernel"]),
    "conv2d": ((6, 6, 2), lambda: keras.layers.Conv2D(4, 3), ["kernel"]),
    "conv3d": ((4, 4, 4, 2), lambda: keras.layers.Conv3D(4, 2), ["kernel"]),
    "conv1d_t": ((5, 3), lambda: keras.layers.Conv1DTranspose(4, 3), ["kernel"]),
    "conv2d_t": ((5, 5, 2), lambda: keras.layers.Conv2DTranspose(4, 3), ["kernel"]),
    "conv3d_t": ((3, 3, 3, 2), lambda: keras.layers.Conv3DTranspose(2, 2), ["kernel"]),
    "depthwise": ((6, 6, 4), lambda: keras.layers.DepthwiseConv2D(3), ["kernel"]),
    "separable": ((6, 6, 4), lambda: keras.layers.SeparableConv2D(8, 3), ["pointwise_kernel"]),
    "embedding": ((5,), lambda: keras.layers.Embedding(20, 6), ["embeddings"]),
    "lstm": ((4, 3), lambda: keras.layers.LSTM(4), ["kernel", "recurrent_kernel"]),
    "gru": ((4, 3), lambda: keras.layers.GRU(4), ["kernel", "recurrent_kernel"]),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_types(case):
    shape, make, names = LAYER_CASES[case]
    layer = make()
    model = keras.Sequential(
        [keras.Input(shape, dtype="int32" if case == "embedding" else "float32"), layer]
    )
    pm = pruning.prune_low_magnitude(model, pruning_schedule=_one_shot(0.5))
    assert [n.split("/")[-1] for n in pm.weight_names] == names
    pm.compile("adam", "mse")
    x = (
        np.random.default_rng(0).integers(0, 20, (4, *shape))
        if case == "embedding"
        else np.random.rand(4, *shape)
    )
    assert bool(pm.update_masks(0))
    y = keras.ops.convert_to_numpy(pm(x))
    pm.train_on_batch(x, y + 1.0)
    for variable in pm.pruned_weights:
        assert _zeros(variable).sum() == _expected_zero_count(int(np.prod(variable.shape)), 0.5)
    biases = [w for w in model.weights if w.name == "bias"]
    assert all(not _zeros(b).any() for b in biases)


def test_rbm_protocol(digits):
    (x, _), _ = digits
    rbm = tfc.RBM(16, seed=0, cd_loss=True)  # True: the RBM is inside a wrapper model
    model = keras.Sequential([keras.Input((64,)), rbm])
    pm = pruning.prune_low_magnitude(model, pruning_schedule=_one_shot(0.75))
    assert pm.pruned_weights == [rbm.kernel]
    pm.compile(optimizer=keras.optimizers.SGD(0.05))
    pm.fit(x[:128], epochs=2, batch_size=32, verbose=0)
    assert _zeros(rbm.kernel).sum() == 768
    assert not _zeros(rbm.hidden_bias).all()


class Scale(keras.layers.Layer):
    def build(self, shape):
        self.w = self.add_weight(shape=shape[1:], initializer="random_normal", name="w")

    def call(self, x):
        return x * self.w


class ProtocolScale(Scale):
    def get_prunable_weights(self):
        return [self.w]


def test_custom_layer_registry_and_protocol():
    model = keras.Sequential([keras.Input((10,)), Scale()])
    with pytest.raises(ValueError, match="Found no prunable weights.*Scale"):
        pruning.prune_low_magnitude(model)
    with pytest.warns(DeprecationWarning, match="register_layer"):
        pruning.register_prunable_layer(Scale, ["w"])  # now a thin alias of tfc.register_layer
    try:
        pm = pruning.prune_low_magnitude(model, pruning_schedule=_one_shot(0.3))
        pm.update_masks(0)
        assert _zeros(model.layers[0].w).sum() == 3
        spec = tfc.layers_registry.lookup(model.layers[0])
        assert spec.prune == ("w",) and spec.cluster == () and not spec.quantize  # pruning only
    finally:
        del tfc.layers_registry._TABLE[Scale]
    model = keras.Sequential([keras.Input((10,)), ProtocolScale()])
    assert pruning.prune_low_magnitude(model).weight_names == ["protocol_scale/w"]


def test_duck_typed_schedule_drives_pruning():
    # Any `schedule(step) -> (should_prune, sparsity)` works, as tfmot's own objects do.
    model = small_mlp(hidden=(16,))
    pm = pruning.prune_low_magnitude(model, pruning_schedule=lambda step: (step % 3 == 0, 0.25))
    assert [bool(pm.update_masks(t)) for t in range(5)] == [True, False, False, True, False]
    for variable in pm.pruned_weights:
        assert _zeros(variable).sum() == _expected_zero_count(int(np.prod(variable.shape)), 0.25)


def test_selection_by_name_type_callable_and_exclude():
    inner = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, name="in_a"), keras.layers.Dense(8, name="in_b")],
        name="block",
    )
    inputs = keras.Input((8,))
    h = keras.layers.Dense(8, name="first")(inputs)
    h = inner(h)
    h = keras.layers.Conv1D(2, 1, name="conv")(keras.layers.Reshape((8, 1))(h))
    model = keras.Model(inputs, keras.layers.Flatten()(h))

    def names(**kw):
        return pruning.prune_low_magnitude(model, **kw).weight_names

    assert names() == ["first/kernel", "in_a/kernel", "in_b/kernel", "conv/kernel"]
    assert names(layers=["first", "conv"]) == ["first/kernel", "conv/kernel"]
    assert names(layers="block") == ["in_a/kernel", "in_b/kernel"]
    assert names(layers=keras.layers.Conv1D) == ["conv/kernel"]
    assert names(layers=lambda layer: layer.name.startswith("in_")) == [
        "in_a/kernel",
        "in_b/kernel",
    ]
    assert names(exclude=["block", "conv"]) == ["first/kernel"]
    with pytest.raises(ValueError, match=r"Unknown layer names in `layers`: \['nope'\]"):
        names(layers=["first", "nope"])
    with pytest.raises(ValueError, match=r"Unknown layer names in `exclude`"):
        names(exclude="missing")
    with pytest.raises(ValueError, match="Found no prunable weights in the selection"):
        names(layers="first", exclude="first")


def test_nothing_prunable_lists_what_it_found():
    model = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.MaxPooling2D(), keras.layers.Flatten()]
    )
    with pytest.raises(ValueError, match=r"Layer types found: \['Flatten', 'MaxPooling2D'\]"):
        pruning.prune_low_magnitude(model)


@keras.saving.register_keras_serializable(package="test_pruning")
class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(32, activation="relu")
        self.head = keras.layers.Dense(10)

    def call(self, x):
        return self.head(self.hidden(x))


def _nested_application():
    app = keras.applications.MobileNet(
        input_shape=(32, 32, 3), alpha=0.25, weights=None, include_top=False, pooling="avg"
    )
    inputs = keras.Input((32, 32, 3))
    return keras.Model(inputs, keras.layers.Dense(10)(app(inputs)))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["subclassed", "nested_application"])
def test_subclassed_and_nested(kind, digits):
    if kind == "subclassed":
        model = Subclassed()
        model(np.zeros((1, 64), np.float32))
        (x, y), _ = digits
        x, y = x[:256], y[:256]
    else:
        model = _nested_application()
    expected = len([w for w in model.weights if w.name == "kernel"])
    schedule = PolynomialDecay(0.0, 0.7, begin_step=0, end_step=6, frequency=2)
    pm = pruning.prune_low_magnitude(model, pruning_schedule=schedule)
    assert len(pm.pruned_weights) == expected
    if kind == "subclassed":
        pm.compile("adam", LOSS)
        pm.fit(x, y, epochs=2, batch_size=len(x) // 4, verbose=0)
    else:  # the application is big for a test: drive the schedule by hand
        assert [bool(pm.update_masks(t)) for t in range(7)] == [
            True,
            False,
            True,
            False,
            True,
            False,
            True,
        ]
    assert int(pm.pruning_step.numpy()) == 6
    for variable in pm.pruned_weights:
        assert _zeros(variable).sum() == _expected_zero_count(int(np.prod(variable.shape)), 0.7)


def test_exact_final_sparsity_at_end_step_and_steps_from_optimizer(digits):
    (x, y), _ = digits
    model = small_mlp(hidden=(64,))
    # (23 - 0) % 5 != 0: tfmot would stop at step 20 below the target.
    pm = pruning.prune_low_magnitude(
        model, pruning_schedule=PolynomialDecay(0.0, 0.8, 0, 23, frequency=5)
    )
    pm.compile("adam", LOSS)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((int(pm.optimizer.iterations.numpy()), int(pm.pruning_step.numpy())))

    pm.fit(
        x[:480],
        y[:480],
        epochs=1,
        batch_size=20,
        verbose=0,
        callbacks=[pruning.UpdatePruningStep(), Spy()],
    )
    updates = sorted({s for _, s in seen if s >= 0})
    assert updates == [0, 5, 10, 15, 20, 23]
    for variable in pm.pruned_weights:
        assert _zeros(variable).sum() == _expected_zero_count(int(np.prod(variable.shape)), 0.8)
    # A second fit continues from the optimizer's count, not from zero.
    pm.fit(x[:40], y[:40], epochs=1, batch_size=20, verbose=0)
    assert int(pm.optimizer.iterations.numpy()) == 26 and int(pm.pruning_step.numpy()) == 23


def test_end_step_equal_to_total_steps_is_reached_when_fit_ends(digits):
    (x, y), _ = digits
    pm = pruning.prune_low_magnitude(
        small_mlp(hidden=(64,)), pruning_schedule=PolynomialDecay(0.0, 0.8, 0, 20, frequency=8)
    )
    pm.compile("adam", LOSS)
    pm.fit(x[:200], y[:200], epochs=2, batch_size=20, verbose=0)  # steps 0..19
    assert int(pm.pruning_step.numpy()) == 20
    for variable in pm.pruned_weights:
        assert _zeros(variable).sum() == _expected_zero_count(int(np.prod(variable.shape)), 0.8)


@pytest.mark.slow
def test_zeros_stay_zero_with_adam_and_forward_never_sees_them(digits):
    (x, y), _ = digits
    model = small_mlp(hidden=(32,))
    pm = pruning.prune_low_magnitude(model, pruning_schedule=_one_shot(0.6))
    pm.compile(keras.optimizers.Adam(0.01), LOSS)
    pm.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0)
    before = [_zeros(v).copy() for v in pm.pruned_weights]
    pm.fit(x, y, epochs=3, batch_size=32, verbose=0)  # ~135 Adam steps, momentum built up
    for variable, zero in zip(pm.pruned_weights, before):
        np.testing.assert_array_equal(_zeros(variable), zero)
    w0, b0, w1, b1 = [v.numpy() for v in model.weights]
    reference = np.maximum(x[:50] @ w0 + b0, 0) @ w1 + b1
    np.testing.assert_allclose(pm.predict(x[:50], verbose=0), reference, atol=1e-5)


@pytest.mark.parametrize("recipe", ["model_step", "explicit_step"])
def test_custom_training_loop_recipe(recipe, digits):
    (x, y), _ = digits
    model = small_mlp(hidden=(32,))
    pm = pruning.prune_low_magnitude(
        model, pruning_schedule=PolynomialDecay(0.0, 0.5, 0, 9, frequency=3)
    )
    optimizer = keras.optimizers.Adam(0.01)

    @tf.function
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = LOSS(yb, pm(xb, training=True))
        grads = tape.gradient(loss, pm.trainable_variables)
        optimizer.apply_gradients(zip(grads, pm.trainable_variables))

    updated = []
    for i in range(12):
        if recipe == "model_step":
            updated.append(bool(pm.update_masks()))
        else:
            updated.append(bool(pm.update_masks(optimizer.iterations)))
        train_step(x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32])
        if recipe == "model_step":
            pm.step.assign_add(1)
    assert [i for i, u in enumerate(updated) if u] == [0, 3, 6, 9]
    # An explicit step is used as given and leaves the model's own count alone.
    assert int(pm.step.numpy()) == (12 if recipe == "model_step" else 0)
    for variable in pm.pruned_weights:
        assert _zeros(variable).sum() == _expected_zero_count(int(np.prod(variable.shape)), 0.5)
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(ValueError, match=rf"Received: step={bad!r}"):
            pm.update_masks(bad)


def _zero_counts(pm):
    return [int(_zeros(v).sum()) for v in pm.pruned_weights]


def _sizes(pm):
    return [int(np.prod(v.shape)) for v in pm.pruned_weights]


class _UpdateSpy(keras.callbacks.Callback):
    """Records (step, pruning_step) of the pruned model at the end of each batch."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def on_train_batch_end(self, batch, logs=None):
        pm = self.model
        self.seen.append((int(pm.step.numpy()), int(pm.pruning_step.numpy())))


def test_recompile_keeps_sparsity_issue_12(digits):
    # The reproduction of issue 12: before the fix the second fit ended at sparsity 0.46.
    (x, y), _ = digits
    pm = pruning.prune_low_magnitude(
        small_mlp(hidden=(64,)), pruning_schedule=PolynomialDecay(0, 0.8, 0, 40, frequency=5)
    )
    pm.compile("adam", LOSS)
    pm.fit(x[:800], y[:800], epochs=1, batch_size=16, verbose=0)  # 50 steps
    expected = [_expected_zero_count(n, 0.8) for n in _sizes(pm)]
    assert _zero_counts(pm) == expected
    masks = [m.numpy() for m in pm.masks]
    pm.compile(keras.optimizers.Adam(1e-4), LOSS)
    pm.fit(x[:160], y[:160], epochs=1, batch_size=16, verbose=0)  # 10 steps
    assert int(pm.optimizer.iterations.numpy()) == 10  # the new optimizer restarted...
    assert int(pm.step.numpy()) == 60  # ...the schedule did not
    assert int(pm.pruning_step.numpy()) == 40
    assert _zero_counts(pm) == expected
    assert pruning.get_sparsity(pm) == pytest.approx(
        {"dense/kernel": 0.8, "dense_1/kernel": 0.8}, abs=1 / 2048
    )
    for before, after in zip(masks, pm.masks):
        np.testing.assert_array_equal(after.numpy(), before)


def test_recompile_mid_schedule_keeps_every_turn(digits):
    (x, y), _ = digits
    pm = pruning.prune_low_magnitude(
        small_mlp(hidden=(64,)), pruning_schedule=PolynomialDecay(0, 0.8, 0, 40, frequency=5)
    )
    seen = []
    pm.compile("adam", LOSS)
    pm.fit(x[:352], y[:352], batch_size=16, verbose=0, callbacks=[_UpdateSpy(seen)])  # 22
    pm.compile(keras.optimizers.SGD(0.01), LOSS)
    pm.fit(x[:288], y[:288], batch_size=16, verbose=0, callbacks=[_UpdateSpy(seen)])  # 18
    assert [s for s, _ in seen] == list(range(1, 41))
    assert sorted({u for _, u in seen}) == [0, 5, 10, 15, 20, 25, 30, 35]
    assert int(pm.pruning_step.numpy()) == 40  # applied when the second fit ended
    assert _zero_counts(pm) == [_expected_zero_count(n, 0.8) for n in _sizes(pm)]


@pytest.mark.slow
def test_load_model_compile_fit_continues_the_schedule(tmp_path, digits):
    (x, y), _ = digits
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=40, frequency=5)
    pm = pruning.prune_low_magnitude(small_mlp(hidden=(32,)), pruning_schedule=schedule)
    pm.compile("adam", LOSS)
    pm.fit(x[:320], y[:320], batch_size=16, verbose=0)  # 20 steps, then the update at 20
    pm.save(tmp_path / "mid.keras")
    again = keras.saving.load_model(tmp_path / "mid.keras")
    assert int(again.step.numpy()) == 20 and int(again.pruning_step.numpy()) == 20
    old_zeros = [_zeros(v).copy() for v in again.pruned_weights]
    again.compile(keras.optimizers.Adam(1e-4), LOSS)  # fine-tune further: a new optimizer
    seen = []
    again.fit(x[:320], y[:320], batch_size=16, verbose=0, callbacks=[_UpdateSpy(seen)])
    assert seen[0] == (21, 20)  # no update at "step 0" with sparsity 0
    assert sorted({u for _, u in seen}) == [20, 25, 30, 35]
    assert int(again.step.numpy()) == 40 and int(again.pruning_step.numpy()) == 40
    assert _zero_counts(again) == [_expected_zero_count(n, 0.8) for n in _sizes(again)]
    for variable, zero in zip(again.pruned_weights, old_zeros):
        assert _zeros(variable)[zero].all()


@pytest.mark.slow
def test_backup_and_restore_resumes_the_step(tmp_path, digits):
    (x, y), _ = digits
    x, y = x[:160], y[:160]  # 10 steps an epoch
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=40, frequency=5)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("preempted")

    def train(callbacks):
        pm = pruning.prune_low_magnitude(small_mlp(hidden=(32,), seed=1), pruning_schedule=schedule)
        pm.compile(keras.optimizers.SGD(0.05, momentum=0.9), LOSS)
        pm.fit(x, y, epochs=4, batch_size=16, shuffle=False, verbose=0, callbacks=callbacks)
        return pm

    backup = str(tmp_path / "backup")
    with pytest.raises(RuntimeError, match="preempted"):
        train([keras.callbacks.BackupAndRestore(backup), Interrupt()])
    seen = []
    resumed = train([keras.callbacks.BackupAndRestore(backup), _UpdateSpy(seen)])
    assert seen[0] == (21, 20)  # resumed after epoch 2 with the step of that backup
    reference = train([])  # the same training, never interrupted
    assert int(resumed.step.numpy()) == int(reference.step.numpy()) == 40
    for a, b in zip(resumed.masks, reference.masks):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(resumed.model.weights, reference.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def _without_step(src, dst):
    """A copy of the `.keras` file `src` as saved before `PrunedModel.step` existed."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "model.weights.h5":
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "a") as f:
                    own = f["vars"]  # the PrunedModel's own: masks, pruning_step, step
                    del own[str(len(own) - 1)]
                data = buffer.getvalue()
            zout.writestr(item, data)


@pytest.mark.slow
@pytest.mark.parametrize("recompile", [False, True])
def test_file_saved_before_the_step_variable_still_loads(tmp_path, digits, recompile):
    (x, y), _ = digits
    schedule = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=40, frequency=5)
    pm = pruning.prune_low_magnitude(small_mlp(hidden=(32,)), pruning_schedule=schedule)
    pm.compile("adam", LOSS)
    pm.fit(x[:368], y[:368], batch_size=16, verbose=0)  # 23 steps: last update at 20
    pm.save(tmp_path / "new.keras")
    _without_step(tmp_path / "new.keras", tmp_path / "old.keras")
    with pytest.raises(ValueError, match="expected 3 variables, but received 4"):
        pruning.PrunedModel(small_mlp(hidden=(32,)), schedule, weight_indices=[0]).load_weights(
            tmp_path / "new.keras"
        )
    old = keras.saving.load_model(tmp_path / "old.keras")
    assert int(old.step.numpy()) == 20  # the last mask update until training begins
    assert int(old.optimizer.iterations.numpy()) == 23
    for a, b in zip(old.masks, pm.masks):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    old_zeros = [_zeros(v).copy() for v in old.pruned_weights]
    if recompile:
        old.compile(keras.optimizers.Adam(1e-4), LOSS)
    old.fit(x[:160], y[:160], batch_size=16, verbose=0)  # 10 steps
    # The restored optimizer is ahead of the last update: its count is taken, as before.
    assert int(old.step.numpy()) == (20 if recompile else 23) + 10
    assert int(old.pruning_step.numpy()) == 30
    sparsity_at_30 = Fraction(4, 5) * (1 - Fraction(1, 4) ** 3)
    assert _zero_counts(old) == [math.ceil(sparsity_at_30 * n) for n in _sizes(old)]
    for variable, zero in zip(old.pruned_weights, old_zeros):
        assert _zeros(variable)[zero].all()


def test_subclassed_round_trip(tmp_path):
    model = Subclassed()
    model(np.zeros((1, 64), np.float32))
    pm = pruning.prune_low_magnitude(model, pruning_schedule=_one_shot(0.5), layers="dense_1")
    pm.update_masks(0)
    pm.save(tmp_path / "s.keras")
    again = keras.saving.load_model(tmp_path / "s.keras")
    assert again.weight_indices == [1] and len(again.masks) == 1
    np.testing.assert_array_equal(again.masks[0].numpy(), pm.masks[0].numpy())


def test_m_by_n_kept_through_serialization(tmp_path):
    model = small_mlp(hidden=(16,))
    pm = pruning.prune_low_magnitude(model, pruning_schedule=_one_shot(), sparsity_m_by_n=(2, 4))
    pm.update_masks(0)
    pm.save(tmp_path / "mn.keras")
    again = keras.saving.load_model(tmp_path / "mn.keras")
    assert again.sparsity_m_by_n == (2, 4)
    again.update_masks(0)  # same step: no recompute
    again.pruning_step.assign(-1)
    assert bool(again.update_masks(0))
    for variable in again.pruned_weights:
        groups = (keras.ops.convert_to_numpy(variable.value) != 0).T.reshape(-1, 4)
        assert (groups.sum(1) == 2).all()


def test_block_pruning_end_to_end():
    model = small_mlp(hidden=(16,))
    pm = pruning.prune_low_magnitude(
        model, pruning_schedule=_one_shot(0.5), block_size=(4, 2), block_pooling_type="MAX"
    )
    pm.update_masks(0)
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel.value)
    blocks = (kernel != 0).reshape(16, 4, 8, 2).transpose(0, 2, 1, 3).reshape(128, 8)
    assert set(blocks.sum(1).tolist()) <= {0, 8} and (blocks.sum(1) == 0).sum() == 64


def test_block_as_large_as_the_kernel_is_not_zeroed(digits):
    # Issue 12: block_size (32, 16) on a 32x16 kernel at 30% zeroed the kernel (sparsity 1.0).
    (x, _), _ = digits
    model = small_mlp(hidden=(32,), classes=16)  # kernels 64x32 (2x2 blocks) and 32x16 (one)
    first = model.layers[0].kernel.numpy()
    with pytest.warns(UserWarning, match=r"covers all of weight 'dense_1/kernel' \(32, 16\)"):
        pm = pruning.prune_low_magnitude(
            model, pruning_schedule=_one_shot(0.3), block_size=(32, 16)
        )
    assert bool(pm.update_masks(0))
    assert pruning.get_sparsity(pm)["dense_1/kernel"] == 0.0
    # NumPy reference: of the 4 blocks of the first kernel, round(0.3 * 4) = 1 goes, the one
    # with the smallest mean |w|.
    scores = np.abs(first).reshape(2, 32, 2, 16).mean(axis=(1, 3)).ravel()
    expected = np.ones(4, np.float32)
    expected[np.argmin(scores)] = 0.0
    expected = np.repeat(np.repeat(expected.reshape(2, 2), 32, 0), 16, 1)
    np.testing.assert_array_equal(pm.masks[0].numpy(), expected)
    out = pm.predict(x[:20], verbose=0)
    assert np.ptp(out, axis=0).min() > 0  # every output still depends on the input
    with pytest.warns(UserWarning, match="covers all of weight"):
        pm = pruning.prune_low_magnitude(
            small_mlp(hidden=(32,), classes=16), _one_shot(0.8), block_size=(32, 16)
        )
    assert bool(pm.update_masks(0))  # even at 80% the one-block weight stays whole
    assert list(pruning.get_sparsity(pm).values()) == [0.75, 0.0]  # round(3.2) = 3 of 4 blocks


def _pruned_on(strategy, data, schedule, *fits):
    """A small pruned MLP built and compiled under `strategy`, fitted once per
    `(optimizer, compile kwargs, epochs)` in `fits` (each a fresh compile)."""
    x, y = data
    with strategy.scope():
        model = small_mlp(hidden=(32,), seed=3)
    # Outside the scope: the wrapper follows the strategy of the model's variables.
    pm = pruning.prune_low_magnitude(model, pruning_schedule=schedule)
    for optimizer, compile_kwargs, epochs in fits:
        with strategy.scope():
            pm.compile(optimizer(), LOSS, **compile_kwargs)
        pm.fit(x, y, epochs=epochs, batch_size=32, shuffle=False, verbose=0)
    return model, pm


@pytest.mark.slow
def test_mirrored_strategy_parity(mirrored, digits):
    (x, y), _ = digits
    schedule = PolynomialDecay(0.0, 0.7, begin_step=2, end_step=12, frequency=3)

    def train(strategy):
        fit = (lambda: keras.optimizers.SGD(0.1, momentum=0.9), {}, 2)
        model, pm = _pruned_on(strategy, (x[:256], y[:256]), schedule, fit)
        return [v.numpy() for v in model.weights], [m.numpy() for m in pm.masks]

    one_w, one_m = train(tf.distribute.get_strategy())
    two_w, two_m = train(mirrored)
    for a, b in zip(one_m, two_m):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(one_w, two_w):
        np.testing.assert_allclose(a, b, atol=2e-5)
    for m, w in zip(two_m, two_w[::2]):
        assert ((w == 0) >= (m == 0)).all()
        assert (m == 0).any()


@pytest.mark.slow
def test_mirrored_step_matches_single_device(mirrored, digits):
    (x, y), _ = digits
    schedule = PolynomialDecay(0.0, 0.7, begin_step=2, end_step=30, frequency=3)

    def train(strategy):
        _, pm = _pruned_on(
            strategy,
            (x[:256], y[:256]),  # 8 steps an epoch
            schedule,
            (lambda: keras.optimizers.SGD(0.1), {"steps_per_execution": 3}, 2),
            (lambda: keras.optimizers.SGD(0.05), {}, 1),  # a new optimizer, from 0
        )
        steps = [int(v.numpy()) for v in strategy.experimental_local_results(pm.step.value)]
        return pm, steps, int(pm.pruning_step.numpy()), [m.numpy() for m in pm.masks]

    _, one_steps, one_last, one_masks = train(tf.distribute.get_strategy())
    pm, two_steps, two_last, two_masks = train(mirrored)
    assert one_steps == [24] and two_steps == [24, 24]  # every replica holds the count
    assert one_last == two_last == 23  # the last turn (2 + 3k) at or before step 24
    for a, b in zip(one_masks, two_masks):
        np.testing.assert_array_equal(a, b)

    @tf.function
    def replica_increment():
        mirrored.run(lambda: pm.step.assign_add(1))

    replica_increment()  # in replica context: counted once, not once per replica
    assert [int(v.numpy()) for v in mirrored.experimental_local_results(pm.step.value)] == [25, 25]


def _replica_step_op_counts(strategy, model):
    """Op types in the graph of one distributed training step of `model`."""

    @tf.function
    def step(x, y):
        return strategy.run(model.train_step, args=((x, y),))

    graph = step.get_concrete_function(
        tf.TensorSpec([8, 64]), tf.TensorSpec([8], tf.int64)
    ).graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return collections.Counter(n.op for n in nodes)


def test_mirrored_step_adds_no_all_reduce(mirrored):
    def step_ops(pruned):
        with mirrored.scope():
            model = small_mlp(hidden=(16,))
        if pruned:
            model = pruning.prune_low_magnitude(model, pruning_schedule=_one_shot())
        with mirrored.scope():
            model.compile(keras.optimizers.SGD(0.1), LOSS)
            model.optimizer.build(model.trainable_variables)
        return _replica_step_op_counts(mirrored, model)

    plain, pruned = step_ops(False), step_ops(True)
    assert plain["AddN"] > 0  # the gradient all-reduce is visible in these counts
    extra = {op: pruned[op] - plain[op] for op in pruned | plain if pruned[op] != plain[op]}
    # Per replica and pruned weight: read the mask, multiply, assign. Nothing crosses devices.
    assert extra["Mul"] == 2 * 2 and extra["AssignVariableOp"] == 2 * 2
    assert set(extra) <= {"Mul", "AssignVariableOp", "ReadVariableOp", "Placeholder"}, extra


def test_strip_pruning_plain_model_identical_outputs(tmp_path, digits):
    (x, y), _ = digits
    model = small_mlp(hidden=(32,))
    pm = pruning.prune_low_magnitude(model, pruning_schedule=_one_shot(0.8))
    pm.compile("adam", LOSS)
    pm.fit(x[:128], y[:128], epochs=1, batch_size=32, verbose=0)
    expected = pm.predict(x[:40], verbose=0)
    final = pruning.strip_pruning(pm)
    assert type(final) is keras.Sequential
    assert not [
        layer
        for layer in final._flatten_layers()
        if type(layer).__module__.startswith("tfcompress")
    ]
    assert all(w.constraint is None for w in final.weights)
    np.testing.assert_array_equal(final.predict(x[:40], verbose=0), expected)
    sparsity = pruning.get_sparsity(final)
    assert sorted(sparsity) == ["dense/kernel", "dense_1/kernel"]
    assert sparsity["dense/kernel"] == _expected_zero_count(64 * 32, 0.8) / (64 * 32)
    assert pruning.strip_pruning(final) is final


@pytest.mark.slow
def test_tflite_export_keeps_zeros(tmp_path, digits):
    (x, y), (xt, _) = digits
    model = small_mlp(hidden=(32,))
    pm = pruning.prune_low_magnitude(model, pruning_schedule=_one_shot(0.75))
    pm.compile("adam", LOSS)
    pm.fit(x[:256], y[:256], epochs=1, batch_size=32, verbose=0)
    final = pruning.strip_pruning(pm)
    path = tmp_path / "pruned.tflite"
    tfc.export.to_tflite(final, str(path))
    lite = tfc.export.LiteModel(str(path))
    np.testing.assert_allclose(lite.predict(xt), final.predict(xt, verbose=0), atol=1e-4)
    kernel_zeros = sorted(int((v.numpy() == 0).sum()) for v in model.weights if v.name == "kernel")
    lite_zeros = sorted(
        int((vals == 0).sum()) for vals, _ in lite.weights().values() if vals.size in (64 * 32, 320)
    )
    assert lite_zeros == kernel_zeros


def test_steps_per_execution_catches_up_skipped_turns(digits):
    # 12 steps in 3 executions: the callback runs at steps 0, 4, 8 and when fit ends (12);
    # turns 5 and end_step 10 fall between.
    (x, y), _ = digits
    pm = pruning.prune_low_magnitude(
        small_mlp(hidden=(64,)), pruning_schedule=PolynomialDecay(0.0, 0.8, 0, 10, frequency=5)
    )
    pm.compile("adam", LOSS, steps_per_execution=4)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(int(pm.pruning_step.numpy()))

    pm.fit(x[:240], y[:240], epochs=1, batch_size=20, verbose=0, callbacks=[Spy()])
    assert seen == [0, 0, 5]  # step 8 catches up turn 5
    assert int(pm.pruning_step.numpy()) == 10  # the end of fit (step 12) catches up step 10
    for variable in pm.pruned_weights:
        assert _zeros(variable).sum() == _expected_zero_count(int(np.prod(variable.shape)), 0.8)


def test_fit_without_update_pruning_step_is_handled(digits):
    (x, y), _ = digits
    schedule = ConstantSparsity(0.5, begin_step=0, frequency=1)
    pm = pruning.prune_low_magnitude(small_mlp(), pruning_schedule=schedule)
    pm.compile("adam", LOSS)
    pm.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)
    assert int(pm.pruning_step.numpy()) == 2  # steps 0, 1 and the one due when fit ended
    # A CallbackList is used by `fit` as given: the added callback must still run.
    callbacks = keras.callbacks.CallbackList([], add_history=True, model=pm)
    pm.fit(x[:32], y[:32], epochs=1, batch_size=32, verbose=0, callbacks=callbacks)
    assert int(pm.pruning_step.numpy()) == 3
    plain = small_mlp()
    plain.compile("adam", LOSS)
    with pytest.raises(ValueError, match="UpdatePruningStep needs a model made by"):
        plain.fit(x[:32], y[:32], verbose=0, callbacks=[pruning.UpdatePruningStep()])


def test_distiller_with_a_pruned_student_prunes_without_the_callback(digits):
    (x, y), _ = digits
    schedule = ConstantSparsity(0.6, begin_step=0, frequency=1)
    student = pruning.prune_low_magnitude(small_mlp(hidden=(16,)), pruning_schedule=schedule)
    distiller = tfc.Distiller(student=student, teacher=small_mlp(seed=1))
    distiller.compile("adam", student_loss_fn=LOSS)
    distiller.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)
    assert int(student.pruning_step.numpy()) == 2
    final = pruning.strip_pruning(student)
    assert pruning.get_sparsity(final) == pytest.approx(
        {"dense/kernel": 0.6, "dense_1/kernel": 0.6}, abs=1 / 160
    )


def test_pruning_summaries(tmp_path, digits):
    (x, y), _ = digits
    pm = pruning.prune_low_magnitude(
        small_mlp(hidden=(16,)), pruning_schedule=PolynomialDecay(0.0, 0.5, 0, 4, frequency=2)
    )
    pm.compile("adam", LOSS)
    pm.fit(
        x[:64],
        y[:64],
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=[pruning.PruningSummaries(str(tmp_path))],
    )
    values = {}
    for path in glob.glob(os.path.join(tmp_path, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                values.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor)))
                )
    assert values["pruning/target_sparsity"] == [(4, 0.5), (8, 0.5)]
    assert values["pruning/last_update_step"][-1] == (8, 4.0)
    assert values["pruning/sparsity/dense/kernel"][-1] == (8, 0.5)
    with pytest.raises(ValueError, match="Received: update_freq=0"):
        pruning.PruningSummaries(str(tmp_path), update_freq=0)


BAD = [
    (dict(block_size=(0, 2)), r"Received: block_size=\(0, 2\)"),
    (dict(block_size=(2,)), r"Received: block_size=\(2,\)"),
    (dict(block_pooling_type="MEAN"), "Received: block_pooling_type=MEAN"),
    (dict(sparsity_m_by_n=(4, 4)), r"Received: sparsity_m_by_n=\(4, 4\)"),
    (dict(sparsity_m_by_n=(2, 4), block_size=(2, 2)), "cannot be combined"),
    (dict(sparsity_m_by_n=(2, 5)), "not divisible"),
    (dict(pruning_schedule="0.5"), "Received: pruning_schedule="),
    (dict(layers=5), "Received: layers=5"),
    (dict(exclude=3.0), "Received: exclude=3.0"),
]


def test_bad_input():
    model = small_mlp(hidden=(32,))
    for kw, match in BAD:
        with pytest.raises(ValueError, match=match):
            pruning.prune_low_magnitude(model, **kw)
    assert all(w.constraint is None for w in model.weights)  # nothing changed on failure


def test_bad_models():
    with pytest.raises(ValueError, match="not built"):
        pruning.prune_low_magnitude(Subclassed())
    with pytest.raises(ValueError, match="Received: to_prune=<Dense"):
        pruning.prune_low_magnitude(keras.layers.Dense(3))
    pm = pruning.prune_low_magnitude(small_mlp())
    with pytest.raises(ValueError, match="already pruned"):
        pruning.prune_low_magnitude(pm)


def test_weight_indices_out_of_range_or_repeated():
    model = small_mlp(hidden=(32,))
    for indices in ([-1], [2], [0, 0]):
        with pytest.raises(ValueError, match=r"Received: weight_indices=\["):
            pruning.PrunedModel(model, _one_shot(), weight_indices=indices)
    assert all(w.constraint is None for w in model.weights)


def test_config_round_trip():
    pm = pruning.prune_low_magnitude(
        small_mlp(), pruning_schedule=PolynomialDecay(0.1, 0.6, 2, 9), exclude="dense_1"
    )
    config = json.loads(json.dumps(pm.get_config()))
    again = pruning.PrunedModel.from_config(config)
    assert again.get_config()["weight_indices"] == [0] == config["weight_indices"]
    assert again.pruning_schedule.get_config() == pm.pruning_schedule.get_config()

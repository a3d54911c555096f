"""Strategy helpers, and Distiller replica parity on two logical CPUs."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import CPU_DEVICES, feature_models, small_mlp

import tfcompress as tfc
from tfcompress import _compat

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_strategy_default_without_two_gpus():
    if len(tf.config.list_logical_devices("GPU")) >= 2:
        pytest.skip("two or more GPUs: strategy() mirrors over them")
    s = tfc.distribute.strategy()
    assert s is tf.distribute.get_strategy()
    assert s.num_replicas_in_sync == 1


@pytest.mark.parametrize(
    "devices",
    [CPU_DEVICES, ["/CPU:1", "/job:localhost/replica:0/task:0/device:CPU:0"]],
)
def test_strategy_given_devices(devices):
    s = tfc.distribute.strategy(devices)
    assert isinstance(s, tf.distribute.MirroredStrategy)
    assert s.num_replicas_in_sync == 2
    assert sorted(tf.DeviceSpec.from_string(d).device_index for d in s.extended.worker_devices) == [
        0,
        1,
    ]


@pytest.mark.parametrize(
    "devices",
    [["/gpu:0"], ["/cpu:0", "/cpu:7"], "/cpu:0", [], ["/cpu:0", "/CPU:0"], [3], ("/tpu:0",),
     ["cpu0"]],
)
def test_strategy_unknown_devices(devices):
    with pytest.raises(ValueError, match="devices="):
        tfc.distribute.strategy(devices)


def test_strategies_in_one_process_keep_collectives_apart():
    """Plain MirroredStrategy objects reuse collective keys: a second all-reduce of another
    shape aborts every collective in the process ("Shape mismatch in the collective
    instance 100"). Each strategy made by the helper has keys of its own."""
    shapes = [((3,), "float32"), ((2, 2), "int32"), ((5,), "float32")]
    for shape, dtype in shapes:
        s = tfc.distribute._mirrored(CPU_DEVICES)  # default cross-device ops, as on GPUs
        assert type(s.extended._cross_device_ops).__name__ == "CollectiveAllReduce"
        step = tf.function(lambda s=s, shape=shape, dtype=dtype: s.run(
            lambda: tf.distribute.get_replica_context().all_reduce("SUM", tf.ones(shape, dtype))
        ))
        for value in s.experimental_local_results(step()):
            np.testing.assert_array_equal(value.numpy(), np.full(shape, 2))


def test_tf_config_and_is_chief(monkeypatch):
    workers = ["127.0.0.1:2222", "127.0.0.1:2223"]
    config = json.loads(tfc.distribute.tf_config(workers, 1))
    assert config == {"cluster": {"worker": workers}, "task": {"type": "worker", "index": 1}}
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tfc.distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", tfc.distribute.tf_config(workers, 0))
    assert tfc.distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", tfc.distribute.tf_config(workers, 1))
    assert not tfc.distribute.is_chief()
    chief_cluster = {"cluster": {"chief": ["a:1"], "worker": ["b:1"]}}
    monkeypatch.setenv("TF_CONFIG", json.dumps({**chief_cluster, "task": {"type": "worker",
                                                                          "index": 0}}))
    assert not tfc.distribute.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({**chief_cluster, "task": {"type": "chief",
                                                                          "index": 0}}))
    assert tfc.distribute.is_chief()


@pytest.mark.parametrize(
    "workers, index, match",
    [
        ([], 0, "workers="),
        ("127.0.0.1:1", 0, "workers="),
        (["127.0.0.1"], 0, "workers="),
        (["127.0.0.1:x"], 0, "workers="),
        (["a:1", "b:2"], 2, "index=2"),
        (["a:1", "b:2"], -1, "index=-1"),
        (["a:1", "b:2"], True, "index=True"),
    ],
)
def test_tf_config_bad_input(workers, index, match):
    with pytest.raises(ValueError, match=match):
        tfc.distribute.tf_config(workers, index)




def _one_step(strategy, mode, x, y, w):
    """One SGD step of a fresh Distiller on the whole (global) batch under `strategy`."""
    with strategy.scope():
        if mode == "features":
            teacher, student = feature_models()
            d = tfc.Distiller(student=student, teacher=teacher,
                              feature_layers=[("t_hidden", "s_hidden")])
        else:
            teacher, student = small_mlp(hidden=(24,), seed=0), small_mlp(hidden=(6,), seed=1)
            d = tfc.Distiller(student=student, teacher=None if mode == "fed" else teacher)
        d.compile(optimizer=keras.optimizers.SGD(1.0), metrics=["accuracy"],
                  student_loss_fn=SCCE, alpha=0.3, temperature=2.0, feature_weight=0.5)
    target = {"labels": y, "teacher": teacher.predict(x, verbose=0)} if mode == "fed" else y
    history = d.fit(x, target, sample_weight=w, batch_size=len(x), epochs=1, shuffle=False,
                    verbose=0)
    logs = {k: v[0] for k, v in history.history.items()}
    return [v.numpy() for v in d.trainable_variables], logs


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["logits", "features", "fed"])
def test_distiller_replica_parity(mirrored, digits, mode):
    (x, y), _ = digits
    x, y = x[:32], y[:32]
    w = np.random.default_rng(0).uniform(0.5, 1.5, len(x)).astype("float32")
    single, single_logs = _one_step(tf.distribute.get_strategy(), mode, x, y, w)
    double, double_logs = _one_step(mirrored, mode, x, y, w)
    assert mirrored.num_replicas_in_sync == 2
    moved = max(np.abs(a - b).max() for a, b in zip(single, _one_step_start(mode)))
    assert moved > 1e-3  # the step really changed the weights
    for a, b in zip(single, double):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert set(single_logs) == set(double_logs)
    for key in single_logs:
        assert double_logs[key] == pytest.approx(single_logs[key], rel=1e-5), key


def _one_step_start(mode):
    if mode == "features":
        teacher, student = feature_models()
        d = tfc.Distiller(student=student, teacher=teacher,
                          feature_layers=[("t_hidden", "s_hidden")])
    else:
        small_mlp(hidden=(24,), seed=0)
        d = tfc.Distiller(student=small_mlp(hidden=(6,), seed=1))
    return [v.numpy() for v in d.trainable_variables]


def test_compute_loss_is_scaled_per_replica(mirrored, digits):
    """Summed over the two replicas, compute_loss gives the one-device loss of the batch."""
    (x, y), _ = digits
    x, y = x[:16], y[:16]
    with mirrored.scope():
        d = tfc.Distiller(student=small_mlp(hidden=(6,), seed=1),
                          teacher=small_mlp(hidden=(24,), seed=0))
        d.compile(student_loss_fn=SCCE, alpha=0.3, temperature=2.0)
    whole = float(d.compute_loss(x, y, d(x)))
    dataset = mirrored.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    )
    per_replica = mirrored.run(lambda a, b: d.compute_loss(a, b, d(a)), args=next(iter(dataset)))
    parts = [float(v) for v in mirrored.experimental_local_results(per_replica)]
    assert len(parts) == 2
    assert sum(parts) == pytest.approx(whole, rel=1e-5)


def test_multi_worker_fix_leaves_local_training_unchanged(monkeypatch, mirrored, digits):
    """The Keras fix installed by multi_worker_strategy is idempotent and harmless locally."""
    from keras.src.backend.tensorflow import trainer

    build, reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica
    # Restored after the test, so the rest of the session runs unpatched Keras.
    monkeypatch.setattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build", build)
    monkeypatch.setattr(trainer, "reduce_per_replica", reduce)
    assert _compat.fix_keras_multi_worker() == [
        "TensorFlowTrainer._maybe_symbolic_build",
        "reduce_per_replica",
    ]  # Keras 3.15 still has the bug
    patched = (trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica)
    assert patched != (build, reduce)
    assert _compat.fix_keras_multi_worker() == []
    assert (trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica) == patched
    (x, y), _ = digits
    w = np.ones(32, "float32")
    single, single_logs = _one_step(tf.distribute.get_strategy(), "logits", x[:32], y[:32], w)
    double, double_logs = _one_step(mirrored, "logits", x[:32], y[:32], w)
    for a, b in zip(single, double):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert double_logs["loss"] == pytest.approx(single_logs["loss"], rel=1e-5)


def test_multi_worker_fix_only_where_keras_has_the_bug(monkeypatch):
    """A Keras whose trainer no longer has the bug, or lacks a symbol, is left as it is."""
    from keras.src.backend.tensorflow import trainer

    def build_without_bug(self, iterator=None, data_batch=None):
        for _, _, batches in iterator or ():
            data_batch = next(batches)
            break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_without_bug(values, strategy, reduction):
        if trainer._collective_all_reduce_multi_worker(strategy):
            return strategy.reduce("MEAN", values, axis=None)
        return values

    monkeypatch.setattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build", build_without_bug)
    monkeypatch.setattr(trainer, "reduce_per_replica", reduce_without_bug)
    assert _compat.fix_keras_multi_worker() == []
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is build_without_bug
    assert trainer.reduce_per_replica is reduce_without_bug

    monkeypatch.undo()
    build, reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica
    monkeypatch.delattr(trainer, "_collective_all_reduce_multi_worker")
    assert _compat.fix_keras_multi_worker() == []
    assert (trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica) == (
        build,
        reduce,
    )

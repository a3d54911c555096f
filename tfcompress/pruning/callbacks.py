"""Keras callbacks that drive pruning in `fit` and log it to TensorBoard."""

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfcompress.pruning.prune import PrunedModel

# What tensorboard's own `scalar` summary writes, without needing the package.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR,
).SerializeToString()


def _scalar(tag, value, step):
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


def _pruned_models(model):
    """Every PrunedModel in `model` (itself, or nested, e.g. a distiller's student)."""
    found = [model] if isinstance(model, PrunedModel) else []
    found += [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, PrunedModel)
    ]
    return found


def with_update_step(model, args, kwargs):
    """`fit(*args, **kwargs)` arguments with an `UpdatePruningStep` for `model`.

    Added only when `model` holds a pruned model and the callbacks have no
    `UpdatePruningStep` yet: `PrunedModel.fit` and `Distiller.fit` use it, so a
    pruned model (or a distiller's pruned student) never trains unpruned by
    accident.
    """
    if not _pruned_models(model):
        return args, kwargs
    args, kwargs = list(args), dict(kwargs)
    if len(args) > 5:  # fit(x, y, batch_size, epochs, verbose, callbacks, ...)
        args[5] = _add_update_step(args[5], model)
    else:
        kwargs["callbacks"] = _add_update_step(kwargs.get("callbacks"), model)
    return args, kwargs


def _add_update_step(callbacks, model):
    if isinstance(callbacks, keras.callbacks.CallbackList):
        # `fit` uses a CallbackList as given, so the new callback needs its model here.
        if not any(isinstance(c, UpdatePruningStep) for c in callbacks.callbacks):
            callback = UpdatePruningStep()
            callback.set_model(model)
            callbacks.callbacks.append(callback)
        return callbacks
    callbacks = list(callbacks or [])
    if not any(isinstance(c, UpdatePruningStep) for c in callbacks):
        callbacks.append(UpdatePruningStep())
    return callbacks


class UpdatePruningStep(keras.callbacks.Callback):
    """Updates the masks before each training batch when the schedule says so.

    The step is the training model's `optimizer.iterations` (the number of
    steps done), so it survives saving, reloading and several `fit` calls, and
    counts optimizer steps (not forward calls). When training ends, a mask
    update due at the next step is applied too, so `end_step = epochs *
    steps_per_epoch` (tfmot's recipe) ends exactly at the final sparsity.
    `PrunedModel.fit` and `Distiller.fit` (pruned student) add this callback by
    themselves when it is missing; pass it explicitly when another model that
    holds a pruned model is trained.

    Raises:
        ValueError: at the start of training, when the model holds no pruned model.

    Example:
        >>> cb = UpdatePruningStep()  # pm.fit(x, y, callbacks=[cb])
    """

    def on_train_begin(self, logs=None):
        self._targets = _pruned_models(self.model)
        if not self._targets:
            raise ValueError(
                "UpdatePruningStep needs a model made by `prune_low_magnitude`. "
                f"Received: model={self.model.name}"
            )

    def on_train_batch_begin(self, batch, logs=None):
        step = self.model.optimizer.iterations
        for pruned in self._targets:
            pruned.update_masks(step)

    def on_train_end(self, logs=None):
        # A mask due at the step after the last one (the usual `end_step =
        # epochs * steps_per_epoch`) is applied now, so fit ends at the target.
        self.on_train_batch_begin(None)


class PruningSummaries(keras.callbacks.Callback):
    """Writes the sparsity of every pruned weight and the schedule to TensorBoard.

    Scalars, at the step given by the optimizer's iterations:
    `pruning/sparsity/<weight name>` (fraction of zeros), `pruning/target_sparsity`
    (the schedule's value) and `pruning/last_update_step`.

    Args:
        log_dir: Directory of the TensorBoard event files.
        update_freq: "epoch", or an integer number of batches between writes.

    Raises:
        ValueError: `log_dir` empty, or `update_freq` neither "epoch" nor a positive int.

    Example:
        >>> cb = PruningSummaries("/tmp/logs")  # pm.fit(x, y, callbacks=[cb])
    """

    def __init__(self, log_dir, update_freq="epoch"):
        super().__init__()
        if not log_dir:
            raise ValueError(f"`log_dir` must be a directory path. Received: log_dir={log_dir}")
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ValueError(
                "`update_freq` must be 'epoch' or a positive int. "
                f"Received: update_freq={update_freq}"
            )
        self.log_dir = str(log_dir)
        self.update_freq = update_freq
        self._writer = None

    def on_train_begin(self, logs=None):
        self._targets = _pruned_models(self.model)
        if not self._targets:
            raise ValueError(
                "PruningSummaries needs a model made by `prune_low_magnitude`. "
                f"Received: model={self.model.name}"
            )
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _write(self):
        step = int(self.model.optimizer.iterations.numpy())
        with self._writer.as_default():
            for pruned in self._targets:
                for name, variable in zip(pruned.weight_names, pruned.pruned_weights):
                    zeros = float(np.mean(keras.ops.convert_to_numpy(variable.value) == 0))
                    _scalar(f"pruning/sparsity/{name}", zeros, step)
                _, target = pruned.pruning_schedule(step)
                _scalar("pruning/target_sparsity", float(target), step)
                _scalar("pruning/last_update_step", float(pruned.pruning_step.numpy()), step)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq != "epoch" and (batch + 1) % self.update_freq == 0:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

"""Keras callbacks that drive pruning in `fit` and log it to TensorBoard.

`UpdatePruningStep` lives beside `PrunedModel` (whose `fit` adds it) and is
re-exported here, so this module depends on `prune` and not the reverse.
"""

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from tfcompress.pruning.prune import UpdatePruningStep, pruned_models, with_update_step

__all__ = ["PruningSummaries", "UpdatePruningStep", "with_update_step"]

# What tensorboard's own `scalar` summary writes, without needing the package.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR,
).SerializeToString()


def _scalar(tag, value, step):
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=_SCALAR_METADATA)


class PruningSummaries(keras.callbacks.Callback):
    """Writes the sparsity of every pruned weight and the schedule to TensorBoard.

    Scalars, at each pruned model's `step` (the training step its schedule
    reads, which goes on across `compile` and reloads):
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
        self._targets = pruned_models(self.model)
        if not self._targets:
            raise ValueError(
                "PruningSummaries needs a model made by `prune_low_magnitude`. "
                f"Received: model={self.model.name}"
            )
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _write(self):
        with self._writer.as_default():
            for pruned in self._targets:
                step = int(keras.ops.convert_to_numpy(pruned.step.value))
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

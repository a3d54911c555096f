"""Keras callbacks for RBM training."""

import keras
import numpy as np
from keras import ops

from tfcompress.rbm.layer import RBM


class FreeEnergyGap(keras.callbacks.Callback):
    """Logs the free-energy gap between validation and training data.

    At the end of each epoch, computes mean F(v_val) - mean F(v_train) for the
    RBM that ends the model (inputs are passed through the layers before it,
    as in a Sequential or a DBN pre-training model) and writes it to the logs
    as `free_energy_gap`, so History, TensorBoard and EarlyStopping see it.
    A gap that keeps growing means the RBM is overfitting.

    Args:
        train_data: a batch of training data (a few hundred rows).
        validation_data: a batch of held-out data of similar size.

    Example:
        >>> x = (np.random.default_rng(0).random((64, 16)) > 0.5).astype("float32")
        >>> model = keras.Sequential([keras.Input((16,)), RBM(8, seed=0)])
        >>> model.compile(optimizer="sgd")
        >>> gap = FreeEnergyGap(x[:32], x[32:])
        >>> logs = model.fit(x[:32], epochs=1, callbacks=[gap], verbose=0).history
        >>> len(logs["free_energy_gap"])
        1

    Reference:
        Hinton, "A practical guide to training restricted Boltzmann machines",
        section 6.
    """

    def __init__(self, train_data, validation_data):
        super().__init__()
        self.train_data = np.asarray(train_data)
        self.validation_data = np.asarray(validation_data)

    def on_train_begin(self, logs=None):
        # Checked here, not after a whole epoch of training.
        layers = self.model.layers
        if not layers or not isinstance(layers[-1], RBM):
            raise ValueError(
                "FreeEnergyGap needs a model whose last layer is an RBM. "
                f"Received: model with last layer {layers[-1].name if layers else None}"
            )

    def on_epoch_end(self, epoch, logs=None):
        layers = self.model.layers
        rbm = layers[-1]
        means = []
        for data in (self.validation_data, self.train_data):
            h = ops.convert_to_tensor(data, rbm.compute_dtype)
            for layer in layers[:-1]:
                h = layer(h, training=False)
            means.append(float(ops.mean(rbm.free_energy(h))))
        if logs is not None:
            logs["free_energy_gap"] = means[0] - means[1]

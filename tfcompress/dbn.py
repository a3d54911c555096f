"""Deep belief network: a stack of RBMs pre-trained greedily, then fine-tuned.

`DBN` is a `keras.Model` whose forward pass feeds each RBM's p(h|v) to the
next. `pretrain` trains the RBMs one at a time through ordinary Keras `fit`
(contrastive divergence, see `tfcompress.rbm.RBM`), and `to_classifier`
turns the stack into a plain Keras classifier (sigmoid Dense layers holding
the RBM weights, plus a new output layer) ready for supervised fine-tuning,
pruning, quantization-aware training and TFLite export.
"""

import keras
import numpy as np

from tfcompress import data as data_lib
from tfcompress._serialization import register
from tfcompress.rbm import RBM


def _check_units(units):
    if isinstance(units, (int, np.integer)) or not isinstance(units, (list, tuple)):
        raise ValueError(f"`units` must be a non-empty list of integers. Received: units={units!r}")
    if not units:
        raise ValueError(f"A DBN needs at least one RBM. Received: units={units!r}")
    for u in units:
        if isinstance(u, bool) or not isinstance(u, (int, np.integer)) or u < 1:
            raise ValueError(
                f"Every entry of `units` must be an integer >= 1. Received: units={units!r}"
            )


@register
class DBN(keras.Model):
    """A stack of RBMs, pre-trained layer by layer with contrastive divergence.

    Calling the model maps visible data to the top layer's hidden
    probabilities (each RBM sees the previous one's p(h|v)). Train it with
    `pretrain`; `fit` on the DBN itself is not CD training.

    Args:
        units: hidden units of each RBM, bottom to top, e.g. `[256, 128]`.
        visible: visible unit type of the bottom RBM (`"bernoulli"` or
            `"gaussian"`); upper RBMs have Bernoulli visible units.
        k: Gibbs steps of CD-k for every RBM.
        persistent: use persistent CD.
        seed: integer seed; RBM i uses `seed + i` (None: random).
        num_chains: persistent chains per RBM (default: the pre-training
            batch size).
        **kwargs: base `keras.Model` arguments (`name`, ...).

    Raises:
        ValueError: for an empty or invalid `units` list, or invalid RBM
            arguments.

    Example:
        >>> x = (np.random.default_rng(0).random((128, 16)) > 0.5).astype("float32")
        >>> dbn = DBN([8, 4], seed=0)
        >>> histories = dbn.pretrain(x, epochs=2, batch_size=32, verbose=0)
        >>> clf = dbn.to_classifier(3)
        >>> clf.output_shape
        (None, 3)

    Reference:
        Hinton, Osindero & Teh, "A fast learning algorithm for deep belief
        nets", Neural Computation 2006.
    """

    def __init__(self, units, visible="bernoulli", k=1, persistent=False, seed=None,
                 num_chains=None, **kwargs):
        _check_units(units)
        rbms = [
            RBM(
                int(u),
                visible=visible if i == 0 else "bernoulli",
                k=k,
                persistent=persistent,
                seed=None if seed is None else seed + i,
                num_chains=num_chains,
                name=f"rbm_{i}",
            )
            for i, u in enumerate(units)
        ]
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        self.visible = visible
        self.k = k
        self.persistent = persistent
        self.seed = seed
        self.num_chains = num_chains
        self.rbms = rbms

    def build(self, input_shape):
        shape = tuple(input_shape)
        for rbm in self.rbms:
            rbm.build(shape)
            shape = shape[:-1] + (rbm.units,)
        self.built = True

    def call(self, inputs, training=None):
        h = inputs
        for rbm in self.rbms:
            h = rbm(h, training=training)
        return h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units[-1],)

    def pretrain(self, x, epochs=10, batch_size=32, optimizer=None, callbacks=None,
                 init_visible_bias=True, verbose="auto", steps_per_execution=1, **fit_kwargs):
        """Trains the RBMs greedily, bottom to top, each through `fit`.

        RBM i is trained by CD on the hidden probabilities of RBMs 0..i-1
        (frozen, computed in the training graph), so `x` may be an array, a
        `tf.data.Dataset` of unlabeled batches, or a generator of batches
        (read into memory once: every RBM makes its own passes). Runs inside the strategy the
        DBN was created under.

        Args:
            x: unlabeled training data (array, dataset or generator of batches).
            epochs: epochs per RBM, an int or a list with one int per RBM.
            batch_size: batch size (arrays only).
            optimizer: a Keras optimizer (or its name); each RBM gets a fresh
                copy. Default: SGD with learning rate 0.05 and momentum 0.9
                (Hinton's guide, section 9; in `benchmarks/dbn_bench.py` it
                gives better classifiers than momentum 0.5 after the same
                epochs).
            callbacks: Keras callbacks, passed to every `fit`.
            init_visible_bias: for array data, set the visible biases of each
                RBM that trains (epochs > 0) from the mean of its input
                (`RBM.init_visible_bias`). Pass False to continue training.
            verbose: `fit` verbosity.
            steps_per_execution: passed to `compile`; more steps per call
                cut Python overhead on small layers.
            **fit_kwargs: other `fit` arguments (`validation_data`, ...).

        Returns:
            A list with the `History` of each RBM.

        Raises:
            ValueError: for invalid data (empty, NaN/inf, outside [0, 1] for
                Bernoulli units, or a wrong number of features), a bad
                `epochs`, `batch_size` or optimizer (also one with a negative
                or non-finite learning rate), before any state changes.
        """
        n = len(self.rbms)
        epochs_list = list(epochs) if isinstance(epochs, (list, tuple)) else [epochs] * n
        if len(epochs_list) != n or any(
            isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 0
            for e in epochs_list
        ):
            raise ValueError(
                f"`epochs` must be an int >= 0 or a list of {n} of them. Received: epochs={epochs}"
            )
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size < 1
        ):
            raise ValueError(
                f"`batch_size` must be None or an int >= 1. Received: batch_size={batch_size!r}"
            )
        _check_optimizer(optimizer)
        if data_lib.is_stream(x) and not hasattr(x, "element_spec"):
            # A generator is read once, and every RBM needs its own passes: hold it.
            x = data_lib.as_arrays(x, "x")[0]
        is_array = not hasattr(x, "element_spec")
        if is_array:
            x = self.rbms[0].validate_array(x, "x").astype("float32")
            if len(x) == 0:
                raise ValueError(f"`x` must hold at least one sample. Received: x.shape={x.shape}")
        with self.distribute_strategy.scope():
            if not self.built:
                dim = x.shape[-1] if is_array else x.element_spec.shape[-1]
                self.build((batch_size if self.persistent else None, dim))
            histories = []
            for i, rbm in enumerate(self.rbms):
                if init_visible_bias and is_array and epochs_list[i] > 0:
                    rbm.init_visible_bias(self._features(x, i))
                run_kwargs = dict(fit_kwargs, epochs=epochs_list[i], callbacks=callbacks,
                                  verbose=verbose)
                if is_array:
                    run_kwargs["batch_size"] = batch_size
                trainer = self._trainer(i, optimizer, steps_per_execution)
                histories.append(self._fit_frozen_below(i, trainer, x, run_kwargs))
        return histories

    def _features(self, x, depth):
        h = x
        for rbm in self.rbms[:depth]:
            h = np.concatenate([
                keras.ops.convert_to_numpy(rbm.hidden_probabilities(h[s: s + 4096]))
                for s in range(0, len(h), 4096)
            ])
        return h

    def _trainer(self, i, optimizer, steps_per_execution):
        trainer = keras.Sequential(
            [keras.Input((self.rbms[0].kernel.shape[0],)), *self.rbms[: i + 1]],
            name=f"{self.name}_pretrain_{i}",
        )
        trainer.compile(optimizer=_fresh_optimizer(optimizer),
                        steps_per_execution=steps_per_execution)
        return trainer

    def _fit_frozen_below(self, i, trainer, x, fit_kwargs):
        # The RBMs below feed p(h|v) forward but must not move: freeze them
        # for this fit only.
        lower = self.rbms[:i]
        trainable = [rbm.trainable for rbm in lower]
        for rbm in lower:
            rbm.trainable = False
        try:
            return trainer.fit(x, **fit_kwargs)
        finally:
            for rbm, flag in zip(lower, trainable):
                rbm.trainable = flag

    def to_classifier(self, num_classes, activation="softmax", name=None):
        """A Keras classifier initialised from the pre-trained RBMs.

        Each RBM becomes a `Dense(units, activation="sigmoid")` with the RBM's
        kernel and hidden biases (so it computes the same p(h|v)); a new
        `Dense(num_classes)` output layer is added. The classifier holds
        copies: fine-tuning it leaves the DBN unchanged.

        Args:
            num_classes: number of output classes, >= 2.
            activation: activation of the output layer (`"softmax"`, or None
                for logits).
            name: optional model name.

        Returns:
            A `keras.Sequential` classifier.

        Raises:
            ValueError: if `num_classes` < 2 or the DBN has no weights yet.
        """
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or (
            num_classes < 2
        ):
            raise ValueError(
                f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}"
            )
        if not self.built:
            raise ValueError(
                "The DBN has no weights yet: pretrain or build it first. "
                f"Received: dbn={self.name} (unbuilt)"
            )
        with self.distribute_strategy.scope():
            layers = [keras.Input((self.rbms[0].kernel.shape[0],))]
            for i, rbm in enumerate(self.rbms):
                layers.append(keras.layers.Dense(rbm.units, activation="sigmoid",
                                                 name=f"dbn_dense_{i}"))
            layers.append(keras.layers.Dense(int(num_classes), activation=activation,
                                             name="dbn_output"))
            clf = keras.Sequential(layers, name=name or f"{self.name}_classifier")
            for rbm, dense in zip(self.rbms, clf.layers):
                dense.set_weights([np.asarray(rbm.kernel), np.asarray(rbm.hidden_bias)])
        return clf

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "units": list(self.units),
            "visible": self.visible,
            "k": self.k,
            "persistent": self.persistent,
            "seed": self.seed,
            "num_chains": self.num_chains,
        }


def _check_optimizer(optimizer):
    if isinstance(optimizer, str):
        keras.optimizers.get(optimizer)  # raises on an unknown name
    elif optimizer is not None and not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            "`optimizer` must be None, a name or a keras Optimizer. "
            f"Received: optimizer={optimizer!r}"
        )
    elif optimizer is not None:
        # Keras accepts any learning rate; a negative one would climb the CD loss.
        rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        if not 0.0 <= rate < float("inf"):
            raise ValueError(
                "`optimizer` must have a finite learning rate >= 0. "
                f"Received: optimizer={type(optimizer).__name__}(learning_rate={rate:.6g})"
            )


def _fresh_optimizer(optimizer):
    if optimizer is None:
        return keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    if isinstance(optimizer, str):
        return keras.optimizers.get(optimizer)
    # Each RBM needs its own slots (momentum, iteration count).
    return keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))

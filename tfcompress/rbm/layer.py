"""Restricted Boltzmann machine layer trained by contrastive divergence.

An `RBM` is a Keras layer whose forward pass is the hidden-unit probability
p(h=1|v) = sigmoid(v @ kernel + hidden_bias): a sigmoid dense layer that can be
pruned, quantized and exported like any other. Training is ordinary Keras
`fit`: when the layer produces the output of the model being fitted, it adds
the contrastive-divergence surrogate loss

.. math::

    L = \\overline{F(v_{data})} - \\overline{F(\\mathrm{sg}(v_k))}

whose gradient is exactly the CD-k (or persistent CD) update, so every Keras
optimizer, learning-rate schedule, callback and `tf.distribute` strategy works
unchanged. Partition functions (exact for small models, annealed importance
sampling otherwise) and log-likelihoods are plain functions in
`tfcompress.rbm.partition`.
"""

import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfcompress import _compat, _tracing, layers_registry
from tfcompress._serialization import register
from tfcompress.rbm.partition import free_energy, free_energy_from_pre, logit

_VISIBLE_TYPES = ("bernoulli", "gaussian")


def _produces_output_of(model, layer):
    # Wrapper models (a pruned or quantized model) keep the user's model in
    # `.model`; the RBM is the output layer if it is the output of that one.
    inner = getattr(model, "model", None)
    if isinstance(inner, keras.Model) and inner is not model:
        if inner is layer or _produces_output_of(inner, layer):
            return True
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return False
    for tensor in keras.tree.flatten(outputs or []):
        history = _compat.keras_history(tensor)
        if history is not None and history.operation is layer:
            return True
    return False


@register
class RBM(keras.layers.Layer):
    """Restricted Boltzmann machine trained by contrastive divergence in `fit`.

    `call(v)` returns p(h=1|v) = sigmoid(v @ kernel + hidden_bias). When the
    layer produces the output of the model being fitted (for example the last
    layer of a Sequential compiled with only an optimizer and fitted on
    unlabeled data), `call(v, training=True)` also adds the CD-k loss
    F(v) - F(stop_gradient(v_k)), averaged over the batch, whose gradient is
    the CD-k update; the same layer inside a classifier (followed by other
    layers) adds nothing and behaves as a sigmoid dense layer.

    The negative phase follows Hinton's recipe: hidden states driving the
    chain are sampled, reconstructions of the visible units are their
    probabilities (means for Gaussian units), and statistics use
    probabilities. With `persistent=True` the chain continues from the
    previous step's fantasy particles (PCD), kept in a non-trainable weight
    with one row per chain.

    During `fit` the layer reports `reconstruction_error` (mean squared error
    between the data and its one-step reconstruction); with validation data,
    `val_reconstruction_error` and `val_loss` (the same CD loss on held-out
    data) too. `FreeEnergyGap` adds the free-energy gap between training and
    validation data. Under `tf.distribute`, random numbers are drawn for the
    global batch and sliced per replica, so a run on N replicas matches a run
    on one device on the same global batch.

    Data passed to `fit` is checked (NaN/inf, and [0, 1] for Bernoulli units)
    by graph assertions, which XLA drops: with `jit_compile=True` (Keras'
    `"auto"` choice on GPUs) check the data first, e.g. with
    `init_visible_bias` or `DBN.pretrain`, which validate arrays.

    Args:
        units: number of hidden units, >= 1.
        visible: `"bernoulli"` (data in [0, 1]) or `"gaussian"` (unit
            variance; standardise the data first).
        k: Gibbs steps of the negative phase (CD-k), >= 1.
        persistent: keep the chains between steps (PCD).
        seed: integer seed of the sampling (None: random).
        num_chains: number of persistent chains. When None, the static batch
            size of the input is used (`keras.Input((64,), batch_size=64)`);
            PCD needs one of the two. Under a strategy, it must be divisible
            by the number of replicas.
        cd_loss: when to add the CD loss: `"auto"` (when the layer produces
            the output of the model being called, or is called on its own),
            `True` (whenever training, e.g. inside a subclassed model), or
            `False` (never).
        sparsity_target: optional target mean activation of the hidden
            units in (0, 1); adds `sparsity_cost` times the cross-entropy
            between the target and the batch-mean activation of each unit.
        sparsity_cost: weight of the sparsity penalty, >= 0.
        kernel_initializer: initializer of `kernel` (Hinton's N(0, 0.01^2)).
        visible_bias_initializer: initializer of `visible_bias` (see also
            `init_visible_bias`).
        hidden_bias_initializer: initializer of `hidden_bias`.
        **kwargs: base `keras.layers.Layer` arguments (name, dtype, ...).

    Raises:
        ValueError: for `units` < 1, `k` < 1, an unknown `visible` type, or
            other out-of-range arguments.

    Example:
        >>> x = (np.random.default_rng(0).random((64, 16)) > 0.5).astype("float32")
        >>> rbm = RBM(8, k=1, seed=0)
        >>> model = keras.Sequential([keras.Input((16,)), rbm])
        >>> model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5))
        >>> history = model.fit(x, epochs=2, batch_size=16, verbose=0)
        >>> sorted(history.history)
        ['loss', 'reconstruction_error']

    Reference:
        Hinton, "Training products of experts by minimizing contrastive
        divergence", Neural Computation 2002; Tieleman, "Training restricted
        Boltzmann machines using approximations to the likelihood gradient",
        ICML 2008; Hinton, "A practical guide to training restricted Boltzmann
        machines", UTML TR 2010-003.
    """

    def __init__(
        self,
        units,
        visible="bernoulli",
        k=1,
        persistent=False,
        seed=None,
        num_chains=None,
        cd_loss="auto",
        sparsity_target=None,
        sparsity_cost=0.1,
        kernel_initializer=None,
        visible_bias_initializer="zeros",
        hidden_bias_initializer="zeros",
        **kwargs,
    ):
        _check_int(units, "units", 1)
        _check_int(k, "k", 1)
        if visible not in _VISIBLE_TYPES:
            raise ValueError(
                f"`visible` must be one of {_VISIBLE_TYPES}. Received: visible={visible!r}"
            )
        if not isinstance(persistent, bool):
            raise ValueError(f"`persistent` must be a bool. Received: persistent={persistent!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        seed = None if seed is None else int(seed)
        if num_chains is not None:
            _check_int(num_chains, "num_chains", 1)
        if cd_loss not in ("auto", True, False):
            raise ValueError(
                f"`cd_loss` must be 'auto', True or False. Received: cd_loss={cd_loss!r}"
            )
        if sparsity_target is not None and not (
            _is_real(sparsity_target) and 0.0 < sparsity_target < 1.0
        ):
            raise ValueError(
                "`sparsity_target` must be None or a number in (0, 1). "
                f"Received: sparsity_target={sparsity_target!r}"
            )
        if not (_is_real(sparsity_cost) and 0.0 <= sparsity_cost < float("inf")):
            raise ValueError(
                "`sparsity_cost` must be a finite number >= 0. "
                f"Received: sparsity_cost={sparsity_cost!r}"
            )
        super().__init__(**kwargs)
        self.units = units
        self.visible = visible
        self.k = k
        self.persistent = persistent
        self.seed = seed
        self.num_chains = num_chains
        self.cd_loss = cd_loss
        # Plain floats: a NumPy scalar would not serialize in `get_config`.
        self.sparsity_target = None if sparsity_target is None else float(sparsity_target)
        self.sparsity_cost = float(sparsity_cost)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.RandomNormal(stddev=0.01, seed=seed)
        )
        self.visible_bias_initializer = keras.initializers.get(visible_bias_initializer)
        self.hidden_bias_initializer = keras.initializers.get(hidden_bias_initializer)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.eval_seed_generator = keras.random.SeedGenerator(None if seed is None else seed + 1)
        self.reconstruction_error = keras.metrics.Mean(name="reconstruction_error")
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    # ------------------------------------------------------------------ state
    def build(self, input_shape):
        n_vis = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(n_vis, self.units), initializer=self.kernel_initializer, name="kernel"
        )
        self.visible_bias = self.add_weight(
            shape=(n_vis,), initializer=self.visible_bias_initializer, name="visible_bias"
        )
        self.hidden_bias = self.add_weight(
            shape=(self.units,), initializer=self.hidden_bias_initializer, name="hidden_bias"
        )
        if self.persistent:
            chains = self.num_chains or input_shape[0]
            if chains is None:
                raise ValueError(
                    "Persistent CD needs the number of chains: pass `num_chains` or give the "
                    "input a static batch size (keras.Input(shape, batch_size=...)). "
                    f"Received: num_chains=None, input_shape={tuple(input_shape)}"
                )
            self.persistent_chains = self.add_weight(
                shape=(chains, n_vis),
                initializer=self._chain_initializer,
                trainable=False,
                aggregation="only_first_replica",
                name="persistent_chains",
            )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: n_vis})

    def _chain_initializer(self, shape, dtype=None):
        rng = np.random.default_rng(self.seed)
        if self.visible == "gaussian":
            return rng.standard_normal(shape).astype(dtype or "float32")
        return (rng.random(shape) < 0.5).astype(dtype or "float32")

    def reset_chains(self):
        """Restarts the persistent chains from samples of the visible biases.

        Called by `init_visible_bias` and when loading a file saved without
        the chains. A no-op without `persistent`.
        """
        if not (self.persistent and self.built):
            return
        rng = np.random.default_rng(self.seed)
        shape = tuple(self.persistent_chains.shape)
        b = np.asarray(ops.convert_to_numpy(self.visible_bias), "float64")
        if self.visible == "gaussian":
            value = b + rng.standard_normal(shape)
        else:
            value = rng.random(shape) < 1.0 / (1.0 + np.exp(-b))
        self.persistent_chains.assign(value.astype(self.persistent_chains.dtype))

    def init_visible_bias(self, x, eps=1e-3):
        """Sets the visible biases from data (Hinton's recommended start).

        Bernoulli units get b_i = log(p_i / (1 - p_i)) with p_i the mean of
        unit i clipped to [eps, 1 - eps]; Gaussian units get the data mean.
        Builds the layer if needed and restarts persistent chains.

        Args:
            x: data, shape (N, visible).
            eps: clipping of the marginals for Bernoulli units.

        Raises:
            ValueError: on NaN/inf, or values outside [0, 1] for Bernoulli
                units, or a feature size that does not match the layer.
        """
        x = self.validate_array(x, "x")
        if not self.built:
            self.build((None, x.shape[-1]))
        mean = x.astype("float64").mean(0)
        value = mean if self.visible == "gaussian" else logit(mean, eps)
        self.visible_bias.assign(value.astype(self.visible_bias.dtype))
        self.reset_chains()

    def _parameter_weights(self):
        return [self.kernel, self.visible_bias, self.hidden_bias]

    def _sampler_state(self):
        # The sampler's state travels with the weights, so a run resumed from a
        # `.keras` file or a `BackupAndRestore` backup draws the same numbers
        # and continues the same persistent chains as an uninterrupted run.
        state = [self.seed_generator.state, self.eval_seed_generator.state]
        return state + ([self.persistent_chains] if self.persistent else [])

    def save_own_variables(self, store):
        if not self.built:
            return
        for i, weight in enumerate(self._parameter_weights() + self._sampler_state()):
            store[f"{i}"] = weight

    def load_own_variables(self, store):
        params, state = self._parameter_weights(), self._sampler_state()
        # Files written before the sampler state was saved hold the parameters only.
        if len(store.keys()) not in (len(params), len(params) + len(state)):
            raise ValueError(
                f"RBM '{self.name}' expects {len(params)} or {len(params) + len(state)} saved "
                f"arrays. Received: {len(store.keys())} arrays"
            )
        for i, weight in enumerate(params):
            weight.assign(store[f"{i}"])
        if len(store.keys()) == len(params):
            self.reset_chains()
            return
        for i, variable in enumerate(state, start=len(params)):
            variable.assign(store[f"{i}"])

    def get_prunable_weights(self):
        """The weights a pruning wrapper may sparsify: the kernel only."""
        return [self.kernel]

    # --------------------------------------------------------------- forward
    def call(self, inputs, training=None):
        mode = self._cd_mode(training)
        v = ops.cast(inputs, self.compute_dtype)
        if mode is not None:
            v = self._checked_in_graph(v)
        elif tf.executing_eagerly() and not isinstance(inputs, keras.KerasTensor):
            self.validate_array(inputs, "inputs")
        pre = ops.matmul(v, self.kernel) + self.hidden_bias
        p_h = ops.sigmoid(pre)
        if mode is not None:
            self._add_cd_loss(v, pre, p_h, mode)
        return p_h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def free_energy(self, v):
        """Free energy F(v) of each row of `v`, shape (batch,); see `free_energy`."""
        v = self.validate_array(v, "v") if _is_concrete(v) else v
        v = ops.cast(v, self.compute_dtype)
        return free_energy(v, self.kernel, self.visible_bias, self.hidden_bias, self.visible)

    def hidden_probabilities(self, v):
        """p(h=1|v), the same as calling the layer."""
        v = ops.cast(v, self.compute_dtype)
        return ops.sigmoid(ops.matmul(v, self.kernel) + self.hidden_bias)

    def visible_mean(self, h):
        """E[v|h]: sigmoid(h W^T + b) for Bernoulli units, h W^T + b for Gaussian."""
        act = ops.matmul(ops.cast(h, self.compute_dtype), ops.transpose(self.kernel))
        act = act + self.visible_bias
        return act if self.visible == "gaussian" else ops.sigmoid(act)

    def gibbs(self, v, k=1):
        """Runs `k` full Gibbs steps v -> h -> v from `v` and returns the sample.

        Args:
            v: starting visible states, shape (batch, visible).
            k: number of steps, >= 1.

        Returns:
            Sampled visible states after `k` steps (binary for Bernoulli
            units, real for Gaussian ones).

        Raises:
            ValueError: for `k` < 1 or invalid data.
        """
        _check_int(k, "k", 1)
        v = self.validate_array(v, "v") if _is_concrete(v) else v
        v = ops.cast(v, self.compute_dtype)
        for _ in range(k):
            h = _bernoulli(self.hidden_probabilities(v), self.eval_seed_generator)
            v = self._sample_visible(self.visible_mean(h), self.eval_seed_generator)
        return v

    # ------------------------------------------------------ contrastive div.
    def _cd_mode(self, training):
        if self.cd_loss is False or _tracing.exporting():
            return None
        entry = _compat.current_call_entry_layer()
        is_output = entry is self or (
            isinstance(entry, keras.Model) and _produces_output_of(entry, self)
        )
        if training:
            return "train" if (self.cd_loss is True or is_output) else None
        # Evaluation of a CD-trained model reports the same loss on held-out
        # data; without it Keras `evaluate` would find no loss to compute.
        if isinstance(entry, keras.Model) and entry is not self and is_output:
            return "eval"
        return None

    def _add_cd_loss(self, v, pre, p_h, mode):
        layout = _replica_layout(v)
        gen = self.seed_generator if mode == "train" else self.eval_seed_generator
        params = tuple(
            ops.stop_gradient(w) for w in (self.kernel, self.visible_bias, self.hidden_bias)
        )
        h_data = _bernoulli(ops.stop_gradient(p_h), gen, layout)
        recon = self._mean_v(h_data, params)
        if self.persistent and mode == "train":
            v_neg, n_neg = self._persistent_negatives(params, gen, layout)
        else:
            v_neg, n_neg = self._run_chain(recon, params, gen, layout), layout.total
        v_neg = ops.stop_gradient(v_neg)

        f_data = free_energy_from_pre(v, pre, self.visible_bias, self.visible)
        pre_neg = ops.matmul(v_neg, self.kernel) + self.hidden_bias
        f_neg = free_energy_from_pre(v_neg, pre_neg, self.visible_bias, self.visible)
        # Sums over this replica's rows divided by global counts: after Keras
        # divides by the replica count and sums gradients, this is the
        # global-batch mean, also for an uneven last batch. Summed in float32:
        # a float16 sum of a large batch of free energies overflows.
        f_data, f_neg = ops.cast(f_data, "float32"), ops.cast(f_neg, "float32")
        loss = (ops.sum(f_data) / layout.total - ops.sum(f_neg) / n_neg) * layout.num_replicas
        if self.sparsity_target is not None and mode == "train":
            # In float32: 1 - 1e-6 rounds to 1 in float16, so log(1 - q) could be -inf.
            q = ops.clip(ops.cast(ops.mean(p_h, axis=0), "float32"), 1e-6, 1.0 - 1e-6)
            t = self.sparsity_target
            penalty = -ops.sum(t * ops.log(q) + (1.0 - t) * ops.log(1.0 - q))
            loss = loss + self.sparsity_cost * penalty
        self.add_loss(loss)
        self.reconstruction_error.update_state(ops.mean(ops.square(v - recon), axis=-1))

    def _run_chain(self, v_mean, params, gen, layout):
        # The first step is done; k - 1 more: sampled states drive the chain,
        # the last reconstruction stays a probability (Hinton's recipe).
        kernel, _, hidden_bias = params
        for _ in range(self.k - 1):
            v_sample = self._sample_visible(v_mean, gen, layout)
            p = ops.sigmoid(ops.matmul(v_sample, kernel) + hidden_bias)
            v_mean = self._mean_v(_bernoulli(p, gen, layout), params)
        return v_mean

    def _persistent_negatives(self, params, gen, layout):
        chains = self.persistent_chains.shape[0]
        n = layout.num_replicas
        if chains % n:
            raise ValueError(
                f"`num_chains` must be divisible by the {n} replicas in sync. "
                f"Received: num_chains={chains}"
            )
        # Every replica advances all chains with the same draws (identical
        # results, no collective) and uses its own slice for the loss.
        kernel, _, hidden_bias = params
        p = ops.sigmoid(ops.matmul(self.persistent_chains, kernel) + hidden_bias)
        v_mean = self._run_chain(self._mean_v(_bernoulli(p, gen), params), params, gen, None)
        self.persistent_chains.assign(self._sample_visible(v_mean, gen))
        if n > 1:
            rows = chains // n
            v_mean = tf.slice(v_mean, tf.stack([layout.replica_id * rows, 0]),
                              [rows, v_mean.shape[1]])
        return v_mean, chains

    def _mean_v(self, h, params):
        kernel, visible_bias, _ = params
        act = ops.matmul(h, ops.transpose(kernel)) + visible_bias
        return act if self.visible == "gaussian" else ops.sigmoid(act)

    def _sample_visible(self, mean, gen, layout=None):
        if self.visible == "gaussian":
            return mean + _draw(keras.random.normal, mean, gen, layout)
        return _bernoulli(mean, gen, layout)

    # ------------------------------------------------------------- checking
    def validate_array(self, x, name):
        """`x` as a NumPy array, checked as data for this RBM.

        Raises:
            ValueError: if `x` is not 2-D or more, has the wrong number of
                features (once built), holds NaN/inf, or, for Bernoulli
                units, values outside [0, 1]. `name` names `x` in messages.
        """
        x = np.asarray(keras.ops.convert_to_numpy(x))
        if x.ndim < 2:
            raise ValueError(
                f"`{name}` must have shape (batch, features). Received: {name}.shape={x.shape}"
            )
        if self.built and x.shape[-1] != self.kernel.shape[0]:
            raise ValueError(
                f"`{name}` must have {self.kernel.shape[0]} features (the visible units). "
                f"Received: {name}.shape={x.shape}"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError(
                f"`{name}` must not contain NaN or inf. Received: {name} with "
                f"{int(np.size(x) - np.isfinite(x).sum())} non-finite values"
            )
        if self.visible == "bernoulli" and x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(
                f"A Bernoulli RBM needs `{name}` in [0, 1] (it does not clip). "
                f"Received: {name} with min={x.min()}, max={x.max()}"
            )
        return x

    def _checked_in_graph(self, v):
        # fit traces the step, so a Python ValueError is impossible here: these
        # TF assertions stop the step before any update (XLA drops them).
        if tf.executing_eagerly():
            self.validate_array(v, "inputs")
            return v
        v = tf.debugging.check_numerics(
            v, f"RBM '{self.name}': a batch of `x` holds NaN or inf; this batch changed nothing"
        )
        if self.visible == "bernoulli":
            lo, hi = tf.reduce_min(v), tf.reduce_max(v)
            ok = tf.logical_and(lo >= 0.0, hi <= 1.0)
            check = tf.debugging.Assert(
                ok,
                [f"RBM '{self.name}' (Bernoulli units) needs `x` in [0, 1]; this batch changed "
                 "nothing. Received: a batch with min, max =", lo, hi],
            )
            with tf.control_dependencies([check]):
                v = tf.identity(v)
        return v

    def get_config(self):
        config = {
            "units": self.units,
            "visible": self.visible,
            "k": self.k,
            "persistent": self.persistent,
            "seed": self.seed,
            "num_chains": self.num_chains,
            "cd_loss": self.cd_loss,
            "sparsity_target": self.sparsity_target,
            "sparsity_cost": self.sparsity_cost,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "visible_bias_initializer": keras.initializers.serialize(
                self.visible_bias_initializer
            ),
            "hidden_bias_initializer": keras.initializers.serialize(self.hidden_bias_initializer),
        }
        base_config = super().get_config()
        return {**base_config, **config}


class _Layout:
    """Where this replica's rows sit in the global batch.

    `total` (the global row count) is float32 whatever the compute dtype:
    bfloat16 holds integers exactly only up to 256, float16 up to 2048.
    """

    def __init__(self, num_replicas, replica_id, rows, offset, total):
        self.num_replicas = num_replicas
        self.replica_id = replica_id
        self.rows = rows
        self.offset = offset
        self.total = total


def _replica_layout(v):
    rows = ops.shape(v)[0]
    strategy = tf.distribute.get_strategy()
    ctx = tf.distribute.get_replica_context()
    n = strategy.num_replicas_in_sync
    if n == 1 or ctx is None:
        return _Layout(1, 0, rows, 0, ops.cast(rows, "float32"))
    sizes = ctx.all_gather(tf.shape(v)[:1], axis=0)
    replica_id = ctx.replica_id_in_sync_group
    offset = tf.reduce_sum(tf.where(tf.range(n) < replica_id, sizes, 0))
    return _Layout(n, replica_id, rows, offset, ops.cast(tf.reduce_sum(sizes), "float32"))


def _draw(fn, like, gen, layout=None):
    shape = ops.shape(like)
    if layout is None or layout.num_replicas == 1:
        return fn(shape, dtype=like.dtype, seed=gen)
    # Draw for the whole global batch and keep this replica's rows: the same
    # numbers a single device would use for them.
    total = ops.cast(layout.total, "int32")
    full = fn((total, shape[1]), dtype=like.dtype, seed=gen)
    return tf.slice(full, tf.stack([layout.offset, 0]), tf.stack([layout.rows, shape[1]]))


def _bernoulli(p, gen, layout=None):
    return ops.cast(_draw(keras.random.uniform, p, gen, layout) < p, p.dtype)


def _is_concrete(x):
    return not isinstance(x, keras.KerasTensor) and (
        isinstance(x, np.ndarray) or tf.executing_eagerly()
    )


# Every technique finds the RBM's kernel here: pruned, clustered and (QAT) fake-quantized.
layers_registry.register_layer(RBM, kernels=["kernel"], quantize=True)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")

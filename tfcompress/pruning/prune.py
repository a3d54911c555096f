"""Magnitude pruning of any Keras 3 model: `prune_low_magnitude` and friends.

The model is wrapped, not cloned: `PrunedModel` holds the user's model (any
Sequential, Functional, subclassed or nested model) plus one mask variable per
pruned weight, its own training-step counter `step` and the step of the last
mask update. The schedule reads `step`, not the optimizer's iteration count,
so a new optimizer (`compile` again, or `load_model` then `compile`) does not
restart the schedule and let pruned weights grow back. Pruned weights are kept
at exactly zero in the weight variables themselves:

- a mask update (every pruning turn of the schedule) multiplies each weight by
  its new mask, so the next forward pass only sees kept weights;
- every optimizer step is followed by the same multiply through the
  variable's constraint (Keras optimizers apply constraints after each update,
  in `fit`, custom loops and under `tf.distribute`), so momentum or Adam
  moments cannot revive a pruned weight.

Nothing is added to the forward pass, and replicas need no extra all-reduce:
each applies the same mask to its own copy.
"""

import contextlib
import dataclasses
import math
import numbers
import warnings

import keras
import tensorflow as tf

from tfcompress import _compat, layers_registry, surgery
from tfcompress._serialization import register
from tfcompress.pruning import masks as mask_lib
from tfcompress.pruning import schedules


def register_prunable_layer(layer_class, weight_names):
    """Deprecated: use `tfc.register_layer(layer_class, kernels=weight_names)`.

    Declares the weights of `layer_class` that pruning masks (only pruning:
    clustering and QAT leave the class alone, as before).

    Raises:
        ValueError: `layer_class` is not a Layer subclass or `weight_names` is empty.
    """
    warnings.warn(
        "register_prunable_layer is deprecated: use tfc.register_layer(cls, kernels=[...]), "
        "which every technique reads.",
        DeprecationWarning,
        stacklevel=2,
    )
    if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
        raise ValueError(
            f"`layer_class` must be a Layer subclass. Received: layer_class={layer_class}"
        )
    if isinstance(weight_names, str) or not weight_names:
        raise ValueError(
            "`weight_names` must be a non-empty list of names. "
            f"Received: weight_names={weight_names}"
        )
    layers_registry.register_layer(
        layer_class, kernels=list(weight_names), cluster=(), quantize=False
    )


def get_prunable_weights(layer):
    """The prunable variables of one layer (not of its sublayers).

    Args:
        layer: A Keras layer.

    Returns:
        A list of `keras.Variable`: from `layer.get_prunable_weights()` when the
        layer defines it (the tfmot protocol; the project's RBM returns
        `[kernel]`), else the kernels `tfc.layers_registry` marks prunable
        (a subclass that overrides `call` is not pruned unless registered);
        empty for other layers.
    """
    method = getattr(layer, "get_prunable_weights", None)
    if callable(method) and not isinstance(layer, keras.Model):
        return list(method())
    if getattr(layer, "quantization_mode", None):
        return []
    return [variable for _, variable in layers_registry.kernel_variables(layer, "prune")]


def _layer_types(model):
    return sorted(
        {
            type(x).__name__
            for x in surgery.all_layers(model)
            if not isinstance(x, keras.layers.InputLayer)
        }
    )


def _candidates(model):
    """All prunable (layer, ancestors, variable) of `model`, in a fixed order."""
    out, seen = [], set()
    for layer, ancestors in surgery.walk_with_ancestors(model):
        for variable in get_prunable_weights(layer):
            if id(variable) not in seen:
                seen.add(id(variable))
                out.append((layer, ancestors, variable))
    return out


def _weight_names(candidates):
    short = [f"{layer.name}/{variable.name}" for layer, _, variable in candidates]
    if len(set(short)) == len(short):
        return short
    return [variable.path for _, _, variable in candidates]


def _select(model, layers, exclude):
    """Indices into `_candidates(model)` chosen by `layers` minus `exclude`."""
    select = surgery.Selection(model, layers, exclude)
    return [
        i
        for i, (layer, ancestors, _) in enumerate(_candidates(model))
        if select(layer, ancestors)
    ]


def _known_input_shape(model):
    """The single input shape of a built model when it is known, else None."""
    inputs = getattr(model, "inputs", None)
    if inputs and len(inputs) == 1:
        return tuple(inputs[0].shape)
    shape = (model.get_build_config() or {}).get("input_shape")
    return None if shape is None else tuple(shape)


def _strategy_scope(variable):
    """The distribution scope the model's variables live in, so masks are mirrored too."""
    if tf.distribute.has_strategy():
        return contextlib.nullcontext()
    strategy = _compat.variable_strategy(variable)
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


class _MaskConstraint:
    """Variable constraint `w -> original(w) * mask`, run after each optimizer step."""

    def __init__(self, mask, original):
        self.mask = mask
        self.original = original

    def __call__(self, w):
        if self.original is not None:
            w = self.original(w)
        return keras.ops.multiply(w, keras.ops.cast(self.mask, w.dtype))


@dataclasses.dataclass(eq=False)
class _Target:
    name: str
    variable: object
    mask: object


class _Targets:
    """Plain holder so Keras does not track the wrapped model's variables twice."""

    def __init__(self, items):
        self.items = items


def _check_m_by_n(sparsity_m_by_n):
    if sparsity_m_by_n is None:
        return None
    ok = (
        isinstance(sparsity_m_by_n, (tuple, list))
        and len(sparsity_m_by_n) == 2
        and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in sparsity_m_by_n
        )
        and 0 < sparsity_m_by_n[0] < sparsity_m_by_n[1]
    )
    if not ok:
        raise ValueError(
            "`sparsity_m_by_n` must be (m, n) with 0 < m < n: keep m of every n weights. "
            f"Received: sparsity_m_by_n={sparsity_m_by_n}"
        )
    return tuple(int(v) for v in sparsity_m_by_n)


def _check_options(block_size, block_pooling_type, sparsity_m_by_n):
    block_size = mask_lib.check_block_size(block_size)
    mask_lib.check_pooling(block_pooling_type, "block_pooling_type")
    m_by_n = _check_m_by_n(sparsity_m_by_n)
    if m_by_n is not None and block_size != (1, 1):
        raise ValueError(
            "`sparsity_m_by_n` cannot be combined with block pruning. "
            f"Received: block_size={block_size}, sparsity_m_by_n={sparsity_m_by_n}"
        )
    return block_size, m_by_n


def _check_m_by_n_shapes(names, variables, m_by_n):
    if m_by_n is None:
        return
    n = m_by_n[1]
    for name, variable in zip(names, variables):
        shape = tuple(variable.shape)
        axis = len(shape) - 2 if len(shape) >= 2 else 0
        if shape[axis] % n:
            raise ValueError(
                f"`sparsity_m_by_n` groups {n} weights along axis {axis}, but weight {name!r} "
                f"has shape {shape}: not divisible. Exclude that layer or change n. "
                f"Received: sparsity_m_by_n={m_by_n}"
            )


@register
class PrunedModel(keras.Model):
    """A model whose selected weights are magnitude-pruned during training.

    Made by `prune_low_magnitude`; behaves as the wrapped model (same inputs,
    outputs, `fit`, `evaluate`, `save`). The masks, the training step `step`
    that the schedule reads and the step of the last mask update
    `pruning_step` are non-trainable weights of this model (one `step` per
    pruned model, not per layer). So a `.keras` file saved mid-training, or a
    `keras.callbacks.BackupAndRestore` backup, reloads (after `import
    tfcompress`) with the same masks and continues the schedule where it
    stopped, and so does `compile` with a new optimizer: the schedule never
    restarts at step 0 and pruned weights never grow back.

    `step` counts the optimizer steps this model has trained: `fit` (through
    `UpdatePruningStep`) adds the optimizer's progress after each batch. It is
    mirrored under `tf.distribute` like `optimizer.iterations` (aggregation
    "only_first_replica"), so every replica holds the same count. A `.keras`
    file saved before `step` existed still loads: its step is taken as the
    last mask update (`pruning_step`), or the restored optimizer's iteration
    count when that is larger, once training begins.

    Args:
        model: The Keras model to prune (built).
        pruning_schedule: Schedule object: `schedule(step) -> (should_prune, sparsity)`.
        block_size: `(rows, cols)` blocks pruned together; `(1, 1)` is unstructured.
        block_pooling_type: "AVG" or "MAX" magnitude of a block.
        sparsity_m_by_n: `(m, n)` to keep `m` of every `n` input weights (e.g. 2:4),
            or None.
        weight_indices: Positions, in the model's fixed traversal order of
            prunable weights, of the weights to prune; None for all.
        **kwargs: Passed to `keras.Model` (name, trainable, dtype).

    Raises:
        ValueError: bad options, an unbuilt model, or nothing to prune.

    With `block_size`, the number of blocks pruned is the nearest to the
    target and never all of a weight's blocks (`masks.num_blocks_to_prune`),
    so a weight no larger than one block stays dense.

    Example:
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
        >>> pm = PrunedModel(m, schedules.ConstantSparsity(0.5, 0, frequency=1))
        >>> pm.weight_names
        ['d/kernel']
    """

    def __init__(
        self,
        model,
        pruning_schedule,
        block_size=(1, 1),
        block_pooling_type="AVG",
        sparsity_m_by_n=None,
        weight_indices=None,
        **kwargs,
    ):
        block_size, m_by_n = _check_options(block_size, block_pooling_type, sparsity_m_by_n)
        if not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a keras.Model. Received: model={model}")
        if isinstance(model, PrunedModel):
            raise ValueError(f"`model` is already pruned. Received: model={model.name}")
        pruning_schedule = schedules.get(pruning_schedule)
        super().__init__(**kwargs)
        self.model = model
        self.pruning_schedule = pruning_schedule
        self.block_size = block_size
        self.block_pooling_type = block_pooling_type
        self.sparsity_m_by_n = m_by_n
        self.weight_indices = None if weight_indices is None else [int(i) for i in weight_indices]
        self._targets = _Targets([])
        self._update_fn = None
        self._step_from_optimizer = False
        if model.built:
            # Keras records the argument as this model's build config (exporters read it).
            self.build(_known_input_shape(model))

    def build(self, input_shape=None):
        if not self.model.built:
            if input_shape is None:
                raise ValueError(
                    "The model to prune is not built: call it on a batch or call "
                    f"`model.build(input_shape)` first. Received: model={self.model.name}"
                )
            self.model.build(input_shape)
        candidates = _candidates(self.model)
        names = _weight_names(candidates)
        indices = range(len(candidates)) if self.weight_indices is None else self.weight_indices
        if not candidates or not list(indices):
            found = _layer_types(self.model)
            raise ValueError(
                "Found no prunable weights to prune. Layer types found: "
                f"{found}. Prunable: Dense, EinsumDense, Conv*, DepthwiseConv*, SeparableConv*, "
                "Embedding, LSTM/GRU/SimpleRNN cells and layers with `get_prunable_weights()`; "
                "see `register_prunable_layer`. "
                f"Received: model={self.model.name}, weight_indices={self.weight_indices}"
            )
        if any(not 0 <= i < len(candidates) for i in indices) or len(set(indices)) < len(indices):
            raise ValueError(
                f"`weight_indices` must be distinct positions in [0, {len(candidates)}) of the "
                f"prunable weights {names}. Received: weight_indices={self.weight_indices}"
            )
        chosen = [(names[i], candidates[i][2]) for i in indices]
        _check_m_by_n_shapes([n for n, _ in chosen], [v for _, v in chosen], self.sparsity_m_by_n)
        items = []
        with _strategy_scope(chosen[0][1]):
            for i, (name, variable) in enumerate(chosen):
                mask = self.add_weight(
                    shape=variable.shape,
                    initializer="ones",
                    dtype=variable.dtype,
                    trainable=False,
                    name=f"mask_{i}",
                )
                items.append(_Target(name, variable, mask))
            self.pruning_step = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(-1),
                dtype="int64",
                trainable=False,
                name="pruning_step",
            )
            # Last, so that files saved without it keep the indices of the others.
            self.step = self.add_weight(
                shape=(),
                initializer="zeros",
                dtype="int64",
                trainable=False,
                aggregation="only_first_replica",
                name="step",
            )
        for target in items:
            target.variable.constraint = _MaskConstraint(target.mask, target.variable.constraint)
        self._targets = _Targets(items)
        self.built = True

    @property
    def weight_names(self):
        """Names of the pruned weights, e.g. `["dense/kernel"]`."""
        return [t.name for t in self._targets.items]

    @property
    def pruned_weights(self):
        """The pruned variables of the wrapped model."""
        return [t.variable for t in self._targets.items]

    @property
    def masks(self):
        """The mask variables, one per pruned weight (1 keep, 0 pruned)."""
        return [t.mask for t in self._targets.items]

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def new_mask(self, weights, sparsity):
        """The new mask of one weight at the given target sparsity."""
        if self.sparsity_m_by_n is not None:
            return mask_lib.m_by_n_mask(weights, *self.sparsity_m_by_n)
        if self.block_size != (1, 1):
            return mask_lib.block_mask(weights, sparsity, self.block_size, self.block_pooling_type)
        return mask_lib.magnitude_mask(weights, sparsity)

    def _update(self, step):
        step = tf.cast(step, tf.int64)
        if isinstance(self.pruning_schedule, schedules.PruningSchedule):
            # `fit` calls this once per `steps_per_execution` steps: catch up a skipped turn.
            step = tf.cast(self.pruning_schedule.last_turn(step), tf.int64)
            should_prune = step >= 0
            sparsity = self.pruning_schedule.sparsity(step)
        else:
            should_prune, sparsity = self.pruning_schedule(step)
        due = tf.logical_and(
            tf.logical_and(tf.cast(should_prune, tf.bool), step >= 0),
            tf.not_equal(step, self.pruning_step.value),
        )

        def prune():
            for target in self._targets.items:
                new_mask = self.new_mask(target.variable.value, sparsity)
                target.mask.assign(new_mask)
                target.variable.assign(target.variable.value * new_mask)
            self.pruning_step.assign(step)
            return tf.constant(True)

        return tf.cond(due, prune, lambda: tf.constant(False))

    def update_masks(self, step=None):
        """Updates the masks if the schedule prunes at `step`; returns whether it did.

        Call it before each training step in a custom training loop, and add
        one to `step` after it (`fit` does both through `UpdatePruningStep`):

            pm.update_masks()
            train_step(x, y)
            pm.step.assign_add(1)

        Pruned weights are zeroed at once. With a `PolynomialDecay` or
        `ConstantSparsity`, a pruning turn skipped since the last update (`fit`
        with `steps_per_execution > 1` calls this once per execution) is
        applied, at that turn's sparsity.

        Args:
            step: The training step (int >= 0 or integer tensor); by default
                this model's `step` variable. A given step is used as is and
                does not change `step`.

        Returns:
            A bool tensor: True when the masks were updated.

        Raises:
            ValueError: `step` is a negative or non-integer Python number.
        """
        if step is None:
            step = self.step
        elif isinstance(step, (numbers.Number, str)) and not (
            isinstance(step, numbers.Integral) and not isinstance(step, bool) and step >= 0
        ):
            raise ValueError(
                f"`step` must be an integer >= 0 or an integer tensor. Received: step={step!r}"
            )
        if self._update_fn is None:
            self._update_fn = tf.function(self._update, autograph=False)
        return self._update_fn(tf.convert_to_tensor(step, tf.int64))

    def load_own_variables(self, store):
        """Restores the weights; a file saved before `step` existed lacks only that one."""
        own = _compat.own_variables(self)
        step = getattr(self, "step", None)
        if not own or own[-1] is not step or len(store.keys()) != len(own) - 1:
            super().load_own_variables(store)
            return
        _compat.load_variables_from_store(own[:-1], store)
        # Never before the last mask update, so no turn is redone at a lower sparsity.
        self.step.assign(tf.maximum(self.pruning_step.value, 0))
        self._step_from_optimizer = True

    def _adopt_optimizer_step(self, iterations):
        """For a file saved before `step` existed: continue from the optimizer, if it is ahead."""
        if self._step_from_optimizer:
            self.step.assign(tf.maximum(self.step.value, _read(iterations)))
            self._step_from_optimizer = False

    def strip(self):
        """Removes the mask constraints and returns the wrapped model (weights already masked)."""
        for target in self._targets.items:
            constraint = target.variable.constraint
            if isinstance(constraint, _MaskConstraint):
                target.variable.constraint = constraint.original
        return self.model

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, adding `UpdatePruningStep` when it is not among the callbacks."""
        args, kwargs = with_update_step(self, args, kwargs)
        return super().fit(*args, **kwargs)

    def get_config(self):
        base_config = {"name": self.name, "trainable": self.trainable}
        config = {
            "model": keras.saving.serialize_keras_object(self.model),
            "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
            "block_size": list(self.block_size),
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": None if self.sparsity_m_by_n is None else list(self.sparsity_m_by_n),
            "weight_indices": self.weight_indices,
        }
        return {**base_config, **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(
            config["pruning_schedule"]
        )
        return cls(**config)


def _read(value):
    """The current value of a variable as a tensor: a copy, not the variable itself."""
    return tf.convert_to_tensor(value)


def pruned_models(model):
    """Every `PrunedModel` in `model`: itself, or nested (e.g. a distiller's student)."""
    found = [model] if isinstance(model, PrunedModel) else []
    return found + [
        layer for layer in _compat.flatten_layers(model) if isinstance(layer, PrunedModel)
    ]


class UpdatePruningStep(keras.callbacks.Callback):
    """Updates the masks before each training batch when the schedule says so.

    The step is each pruned model's own `step` variable: after every batch it
    grows by the optimizer steps the batch took (`steps_per_execution` of them
    at once), so it counts optimizer steps, not forward calls, and it is saved
    with the model. Several `fit` calls, `compile` with a new optimizer,
    `load_model` and `BackupAndRestore` all continue the schedule. When
    training ends, a mask update due at the next step is applied too, so
    `end_step = epochs * steps_per_epoch` (tfmot's recipe) ends exactly at the
    final sparsity. `PrunedModel.fit` and `Distiller.fit` (pruned student) add
    this callback by themselves when it is missing, and run it before the
    other callbacks, so a checkpoint saved at the end of a batch holds the
    step after it; pass it explicitly when another model that holds a pruned
    model is trained, first in the list.

    Raises:
        ValueError: at the start of training, when the model holds no pruned model.

    Example:
        >>> cb = UpdatePruningStep()  # pm.fit(x, y, callbacks=[cb])
    """

    def on_train_begin(self, logs=None):
        self._targets = pruned_models(self.model)
        if not self._targets:
            raise ValueError(
                "UpdatePruningStep needs a model made by `prune_low_magnitude`. "
                f"Received: model={self.model.name}"
            )
        for pruned in self._targets:
            pruned._adopt_optimizer_step(self.model.optimizer.iterations)

    def on_train_batch_begin(self, batch, logs=None):
        # A snapshot: the optimizer's progress over this batch is added to `step` at its end.
        self._iterations = _read(self.model.optimizer.iterations)
        for pruned in self._targets:
            pruned.update_masks()

    def on_train_batch_end(self, batch, logs=None):
        done = _read(self.model.optimizer.iterations) - self._iterations
        for pruned in self._targets:
            pruned.step.assign_add(done)

    def on_train_end(self, logs=None):
        # A mask due at the step after the last one (the usual `end_step =
        # epochs * steps_per_epoch`) is applied now, so fit ends at the target.
        self.on_train_batch_begin(None)


def with_update_step(model, args, kwargs):
    """`fit(*args, **kwargs)` arguments with an `UpdatePruningStep` for `model`.

    Added only when `model` holds a pruned model and the callbacks have no
    `UpdatePruningStep` yet: `PrunedModel.fit` and `Distiller.fit` use it, so a
    pruned model (or a distiller's pruned student) never trains unpruned by
    accident. The `UpdatePruningStep` is moved first, so the other callbacks
    (checkpoints, summaries) see the step after each batch.
    """
    if not pruned_models(model):
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
        callbacks.callbacks[:] = _update_step_first(callbacks.callbacks, model)
        return callbacks
    return _update_step_first(list(callbacks or []), model)


def _update_step_first(callbacks, model):
    ours = [c for c in callbacks if isinstance(c, UpdatePruningStep)]
    if not ours:
        ours = [UpdatePruningStep()]
        ours[0].set_model(model)
    return ours + [c for c in callbacks if not isinstance(c, UpdatePruningStep)]


def prune_low_magnitude(
    to_prune,
    pruning_schedule=None,
    block_size=(1, 1),
    block_pooling_type="AVG",
    sparsity_m_by_n=None,
    layers=None,
    exclude=None,
):
    """Wraps a model so that its weights are magnitude-pruned while it trains.

    Any built Keras model works: Sequential, Functional, subclassed, or one
    holding nested models (a Keras application inside a model). The model is
    not cloned: its own variables are pruned in place. Steps are counted by
    the pruned model's own `pm.step` variable (saved with it, so recompiling
    or reloading continues the schedule); `fit` adds `UpdatePruningStep`,
    which advances it, by itself when it is missing. For a custom training
    loop call `pm.update_masks()` before each step and `pm.step.assign_add(1)`
    after it. Biases are never pruned.

    Args:
        to_prune: A built `keras.Model`.
        pruning_schedule: A `PolynomialDecay`, `ConstantSparsity`, a tfmot
            schedule or any `schedule(step) -> (should_prune, sparsity)`;
            default `ConstantSparsity(0.5, begin_step=0, frequency=100)`.
        block_size: `(rows, cols)` pruned as a unit; `(1, 1)` for unstructured.
            The number of blocks pruned is the nearest to the target (see
            `masks.num_blocks_to_prune`) and never all blocks of a weight, so
            a weight no larger than one block is left whole (with a warning).
        block_pooling_type: "AVG" or "MAX": how a block's magnitude is pooled.
        sparsity_m_by_n: `(m, n)`, e.g. `(2, 4)`: keep `m` of every `n`
            consecutive input-channel weights at each pruning turn (the
            schedule then only decides when).
        layers: Which layers to prune: layer names, layer classes or a
            callable `layer -> bool`, or a list of these. A nested model
            selected by name prunes all its prunable layers. None for all.
        exclude: Layers to leave dense, in the same forms as `layers`.

    Returns:
        A `PrunedModel`.

    Raises:
        ValueError: `to_prune` is not a built model, is already pruned, has
            nothing prunable (the message lists what it holds), unknown layer
            names in `layers`/`exclude`, a bad `block_size` or
            `block_pooling_type`, `sparsity_m_by_n` with `m >= n` or a
            grouping dimension not divisible by `n`.

    Example:
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d")])
        >>> s = schedules.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=10, frequency=5)
        >>> pm = prune_low_magnitude(m, pruning_schedule=s)
        >>> bool(pm.update_masks(10))
        True
        >>> get_sparsity(strip_pruning(pm))
        {'d/kernel': 0.5}

    Reference:
        Zhu & Gupta 2017, "To prune, or not to prune", arXiv:1710.01878.
    """
    if isinstance(to_prune, PrunedModel):
        raise ValueError(f"The model is already pruned. Received: to_prune={to_prune.name}")
    if not isinstance(to_prune, keras.Model):
        raise ValueError(
            "`to_prune` must be a keras.Model; to prune some layers only, pass the model "
            f"and `layers=[...]`. Received: to_prune={to_prune}"
        )
    if not to_prune.built:
        raise ValueError(
            "The model to prune is not built: call it on a batch or call "
            f"`model.build(input_shape)` first. Received: to_prune={to_prune.name}"
        )
    _check_options(block_size, block_pooling_type, sparsity_m_by_n)
    if pruning_schedule is None:
        pruning_schedule = schedules.ConstantSparsity(0.5, begin_step=0, frequency=100)
    pruning_schedule = schedules.get(pruning_schedule)
    indices = _select(to_prune, layers, exclude)
    layers_registry.warn_overridden(surgery.all_layers(to_prune), "Pruning")
    if not indices:
        found = _layer_types(to_prune)
        raise ValueError(
            f"Found no prunable weights in the selection. Layer types found: {found}. "
            "Prunable: Dense, EinsumDense, Conv*, DepthwiseConv*, SeparableConv*, Embedding, "
            "LSTM/GRU/SimpleRNN cells and layers with `get_prunable_weights()`. "
            f"Received: layers={layers}, exclude={exclude}"
        )
    # Made in the strategy of the model's variables, so `fit` distributes as the model did.
    with _strategy_scope(to_prune.weights[0]):
        pruned = PrunedModel(
            to_prune,
            pruning_schedule,
            block_size=block_size,
            block_pooling_type=block_pooling_type,
            sparsity_m_by_n=sparsity_m_by_n,
            weight_indices=None if layers is None and exclude is None else indices,
            name=f"pruned_{to_prune.name}",
        )
    _warn_single_blocks(pruned)
    return pruned


def _warn_single_blocks(pruned):
    """Block pruning never prunes a whole weight: say so for weights that are one block."""
    if pruned.block_size == (1, 1):
        return
    rows, cols = pruned.block_size
    for name, variable in zip(pruned.weight_names, pruned.pruned_weights):
        shape = tuple(variable.shape)
        height = math.prod(shape[:-1]) if len(shape) > 1 else 1
        if height <= rows and shape[-1] <= cols:
            warnings.warn(
                f"`block_size` {pruned.block_size} covers all of weight {name!r} {shape}: "
                "it is one block, which block pruning never removes, so it stays dense. "
                "Use smaller blocks or exclude the layer.",
                stacklevel=3,
            )


def strip_pruning(model):
    """Returns the plain Keras model inside a pruned model, with identical outputs.

    The pruned weights are already zero in the variables, so only the mask
    constraints are removed; the result holds no tfcompress classes. Any other
    model is returned unchanged.

    Args:
        model: A `PrunedModel` (or any model).

    Returns:
        A plain `keras.Model`.

    Example:
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        >>> type(strip_pruning(prune_low_magnitude(m))).__name__
        'Sequential'
    """
    if isinstance(model, PrunedModel):
        return model.strip()
    return model


def get_sparsity(model):
    """Fraction of exact zeros of every prunable weight of `model`.

    Args:
        model: Any Keras model, pruned, stripped or not.

    Returns:
        `{weight name: fraction of zeros}`, e.g. `{"dense/kernel": 0.8}`.
    """
    if isinstance(model, PrunedModel):
        model = model.model
    candidates = _candidates(model)
    names = _weight_names(candidates)
    out = {}
    for name, (_, _, variable) in zip(names, candidates):
        values = variable.numpy()
        out[name] = float((values == 0).mean())
    return out

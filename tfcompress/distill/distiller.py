"""Knowledge distillation: train a small student to match a large teacher.

The `Distiller` is an ordinary `keras.Model` whose `call` is the student's
forward pass and whose `compute_loss` mixes the usual supervised loss with the
teacher's softened predictions (Hinton, Vinyals & Dean 2015), and optionally
with intermediate teacher features (FitNets, Romero et al. 2015). Only
`compute_loss` is overridden, so `fit`, `evaluate`, callbacks, mixed precision
and every `tf.distribute` strategy work unchanged.
"""

import copy
import math
import numbers
import threading

import keras
from keras import ops

from tfcompress._serialization import register
from tfcompress.distill.features import (
    feature_outputs,
    make_extractor,
    make_projections,
    normalize_pairs,
)
from tfcompress.distill.losses import batch_mean, resolve_loss, tempered_log_probs
from tfcompress.distill.outputs import (
    check_output_kind,
    check_same_input_shape,
    check_same_output_shape,
    check_static_shapes,
)

_OUTPUT_KINDS = ("logits", "probabilities")
_PROJECTIONS = ("auto", "dense", None)
_Y_KEYS = ("labels", "teacher")


def _num_replicas():
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


class _Stash(threading.local):
    """Per-thread hand-off of student features from `call` to `compute_loss`.

    MirroredStrategy runs each replica's step in its own thread, so the
    features must never be shared between threads.
    """

    outputs = None
    features = None


class _Extractors:
    """Plain holder so Keras neither tracks nor saves the feature extractor models."""

    def __init__(self, teacher=None, student=None):
        self.teacher = teacher
        self.student = student


@register
class Distiller(keras.Model):
    """A student model trained on labels and on a teacher's softened predictions.

    The training loss is

    .. math::

        L = \\alpha\\, L_{student}(y, z_s)
            + (1 - \\alpha)\\, T^2\\, D\\big(\\mathrm{softmax}(z_t / T),\\,
                                             \\mathrm{softmax}(z_s / T)\\big)
            + w_f \\sum_i \\mathrm{MSE}\\big(f^t_i,\\, P_i(f^s_i)\\big)

    where `z_t`, `z_s` are teacher and student logits, `D` is
    `distillation_loss_fn` (KL(teacher || student) by default), `T` the
    temperature and the last term the optional feature distillation through
    learned projections `P_i`. The `T^2` factor keeps the soft-target gradients
    at the same scale whatever the temperature. `D` always receives the two
    tempered probability distributions, whether it is given as a
    `keras.losses.KLDivergence` instance, as the string `"kl_divergence"` or as
    a function `fn(teacher_probs, student_probs)`.

    `call` returns the student's output, so `predict` and `evaluate` score the
    student, and `distiller.student` is the model to export. The teacher is
    made non-trainable on construction (the caller's model is changed) and
    always runs with `training=False`; it is never updated.

    Instead of a teacher model, precomputed teacher outputs may be fed as part
    of the targets: `fit(x, {"labels": y, "teacher": teacher_logits})`, or
    `fit(x, {"teacher": teacher_logits})` for pure distillation. The same
    dictionary also works with a teacher model, to reuse cached outputs.
    Without `student_loss_fn` and without labels the student learns from the
    teacher alone (pure distillation); the loss is then the last two terms.

    `save("distiller.keras")` stores the student, the teacher, alpha, the
    temperature, the losses and the Distiller's optimizer state; teacher and
    student come back uncompiled (their own optimizers are not restored).

    Logged metrics: `loss` (the total), `student_loss`, `distillation_loss`,
    `feature_loss` (with feature distillation) and the compiled metrics, which
    score the student on the labels.

    Under `tf.distribute` strategies the loss returned by `compute_loss` is
    divided by the number of replicas, like Keras' own losses, so one global
    batch gives the same gradients on 1 or N replicas.

    Args:
        student: the `keras.Model` to train; its output must have the teacher's
            shape.
        teacher: a trained `keras.Model`, or `None` when teacher outputs are
            fed with the targets.
        teacher_output: `"logits"` or `"probabilities"`: what the teacher (or
            the fed teacher outputs) returns. Checked against the teacher's last
            activation when the model exposes it.
        student_output: `"logits"` or `"probabilities"`, likewise for the student.
        feature_layers: optional list of `(teacher_layer_name,
            student_layer_name)` pairs whose outputs are matched by MSE (both
            models must be Functional or Sequential).
        projection: how student features are mapped to the teacher's width:
            `"auto"` (a learned `Dense` where the last dimensions differ, the
            identity where they agree), `"dense"` (always a learned `Dense`) or
            `None` (never; the shapes must agree).
        **kwargs: `keras.Model` arguments such as `name`.

    Raises:
        ValueError: if a model is not a `keras.Model`, the output kinds are
            unknown or contradict the models' last activations, the teacher's
            and student's input or output shapes differ, or a feature layer is missing or
            has an incompatible shape.

    Example:
        >>> import keras, numpy as np, tfcompress as tfc
        >>> teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        >>> d = tfc.Distiller(student=student, teacher=teacher)
        >>> d.compile(optimizer="adam", metrics=["accuracy"],
        ...           student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
        ...               from_logits=True),
        ...           distillation_loss_fn=keras.losses.KLDivergence(),
        ...           alpha=0.1, temperature=3)
        >>> x, y = np.ones((8, 4), "float32"), np.zeros((8,), "int32")
        >>> sorted(d.fit(x, y, epochs=1, verbose=0).history)
        ['accuracy', 'distillation_loss', 'loss', 'student_loss']

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network",
        2015. Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    """

    def __init__(
        self,
        student,
        teacher=None,
        teacher_output="logits",
        student_output="logits",
        feature_layers=None,
        projection="auto",
        **kwargs,
    ):
        if not isinstance(student, keras.Model):
            raise ValueError(f"`student` must be a keras.Model. Received: student={student!r}")
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise ValueError(
                f"`teacher` must be a keras.Model or None. Received: teacher={teacher!r}"
            )
        if teacher is student:
            raise ValueError(
                "`teacher` and `student` must be different models. "
                f"Received: teacher={teacher.name!r}, student={student.name!r}"
            )
        for name, kind in (("teacher_output", teacher_output), ("student_output", student_output)):
            if kind not in _OUTPUT_KINDS:
                raise ValueError(
                    f"`{name}` must be one of {_OUTPUT_KINDS}. Received: {name}={kind!r}"
                )
        if projection not in _PROJECTIONS:
            raise ValueError(
                f"`projection` must be one of {_PROJECTIONS}. Received: projection={projection!r}"
            )
        feature_layers = normalize_pairs(feature_layers)
        if feature_layers and teacher is None:
            raise ValueError(
                "Feature distillation needs a teacher model. "
                f"Received: teacher=None, feature_layers={feature_layers}"
            )
        if teacher is not None:
            check_output_kind(teacher, teacher_output, "teacher")
            check_same_input_shape(teacher, student)
            check_same_output_shape(teacher, student)
        check_output_kind(student, student_output, "student")
        teacher_features, student_features = feature_outputs(teacher, student, feature_layers)
        projections = make_projections(teacher_features, student_features, projection)

        super().__init__(**kwargs)
        if teacher is not None:
            teacher.trainable = False
        self.student = student
        self.teacher = teacher
        self.teacher_output = teacher_output
        self.student_output = student_output
        self.feature_layers = feature_layers
        self.projection = projection
        self.projections = projections
        self._extractors = _Extractors(
            make_extractor(teacher, teacher_features), make_extractor(student, student_features)
        )
        self._stash = _Stash()
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.feature_loss_tracker = (
            keras.metrics.Mean(name="feature_loss") if feature_layers else None
        )
        self.alpha = 0.1
        self.temperature = 3.0
        self.feature_weight = 1.0
        self.student_loss_fn = None
        self.distillation_loss_fn = "kl_divergence"
        self._student_loss = None
        self._distillation_loss = resolve_loss("kl_divergence", "distillation_loss_fn")
        if student.built and (teacher is None or teacher.built):
            self.built = True

    def build(self, input_shape):
        # A symbolic call builds subclassed models too (their own `build` may be Keras' default).
        inputs = keras.KerasTensor(input_shape)
        if not self.student.built:
            self.student(inputs)
        if self.teacher is not None and not self.teacher.built:
            self.teacher(inputs)
        self.built = True

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`; with a pruned student (`tfc.pruning.prune_low_magnitude`) it
        adds `tfc.pruning.UpdatePruningStep` when the callbacks lack it."""
        from tfcompress.pruning.callbacks import with_update_step

        args, kwargs = with_update_step(self, args, kwargs)
        return super().fit(*args, **kwargs)

    def compile(
        self,
        optimizer="adam",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn="kl_divergence",
        alpha=0.1,
        temperature=3.0,
        feature_weight=1.0,
        **kwargs,
    ):
        """Configures training.

        Args:
            optimizer: any Keras optimizer or its name; it trains the student
                (and the feature projections).
            metrics: metrics of the student's output against the labels.
            student_loss_fn: supervised loss of the student on the labels: a
                `keras.losses.Loss` averaging over the batch, a loss name or a
                function `fn(y_true, y_pred)`. `None` trains on the teacher alone.
            distillation_loss_fn: divergence between the tempered teacher and
                student distributions, called as `fn(teacher_probs,
                student_probs)`: a `keras.losses.Loss`, a loss name (default
                `"kl_divergence"`) or a function.
            alpha: weight of the student loss in [0, 1]; the distillation term
                gets `1 - alpha`.
            temperature: softmax temperature T > 0; the distillation term is
                multiplied by T^2.
            feature_weight: weight (>= 0) of the feature-distillation MSE.
            **kwargs: other `keras.Model.compile` arguments (not `loss`).

        Raises:
            ValueError: for alpha outside [0, 1], temperature <= 0, a negative
                feature weight, an unknown loss, a cross-entropy given by name for
                a logits student, or a `loss` argument.
        """
        if "loss" in kwargs:
            raise ValueError(
                "Pass the supervised loss as `student_loss_fn`, not `loss`. "
                f"Received: loss={kwargs['loss']!r}"
            )
        if not _is_real(alpha) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be a number in [0, 1]. Received: alpha={alpha}")
        if not _is_real(temperature) or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(
                f"`temperature` must be a finite number > 0. Received: temperature={temperature}"
            )
        if not _is_real(feature_weight) or not 0.0 <= feature_weight < math.inf:
            raise ValueError(
                f"`feature_weight` must be a finite number >= 0. "
                f"Received: feature_weight={feature_weight}"
            )
        if (
            isinstance(student_loss_fn, str)
            and self.student_output == "logits"
            and "crossentropy" in student_loss_fn.lower().replace("_", "")
        ):
            # A cross-entropy by name expects probabilities: on logits it is silently wrong.
            raise ValueError(
                "The student outputs logits, but a cross-entropy given by name expects "
                "probabilities; pass an instance with `from_logits=True`, e.g. "
                "`keras.losses.SparseCategoricalCrossentropy(from_logits=True)`. "
                f"Received: student_loss_fn={student_loss_fn!r}"
            )
        student_loss = (
            None if student_loss_fn is None else resolve_loss(student_loss_fn, "student_loss_fn")
        )
        if distillation_loss_fn is None:
            raise ValueError(
                "`distillation_loss_fn` is required. Received: distillation_loss_fn=None"
            )
        distillation_loss = resolve_loss(distillation_loss_fn, "distillation_loss_fn")
        optimizer = keras.optimizers.get(optimizer)

        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)
        self.student_loss_fn = student_loss_fn
        self.distillation_loss_fn = distillation_loss_fn
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.feature_weight = float(feature_weight)
        self._student_loss = student_loss
        self._distillation_loss = distillation_loss
        self._distiller_compile_config = dict(
            optimizer=optimizer,
            metrics=metrics,
            student_loss_fn=student_loss_fn,
            distillation_loss_fn=distillation_loss_fn,
            alpha=self.alpha,
            temperature=self.temperature,
            feature_weight=self.feature_weight,
            **kwargs,
        )

    def call(self, inputs, training=None):
        extractor = self._extractors.student
        if extractor is None:
            return self.student(inputs, training=training)
        *features, outputs = extractor(inputs, training=training)
        self._stash.outputs, self._stash.features = outputs, features
        return outputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The distillation loss of one (per-replica) batch.

        Args:
            x: input batch.
            y: labels, a dict `{"labels": ..., "teacher": ...}` with precomputed
                teacher outputs, or `None` for pure distillation.
            y_pred: the student's output on `x` (computed when `None`).
            sample_weight: optional per-sample weights, applied to every term.
            training: whether the student runs in training mode.

        Returns:
            The scalar total loss, divided by the number of replicas in sync.

        Raises:
            ValueError: if `y` is a dict with unknown keys, the labels needed
                by `student_loss_fn` are missing, teacher outputs are missing
                without a teacher model, or their shape differs from the
                student's.
        """
        labels, fed_teacher = _split_targets(y)
        sample_weight = _single_weight(sample_weight)
        if self._student_loss is not None and labels is None:
            raise ValueError(
                "`student_loss_fn` is set, so labels are required; pass "
                "`student_loss_fn=None` to distil from the teacher alone. Received: y=None"
            )
        if fed_teacher is None and self.teacher is None:
            raise ValueError(
                "This Distiller has no teacher model: pass the teacher's outputs as "
                f"y={{'labels': labels, 'teacher': teacher_outputs}}. Received: y={y!r}"
            )
        if y_pred is None:
            y_pred = self(x, training=training)
        student_features = self._student_features(x, y_pred, training)
        teacher_outputs, teacher_features = self._teacher_outputs(x, fed_teacher)
        check_static_shapes(teacher_outputs, y_pred)

        zero = ops.zeros((), "float32")
        student_loss = zero
        if self._student_loss is not None:
            student_loss = batch_mean(
                self._student_loss(labels, ops.cast(y_pred, "float32")), sample_weight
            )
        distillation_loss = self._soft_target_loss(teacher_outputs, y_pred, sample_weight)
        total = self.alpha * student_loss + (1.0 - self.alpha) * distillation_loss
        feature_loss = zero
        if self.feature_layers:
            feature_loss = self._feature_loss(teacher_features, student_features, sample_weight)
            total = total + self.feature_weight * feature_loss
        for extra in self.student.losses + [
            loss for layer in self.projections if layer is not None for loss in layer.losses
        ]:
            total = total + ops.cast(ops.sum(extra), "float32")

        batch = ops.shape(y_pred)[0]
        self.student_loss_tracker.update_state(student_loss, sample_weight=batch)
        self.distillation_loss_tracker.update_state(distillation_loss, sample_weight=batch)
        if self.feature_loss_tracker is not None:
            self.feature_loss_tracker.update_state(feature_loss, sample_weight=batch)
        replicas = _num_replicas()
        return total / replicas if replicas > 1 else total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels, _ = _split_targets(y)
        if labels is not None:
            return super().compute_metrics(x, labels, y_pred, _single_weight(sample_weight))
        return self.get_metrics_result()

    def get_metrics_result(self):
        # In pure distillation the compiled metrics never see labels and stay unbuilt.
        results = {}
        for metric in self.metrics:
            if not getattr(metric, "built", True):
                continue
            value = metric.result()
            results.update(value if isinstance(value, dict) else {metric.name: value})
        return results

    def _soft_target_loss(self, teacher_outputs, student_outputs, sample_weight):
        t = self.temperature
        teacher_probs = ops.exp(tempered_log_probs(teacher_outputs, self.teacher_output, t))
        student_probs = ops.exp(tempered_log_probs(student_outputs, self.student_output, t))
        values = self._distillation_loss(ops.stop_gradient(teacher_probs), student_probs)
        return (t * t) * batch_mean(values, sample_weight)

    def _feature_loss(self, teacher_features, student_features, sample_weight):
        total = ops.zeros((), "float32")
        for target, feature, projection in zip(
            teacher_features, student_features, self.projections
        ):
            if projection is not None:
                feature = projection(feature)
            error = ops.square(
                ops.cast(feature, "float32") - ops.stop_gradient(ops.cast(target, "float32"))
            )
            axes = tuple(range(1, len(error.shape)))
            per_sample = ops.mean(error, axis=axes) if axes else error
            total = total + batch_mean(per_sample, sample_weight)
        return total

    def _student_features(self, x, y_pred, training):
        if self._extractors.student is None:
            return []
        if self._stash.outputs is y_pred:
            return self._stash.features
        # `y_pred` came from elsewhere (e.g. a direct compute_loss call): recompute.
        *features, _ = self._extractors.student(x, training=training)
        return features

    def _teacher_outputs(self, x, fed_teacher):
        extractor = self._extractors.teacher
        if extractor is not None:
            *features, outputs = extractor(x, training=False)
        else:
            features = []
            outputs = self.teacher(x, training=False) if fed_teacher is None else None
        if fed_teacher is not None:
            outputs = fed_teacher
        return ops.stop_gradient(outputs), [ops.stop_gradient(f) for f in features]

    def get_config(self):
        config = {
            "student": _serialize_model(self.student),
            "teacher": None if self.teacher is None else _serialize_model(self.teacher),
            "teacher_output": self.teacher_output,
            "student_output": self.student_output,
            "feature_layers": [list(pair) for pair in self.feature_layers],
            "projection": self.projection,
        }
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        if config.get("teacher") is not None:
            config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)

    def get_compile_config(self):
        if self.compiled and hasattr(self, "_distiller_compile_config"):
            return keras.saving.serialize_keras_object(self._distiller_compile_config)
        return {}

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)


def _serialize_model(model):
    # Without the model's own compile config: the Distiller trains with its own optimizer, and
    # a reloaded teacher compiled with an unbuilt optimizer would skip (and warn about) the
    # saved optimizer variables of a teacher that was trained before distillation.
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _split_targets(y):
    if not isinstance(y, dict):
        return y, None
    unknown = sorted(set(y) - set(_Y_KEYS))
    if unknown:
        raise ValueError(
            f"A dict of targets may only have the keys {_Y_KEYS}. Received: y keys={sorted(y)}"
        )
    return y.get("labels"), y.get("teacher")


def _single_weight(sample_weight):
    # Keras copies one sample-weight array onto every entry of a dict of targets.
    if isinstance(sample_weight, dict):
        return sample_weight.get("labels", next(iter(sample_weight.values()), None))
    return sample_weight

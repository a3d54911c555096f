"""Pruning schedules: when to update the masks and to what sparsity.

A schedule is called with the training step (the optimizer's iteration count)
and returns `(should_prune, sparsity)` as tensors, like tfmot's schedules, so
either kind can drive `prune_low_magnitude`. Unlike tfmot, a schedule with a
finite `end_step` always prunes at `end_step` itself, so the final sparsity is
reached exactly whatever `frequency` is, and `begin_step == end_step` means a
one-shot prune at that step.
"""

import math
import numbers

import keras
from keras import ops

from tfcompress._serialization import register


def _check_sparsity(name, value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value}")


def _check_int(name, value, minimum):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value}")


def _check_steps(begin_step, end_step, frequency, allow_open_end):
    _check_int("begin_step", begin_step, 0)
    _check_int("frequency", frequency, 1)
    if allow_open_end and end_step == -1:
        return
    _check_int("end_step", end_step, 0)
    if end_step < begin_step:
        raise ValueError(
            f"`end_step` must be >= `begin_step` (begin_step={begin_step}). "
            f"Received: end_step={end_step}"
        )


class PruningSchedule:
    """Base class: `schedule(step) -> (should_prune, sparsity)`.

    Subclasses set `begin_step`, `end_step` (-1 for never) and `frequency` and
    implement `sparsity(step)`. The pruning turns are every `frequency` steps
    from `begin_step` up to `end_step`, plus `end_step` itself.
    """

    def should_prune(self, step):
        """Boolean tensor: True when the masks are updated at `step`."""
        step = ops.cast(step, "int64")
        begin, end = self.begin_step, self.end_step
        in_range = step >= begin
        if end != -1:
            in_range = ops.logical_and(in_range, step <= end)
        turn = ops.equal(ops.mod(step - begin, self.frequency), 0)
        if end != -1:
            turn = ops.logical_or(turn, ops.equal(step, end))
        return ops.logical_and(in_range, turn)

    def last_turn(self, step):
        """Int64 tensor: the latest pruning turn at or before `step`, or -1 before any.

        `PrunedModel` prunes at this turn when it has not yet, so a turn that
        falls between two calls (`steps_per_execution > 1`) is caught up.
        """
        step = ops.cast(step, "int64")
        turn = step - ops.mod(step - self.begin_step, self.frequency)
        if self.end_step != -1:
            turn = ops.where(step >= self.end_step, self.end_step, turn)
        return ops.where(step >= self.begin_step, turn, -1)

    def __call__(self, step):
        return self.should_prune(step), self.sparsity(step)

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register
class PolynomialDecay(PruningSchedule):
    r"""Sparsity rising from `initial_sparsity` to `final_sparsity` polynomially.

    .. math::
        s(t) = s_f + (s_i - s_f)\,(1 - p)^{power},\qquad
        p = \mathrm{clip}\left(\frac{t - t_0}{t_1 - t_0}, 0, 1\right)

    with `p = 1` for `t >= t_0` when `begin_step == end_step`. Masks are updated
    every `frequency` steps in `[begin_step, end_step]` and at `end_step`.

    Args:
        initial_sparsity: Sparsity in [0, 1) at `begin_step`.
        final_sparsity: Sparsity in [0, 1) reached exactly at `end_step`.
        begin_step: First step (optimizer iteration) that prunes, >= 0.
        end_step: Step at which `final_sparsity` is reached, >= `begin_step`.
        power: Exponent of the decay, > 0 (3 in Zhu & Gupta).
        frequency: Steps between mask updates, >= 1.

    Returns:
        Called with a step, `(should_prune, sparsity)`: a bool and a float32 tensor.

    Raises:
        ValueError: a sparsity outside [0, 1), `end_step < begin_step`,
            `frequency < 1`, a negative `begin_step` or a `power` that is not
            a finite number > 0.

    Example:
        >>> s = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, frequency=10)
        >>> [round(float(s(t)[1]), 4) for t in (0, 50, 100)]
        [0.0, 0.7, 0.8]

    Reference:
        Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of
        pruning for model compression", arXiv:1710.01878.
    """

    def __init__(
        self, initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100
    ):
        _check_sparsity("initial_sparsity", initial_sparsity)
        _check_sparsity("final_sparsity", final_sparsity)
        _check_steps(begin_step, end_step, frequency, allow_open_end=False)
        if (
            not isinstance(power, numbers.Real) or isinstance(power, bool)
            or not math.isfinite(power) or power <= 0
        ):
            raise ValueError(f"`power` must be a finite number > 0. Received: power={power!r}")
        self.initial_sparsity = float(initial_sparsity)
        self.final_sparsity = float(final_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.power = power
        self.frequency = int(frequency)

    def sparsity(self, step):
        """Float32 target sparsity at `step`."""
        step = ops.cast(step, "float64")
        span = max(self.end_step - self.begin_step, 1)
        p = ops.clip((step - self.begin_step) / span, 0.0, 1.0)
        if self.end_step == self.begin_step:
            p = ops.cast(step >= self.begin_step, "float64")
        value = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * ops.power(
            1.0 - p, float(self.power)
        )
        return ops.cast(value, "float32")

    def get_config(self):
        return {
            "initial_sparsity": self.initial_sparsity,
            "final_sparsity": self.final_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "power": self.power,
            "frequency": self.frequency,
        }


@register
class ConstantSparsity(PruningSchedule):
    """One target sparsity, applied every `frequency` steps from `begin_step`.

    Args:
        target_sparsity: Sparsity in [0, 1).
        begin_step: First step (optimizer iteration) that prunes, >= 0.
        end_step: Last step that prunes, >= `begin_step`, or -1 for no end.
        frequency: Steps between mask updates, >= 1.

    Returns:
        Called with a step, `(should_prune, sparsity)`: a bool and a float32 tensor.

    Raises:
        ValueError: `target_sparsity` outside [0, 1), `end_step < begin_step`
            (other than -1), `frequency < 1` or a negative `begin_step`.

    Example:
        >>> s = ConstantSparsity(0.5, begin_step=10, frequency=5)
        >>> [bool(s(t)[0]) for t in (5, 10, 12, 15)]
        [False, True, False, True]

    Reference:
        Han, Pool, Tran & Dally 2015, "Learning both weights and connections
        for efficient neural networks", NeurIPS.
    """

    def __init__(self, target_sparsity, begin_step, end_step=-1, frequency=100):
        _check_sparsity("target_sparsity", target_sparsity)
        _check_steps(begin_step, end_step, frequency, allow_open_end=True)
        self.target_sparsity = float(target_sparsity)
        self.begin_step = int(begin_step)
        self.end_step = int(end_step)
        self.frequency = int(frequency)

    def sparsity(self, step):
        """Float32 target sparsity (constant)."""
        del step
        return ops.convert_to_tensor(self.target_sparsity, "float32")

    def get_config(self):
        return {
            "target_sparsity": self.target_sparsity,
            "begin_step": self.begin_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
        }


_TFMOT_NAMES = {"PolynomialDecay": PolynomialDecay, "ConstantSparsity": ConstantSparsity}


def get(schedule):
    """Returns a tfcompress schedule for `schedule`, or the callable itself.

    tfmot's `PolynomialDecay` and `ConstantSparsity` objects are converted
    through their config (same arguments, so they serialize with the model);
    any other object with `__call__(step) -> (should_prune, sparsity)` is used
    as is.

    Raises:
        ValueError: `schedule` is not callable.
    """
    if isinstance(schedule, PruningSchedule):
        return schedule
    if isinstance(schedule, dict):
        return keras.saving.deserialize_keras_object(schedule)
    name = type(schedule).__name__
    if name in _TFMOT_NAMES and hasattr(schedule, "get_config"):
        config = schedule.get_config()
        return _TFMOT_NAMES[name](**config.get("config", config))
    if not callable(schedule):
        raise ValueError(
            "`pruning_schedule` must be a schedule object called as "
            f"`schedule(step) -> (should_prune, sparsity)`. Received: pruning_schedule={schedule}"
        )
    return schedule

"""Loss helpers of the Distiller: resolving user losses, batch means, tempered softmax."""

import keras
from keras import ops

_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "none", None)
# Probabilities are clipped before the log so a hard 0 from a softmax teacher
# gives a finite (very negative) logit rather than -inf.
_EPSILON = 1e-7


def resolve_loss(loss, argument):
    """Turns a loss string/instance/function into a callable giving per-sample values."""
    if isinstance(loss, keras.losses.Loss):
        reduction = getattr(loss, "reduction", None)
        if reduction not in _MEAN_REDUCTIONS:
            raise ValueError(
                f"`{argument}` must average over the batch (reduction "
                f"'sum_over_batch_size'): the Distiller reduces it itself so that "
                f"it scales correctly across replicas. Received: {argument}={loss!r} "
                f"with reduction={reduction!r}"
            )
        return loss.call
    if isinstance(loss, str):
        try:
            resolved = keras.losses.get(loss)
        except ValueError as error:
            raise ValueError(
                f"`{argument}` is not a known Keras loss. Received: {argument}={loss!r}"
            ) from error
        # A class name ("KLDivergence") gives a batch-reducing Loss instance:
        # use its per-sample values, as for an instance passed directly.
        if isinstance(resolved, keras.losses.Loss):
            return resolve_loss(resolved, argument)
        return resolved
    if callable(loss):
        return loss
    raise ValueError(
        f"`{argument}` must be a keras.losses.Loss, a loss name or a function. "
        f"Received: {argument}={loss!r}"
    )


def batch_mean(values, sample_weight):
    """Mean of per-sample loss values over this replica's batch (Keras semantics)."""
    values = ops.cast(values, "float32")
    if len(values.shape) == 0:
        return values
    if sample_weight is not None:
        weight = ops.cast(sample_weight, "float32")
        while len(weight.shape) < len(values.shape):
            weight = ops.expand_dims(weight, -1)
        while len(weight.shape) > len(values.shape):
            weight = ops.squeeze(weight, -1)
        values = values * weight
    return ops.mean(values)


def tempered_log_probs(outputs, kind, temperature):
    """log softmax(z / T), where z are logits or log-probabilities."""
    outputs = ops.cast(outputs, "float32")
    if kind == "probabilities":
        outputs = ops.log(ops.clip(outputs, _EPSILON, 1.0))
    return ops.log_softmax(outputs / temperature, axis=-1)

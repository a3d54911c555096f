"""Checks of teacher and student outputs: kind (logits/probabilities) and shape."""

import keras

from tfcompress import _compat


def _is_softmax(layer):
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def _is_linear(layer):
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "linear"


def _output_layer(model):
    """The layer producing a Functional/Sequential model's single output, if knowable."""
    outputs = symbolic_outputs(model)
    if outputs is None or len(outputs) != 1:
        return None
    history = _compat.keras_history(outputs[0])
    return getattr(history, "operation", None) if history is not None else None


def symbolic_outputs(model):
    """The flat list of a model's symbolic outputs, or None (e.g. a subclassed model)."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if outputs is None:
        return None
    return list(keras.tree.flatten(outputs))


def check_output_kind(model, kind, role):
    """Raises if a model's last activation contradicts the declared output kind."""
    layer = _output_layer(model)
    if layer is None:
        return
    if kind == "logits" and _is_softmax(layer):
        raise ValueError(
            f"The {role} ends in a softmax, so it returns probabilities; pass "
            f"`{role}_output='probabilities'` or remove the softmax. "
            f"Received: {role}_output={kind!r}"
        )
    if kind == "probabilities" and _is_linear(layer):
        raise ValueError(
            f"The {role} ends in a linear layer, so it returns logits; pass "
            f"`{role}_output='logits'`. Received: {role}_output={kind!r}"
        )


def check_same_output_shape(teacher, student):
    """Raises unless teacher and student have one output each, of the same shape."""
    t_outputs, s_outputs = symbolic_outputs(teacher), symbolic_outputs(student)
    if t_outputs is None or s_outputs is None:
        return
    if len(t_outputs) != 1 or len(s_outputs) != 1:
        raise ValueError(
            "Teacher and student must each have exactly one output. Received: "
            f"teacher outputs={len(t_outputs)}, student outputs={len(s_outputs)}"
        )
    t_shape, s_shape = tuple(t_outputs[0].shape[1:]), tuple(s_outputs[0].shape[1:])
    if t_shape != s_shape:
        raise ValueError(
            "Teacher and student outputs must have the same shape. Received: "
            f"teacher output shape={t_shape}, student output shape={s_shape}"
        )


def _input_shapes(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    return [tuple(t.shape[1:]) for t in keras.tree.flatten(inputs)]


def _shown(shapes):
    return shapes[0] if len(shapes) == 1 else shapes


def check_same_input_shape(teacher, student):
    """Raises when teacher and student cannot both take the same `x` (known shapes differ)."""
    t_shapes, s_shapes = _input_shapes(teacher), _input_shapes(student)
    if t_shapes is None or s_shapes is None:
        return
    compatible = len(t_shapes) == len(s_shapes) and all(
        len(t) == len(s) and all(a is None or b is None or a == b for a, b in zip(t, s))
        for t, s in zip(t_shapes, s_shapes)
    )
    if not compatible:
        raise ValueError(
            "Teacher and student are fed the same `x`, so they must take inputs of the same "
            f"shape. Received: teacher input shape={_shown(t_shapes)}, "
            f"student input shape={_shown(s_shapes)}"
        )


def check_static_shapes(teacher_outputs, student_outputs):
    """Raises if two output tensors' known (static) shapes differ."""
    t_shape, s_shape = tuple(teacher_outputs.shape[1:]), tuple(student_outputs.shape[1:])
    if None in t_shape or None in s_shape:
        return
    if t_shape != s_shape:
        raise ValueError(
            "Teacher and student outputs must have the same shape. Received: "
            f"teacher output shape={t_shape}, student output shape={s_shape}"
        )

"""Feature distillation (FitNets): named layer outputs, projections and extractor models."""

import keras

from tfcompress.distill.outputs import symbolic_outputs


def normalize_pairs(feature_layers):
    """`feature_layers` as a tuple of (teacher_name, student_name) pairs, validated."""
    if feature_layers is None:
        return ()
    try:
        pairs = tuple(tuple(pair) for pair in feature_layers)
    except TypeError:
        pairs = None
    if pairs is None or not all(
        len(pair) == 2 and all(isinstance(name, str) for name in pair) for pair in pairs
    ):
        raise ValueError(
            "`feature_layers` must be a list of (teacher_layer_name, student_layer_name) "
            f"pairs. Received: feature_layers={feature_layers!r}"
        )
    return pairs


def feature_outputs(teacher, student, feature_layers):
    """Symbolic outputs of the named layers, validated."""
    if not feature_layers:
        return [], []
    for model, role in ((teacher, "teacher"), (student, "student")):
        # Checked before any layer name, so a subclassed model gets this message.
        if symbolic_outputs(model) is None:
            raise ValueError(
                f"Feature distillation needs a Functional or Sequential {role}. "
                f"Received: {role}={model.name!r}"
            )
    teacher_features, student_features = [], []
    for t_name, s_name in feature_layers:
        teacher_features.append(_layer_output(teacher, t_name, "teacher"))
        student_features.append(_layer_output(student, s_name, "student"))
    return teacher_features, student_features


def _layer_output(model, name, role):
    try:
        layer = model.get_layer(name)
    except ValueError as error:
        raise ValueError(
            f"The {role} has no layer named {name!r}. Received: feature_layers entry {name!r}"
        ) from error
    return layer.output


def make_projections(teacher_features, student_features, projection):
    """One built `Dense` projection (or None for the identity) per feature pair."""
    projections = []
    for target, feature in zip(teacher_features, student_features):
        t_shape, s_shape = tuple(target.shape[1:]), tuple(feature.shape[1:])
        if t_shape[:-1] != s_shape[:-1]:
            raise ValueError(
                "Feature layers must agree on every axis but the last. Received: "
                f"teacher feature shape={t_shape}, student feature shape={s_shape}"
            )
        if projection == "dense" or (projection == "auto" and t_shape != s_shape):
            dense = keras.layers.Dense(t_shape[-1], use_bias=False)
            dense.build((None,) + s_shape)
            projections.append(dense)
        elif t_shape != s_shape:
            raise ValueError(
                "Feature shapes differ and `projection=None` forbids a projection. "
                f"Received: teacher feature shape={t_shape}, student feature shape={s_shape}"
            )
        else:
            projections.append(None)
    return projections


def make_extractor(model, features):
    """A model returning `[*features, output]` of `model`, or None without features."""
    if model is None or not features:
        return None
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, [*features, *symbolic_outputs(model)])

"""Keras 3 model -> float TFLite bytes: the converter step every export shares.

`tfcompress.export.to_tflite` adds validation, quantization and atomic
writing on top; the file-level quantizers (`tfcompress.quantization.precision`)
start from the float file made here.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from tfcompress import _compat, _tempfiles
from tfcompress._tracing import export_trace


def input_spec(model, representative_data=None):
    """The `tf.TensorSpec` of a model's single input, batch dimension left free.

    Args:
        model: a built `keras.Model` with one input. A subclassed model has no
            `inputs`: the shape it was built with is used.
        representative_data: inputs to take the shape from when the model
            knows none (optional).

    Returns:
        A `tf.TensorSpec` of shape `(None, ...)`.

    Raises:
        ValueError: if the model has several inputs, or no known input shape
            and no `representative_data`.
    """
    inputs = getattr(model, "inputs", None)
    if inputs:
        if len(inputs) != 1:
            raise ValueError(
                "to_tflite supports single-input models. "
                f"Received: a model with {len(inputs)} inputs"
            )
        shape, dtype = tuple(inputs[0].shape), inputs[0].dtype
    else:
        build_config = model.get_build_config() or {}
        if build_config.get("input_shape") is not None:
            shape = tuple(build_config["input_shape"])
        elif representative_data is not None:
            shape = (None,) + tuple(np.shape(representative_data)[1:])
        else:
            raise ValueError(
                "The model has no known input shape: build it first (call it on data or "
                f"`model.build(input_shape)`). Received: model={model.name!r} (built={model.built})"
            )
        dtype = "float32"
    return tf.TensorSpec((None,) + tuple(shape[1:]), dtype=dtype)


def convert(model, spec, configure=None):
    """`model` as TFLite bytes, through a temporary SavedModel of one `serve` endpoint.

    `configure(converter)` may set the converter's quantization options
    (`tfcompress.export.to_tflite` does); without it the file is float.

    Going through Keras' own ExportArchive freezes the Keras 3 variables into
    constants for every model kind (a bare concrete function leaves them as
    uninitialised resource variables in the file).
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    with _tempfiles.temporary_directory("tfc-export-") as saved_model:
        with float32_compute(model), export_trace():
            archive.add_endpoint(
                "serve", lambda x: model(x, training=False), input_signature=[spec]
            )
            archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        if configure is not None:
            configure(converter)
        return bytes(converter.convert())


@contextlib.contextmanager
def float32_compute(model):
    """Traces a mixed-precision model in float32.

    TFLite's builtin kernels have no float16/bfloat16 MATMUL, ADD or LOGISTIC,
    so a `mixed_float16` graph does not convert. The variables of a mixed
    policy are float32 already; computing in float32 for the trace gives the
    float model the weights describe (quantize it further with `quantization`).
    """
    float32 = keras.DTypePolicy("float32")
    saved = []
    for layer in [model, *_compat.flatten_layers(model)]:
        policy = _compat.dtype_policy(layer)
        mixed = getattr(policy, "compute_dtype", "float32") != getattr(
            policy, "variable_dtype", "float32"
        )
        if mixed and getattr(policy, "quantization_mode", None) is None:
            saved.append((layer, policy))
            _compat.set_dtype_policy(layer, float32)
    try:
        yield
    finally:
        for layer, policy in saved:
            _compat.set_dtype_policy(layer, policy)

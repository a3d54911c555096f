"""Keras 3 model -> float TFLite bytes: the converter step every export shares.

`tfcompress.export.to_tflite` adds validation, quantization and atomic
writing on top; the file-level quantizers (`tfcompress.quantization.precision`)
start from the float file made here.
"""

import contextlib
import functools
import uuid
import warnings

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


def convert(model, spec, configure=None, recurrent="unrolled"):
    """`model` as TFLite bytes, through a temporary SavedModel of one `serve` endpoint.

    `configure(converter)` may set the converter's quantization options
    (`tfcompress.export.to_tflite` does); without it the file is float.
    `recurrent="fused"` traces the LSTM layers TFLite can fuse as its
    UNIDIRECTIONAL_SEQUENCE_LSTM op (`fused_lstms`), the others unrolled.

    Going through Keras' own ExportArchive freezes the Keras 3 variables into
    constants for every model kind (a bare concrete function leaves them as
    uninitialised resource variables in the file).
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    with _tempfiles.temporary_directory("tfc-export-") as saved_model:
        fused = fused_lstms(model) if recurrent == "fused" else contextlib.nullcontext()
        with float32_compute(model), fused, unrolled_recurrence(model), \
                integer_friendly_layer_norm(model), export_trace():
            archive.add_endpoint(
                "serve", lambda x: model(x, training=False), input_signature=[spec]
            )
            archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        if configure is not None:
            configure(converter)
        if recurrent == "fused" and converter.representative_dataset is not None:
            return _compat.calibrate_then_quantize(converter, _bound_lstm_outputs)
        return bytes(converter.convert())


def recurrent_layers(model):
    """The `keras.layers.RNN` layers (LSTM, GRU, SimpleRNN, ...) inside `model`.

    A `Bidirectional` layer contributes its forward and backward layers.
    """
    return [layer for layer in _compat.flatten_layers(model) if isinstance(layer, keras.layers.RNN)]


@contextlib.contextmanager
def unrolled_recurrence(model):
    """Traces every recurrent layer of `model` unrolled over its time steps.

    Keras 3 runs LSTM/GRU/SimpleRNN in a `tf.while_loop` over a TensorList
    whose element shape the TFLite converter cannot make static ("requires
    element_shape to be static"): no builtin-op file at all. Unrolled, each
    step is FULLY_CONNECTED, ADD, MUL, LOGISTIC and TANH ops, which TFLite
    runs in float and int8 alike. It needs the number of time steps in the
    input shape.
    """
    saved = [(layer, layer.unroll) for layer in recurrent_layers(model)]
    for layer, _ in saved:
        layer.unroll = True
    try:
        yield
    except ValueError as error:
        if saved and "Cannot unroll a RNN" in str(error):
            names = [layer.name for layer, _ in saved]
            raise ValueError(
                "TFLite's builtin ops run a recurrent layer unrolled over a fixed number of "
                f"time steps, but the sequences reaching {names} have no fixed length. Give the "
                "model a fixed sequence length (e.g. `keras.Input((timesteps, features))`) and "
                "pad shorter sequences. Received: an input of unknown sequence length"
            ) from None
        raise
    finally:
        for layer, unroll in saved:
            layer.unroll = unroll


def _fusable(layer):
    """Why TFLite's fused LSTM op cannot run `layer` ("" when it can)."""
    cell = layer.cell
    if layer.stateful or layer.return_state:
        return "stateful or return_state"
    if cell.activation is not keras.activations.tanh:
        return f"activation {cell.activation.__name__}"
    if cell.recurrent_activation is not keras.activations.sigmoid:
        return f"recurrent_activation {cell.recurrent_activation.__name__}"
    return ""


@contextlib.contextmanager
def fused_lstms(model):
    """Traces each plain `keras.layers.LSTM` as one call TFLite fuses.

    The converter replaces a function marked the way Keras 2's LSTM marked
    its own (`api_implements="lstm_..."`, `time_major`, `go_backwards`)
    with one UNIDIRECTIONAL_SEQUENCE_LSTM op, which int8 quantization turns
    into TFLite's integer LSTM kernel (int8 gates, 16-bit cell state). The
    converter fuses only inputs of a fixed batch size, and the op keeps its
    hidden and cell state in variable tensors between invocations: reset
    them before each sequence (`LiteModel` does). Other recurrent layers and
    LSTMs of other activations stay unrolled (named in a warning); an LSTM
    called with a mask or an initial state is unrolled at its call.
    """
    fused, refused = [], {}
    for layer in recurrent_layers(model):
        why = _fusable(layer) if type(layer) is keras.layers.LSTM else "not LSTM"
        if why:
            refused[layer.name] = why
        else:
            fused.append(layer)
    if refused:
        warnings.warn(
            "recurrent='fused': TFLite fuses plain LSTM layers only; these recurrent layers "
            f"are unrolled: {refused}",
            stacklevel=5,
        )
    for layer in fused:
        layer.call = functools.partial(_fused_lstm_call, layer, _fused_lstm_function())
    try:
        yield
    finally:
        for layer in fused:
            del layer.call


def _fused_lstm_function():
    # One marked function per layer: the converter fuses each on its own.
    return tf.function(
        _lstm_steps,
        autograph=False,
        experimental_attributes={
            "api_implements": f"lstm_{uuid.uuid4()}",
            "api_preferred_device": "CPU",
            "time_major": False,
            "go_backwards": False,
        },
    )


def _lstm_steps(inputs, init_h, init_c, kernel, recurrent_kernel, bias):
    # The converter reads the arguments and the 5 results in this order
    # (Keras 2's `standard_lstm`); the body is what TensorFlow runs.
    h, c, outputs = init_h, init_c, []
    for step in range(inputs.shape[1]):
        z = tf.matmul(inputs[:, step], kernel) + tf.matmul(h, recurrent_kernel) + bias
        i, f, g, o = tf.split(z, 4, axis=1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        outputs.append(h)
    return h, tf.stack(outputs, axis=1), h, c, tf.constant(0.0)


def _bound_lstm_outputs(model, schema):
    """Clamps the calibrated range of each fused LSTM's output to [-1, 1].

    An LSTM's output `o * tanh(c)` lies in (-1, 1), but TFLite's calibrator
    logs it after the whole invocation: an ADD that reused its buffer in place
    (a residual or a `Bidirectional(merge_mode="sum")`) leaves its own range
    there, and the integer LSTM then runs on a shifted scale (agreement 44-81%
    on digits models measured before this clamp, 95-99.7% after).
    """
    graph, lstm_code = model.subgraphs[0], schema.BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM
    for op in graph.operators:
        stats = graph.tensors[op.outputs[0]].quantization
        lstm = _compat.builtin_code(model, op) == lstm_code
        if lstm and stats is not None and stats.min is not None and stats.max is not None:
            stats.min = [max(float(v), -1.0) for v in stats.min]
            stats.max = [min(float(v), 1.0) for v in stats.max]


def _fused_lstm_call(layer, function, sequences, initial_state=None, mask=None, training=False):
    if initial_state is not None or mask is not None or sequences.shape[1] is None:
        return keras.layers.LSTM.call(layer, sequences, initial_state, mask, training)
    cell = layer.cell
    x = tf.cast(sequences, "float32")
    if layer.go_backwards:
        x = tf.reverse(x, axis=[1])
    zeros = tf.zeros((tf.shape(x)[0], cell.units))
    bias = cell.bias if cell.use_bias else tf.zeros((4 * cell.units,))
    last, outputs, _, _, _ = function(
        x, zeros, zeros, tf.convert_to_tensor(cell.kernel),
        tf.convert_to_tensor(cell.recurrent_kernel), tf.convert_to_tensor(bias),
    )
    return outputs if layer.return_sequences else last


@contextlib.contextmanager
def integer_friendly_layer_norm(model):
    """Traces `LayerNormalization` as `(x - mean) * (gamma * rsqrt(var + eps)) + beta`.

    Keras computes `x * inv + (beta - mean * inv)`, whose `-mean` becomes a
    TFLite NEG, an op the converter leaves in float in an int8 file. The
    same maths as SUB, MUL and ADD converts to int8 kernels throughout.
    """
    swapped = [
        layer for layer in _compat.flatten_layers(model)
        if type(layer) is keras.layers.LayerNormalization and not layer.rms_scaling
    ]
    for layer in swapped:
        layer.call = functools.partial(_layer_norm, layer)
    try:
        yield
    finally:
        for layer in swapped:
            del layer.call


def _layer_norm(layer, inputs):
    ops = keras.ops
    x = ops.cast(inputs, "float32")
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    mean, variance = ops.moments(x, axes=axes, keepdims=True)
    shape = [1] * len(x.shape)
    for axis in axes:
        shape[axis] = x.shape[axis]
    inv = ops.rsqrt(variance + layer.epsilon)
    if layer.gamma is not None:
        inv = inv * ops.reshape(ops.cast(layer.gamma, "float32"), shape)
    outputs = (x - mean) * inv
    if layer.beta is not None:
        outputs = outputs + ops.reshape(ops.cast(layer.beta, "float32"), shape)
    return ops.cast(outputs, layer.compute_dtype)


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

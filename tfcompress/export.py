"""Export Keras 3 models to TFLite (LiteRT) files and run them.

`to_tflite` converts Sequential, Functional and subclassed models, with or
without post-training quantization, and writes the file atomically.
`LiteModel` runs a file on the LiteRT interpreter and inspects what it holds.
"""

import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfcompress import _compat, conversion
from tfcompress import data as data_lib
from tfcompress._tempfiles import write_atomic
from tfcompress.conversion import input_spec
from tfcompress.litemodel import LiteModel
from tfcompress.quantization import calibration as _calibration
from tfcompress.quantization import int4 as _int4
from tfcompress.quantization import litert as _litert
from tfcompress.quantization import precision as _precision

QUANTIZATIONS = (None, "dynamic", "float16", "int8", "int4", "int16x8")
# Done on the float file by the AI Edge Quantizer (tfcompress.quantization.litert).
_FILE_LEVEL = ("int4", "int16x8")
CALIBRATIONS = ("converter", "minmax", "mse")

def is_quantization_aware(model):
    """True when some layer of `model` carries fake-quant ops (a QAT model).

    A layer marks itself with a truthy class attribute `tfc_fake_quant`; the
    converter then takes every range from the graph, so no calibration data is
    needed.
    """
    return any(getattr(layer, "tfc_fake_quant", False) for layer in _compat.flatten_layers(model))


def _check_parent(path):
    # The nearest existing ancestor must be a directory, or the write fails only
    # after the (slow) conversion.
    parent = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(
            f"`path` lies under {parent!r}, which is a file, not a directory. "
            f"Received: path={str(path)!r}"
        )


def _validate(model, path, quantization, representative_data, int8_io, bounded=False):
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}. "
            f"Received: quantization={quantization!r}"
        )
    if path is not None and not str(path).endswith(".tflite"):
        raise ValueError(f"`path` must end in '.tflite'. Received: path={str(path)!r}")
    if path is not None:
        _check_parent(path)
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={type(model).__name__}")
    if not model.built:
        raise ValueError(
            "The model is not built: call it on data or `model.build(input_shape)` before "
            f"exporting. Received: model={model.name!r} (built=False)"
        )
    if int8_io and quantization != "int8":
        raise ValueError(
            "`int8_io=True` needs `quantization='int8'`. "
            f"Received: quantization={quantization!r}, int8_io={int8_io}"
        )
    qat = is_quantization_aware(model)
    if quantization in _FILE_LEVEL and qat:
        raise ValueError(
            f"`quantization={quantization!r}` quantizes a float file; an int8 quantization-aware "
            "model exports as int8 (quantization='int8'), one trained for int4 comes from "
            "quantize_model(model, weight_bits=4). Received: a quantization-aware model"
        )
    if quantization == "int16x8" and representative_data is None:
        raise ValueError(
            "`quantization='int16x8'` calibrates int16 activation ranges: pass "
            "`representative_data` (a few hundred inputs). Received: representative_data=None"
        )
    # A `max_accuracy_drop` file (bounded) calibrates on its `eval_data`.
    if quantization == "int8" and representative_data is None and not qat and not bounded:
        raise ValueError(
            "`quantization='int8'` needs `representative_data` (a few hundred inputs to "
            "calibrate activation ranges) unless the model is quantization-aware. "
            "Received: representative_data=None"
        )
    spec = input_spec(model, representative_data)
    if representative_data is not None:
        data = np.asarray(representative_data)
        if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
            raise ValueError(
                "`representative_data` must be a numeric array. Received: "
                f"representative_data of type {type(representative_data).__name__} "
                f"(dtype {data.dtype})"
            )
        expected = tuple(spec.shape[1:])  # None: a dimension of free length
        if data.ndim != len(spec.shape) or any(
            e not in (None, d) for e, d in zip(expected, data.shape[1:])
        ):
            raise ValueError(
                f"`representative_data` must have shape (N, {', '.join(map(str, spec.shape[1:]))}) "
                f"to match the model input. Received: representative_data.shape={data.shape}"
            )
        if len(data) == 0 or not np.all(np.isfinite(data)):
            raise ValueError(
                "`representative_data` must be non-empty and finite. "
                f"Received: representative_data.shape={data.shape}"
            )
    return spec, qat


def _configure(
    converter, quantization, representative_data, int8_io, qat, per_channel_dense, dtype,
    per_tensor=False,
):
    if quantization is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if representative_data is not None and not qat:
            data = np.asarray(representative_data, dtype=dtype)

            def samples():
                for row in data:
                    yield [row[None]]

            converter.representative_dataset = samples
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Per-channel FULLY_CONNECTED stores a float scale and an int64 zero point for
        # every output unit of every kernel and bias: 15% of the digits MLP's int8
        # file, for no accuracy gained there. TFLite's int8 spec makes it optional.
        _compat.set_per_channel_dense_quantization(converter, per_channel_dense)
        if per_tensor:
            _compat.set_per_tensor_quantization(converter)
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8


def to_tflite(
    model,
    path=None,
    *,
    quantization=None,
    representative_data=None,
    int8_io=False,
    per_channel_dense=False,
    per_tensor=False,
    calibration="converter",
    recipe=None,
    max_accuracy_drop=None,
    eval_data=None,
    recurrent="unrolled",
):
    """Converts a Keras 3 model to a TFLite flatbuffer, optionally quantized.

    The file holds TFLite builtin ops only. Recurrent layers (LSTM, GRU,
    SimpleRNN, Bidirectional) are traced unrolled over their time steps, so
    the model's input needs a fixed sequence length; `LayerNormalization` is
    traced without a negation, so an int8 file runs it in int8.

    Args:
        model: a built `keras.Model` with one input: Sequential, Functional or
            subclassed.
        path: where to write the file (must end in `.tflite`), or None to only
            return the bytes. The file is written atomically: a failed
            conversion never leaves a partial file behind.
        quantization: None (float32), `"dynamic"` (int8 weights, float
            activations), `"float16"` (float16 weights), `"int8"` (full
            integer: every compute op on int8 tensors, activation ranges
            calibrated on `representative_data`, or taken from the fake-quant
            ops of a quantization-aware model), `"int4"` (int4 weights per
            channel, activations quantized to int8 on the fly) or
            `"int16x8"` (int8 weights, int16 activations calibrated on
            `representative_data`). The last two are made from the float file
            by the AI Edge Quantizer (`tfcompress.quantization.litert`).
        representative_data: array of inputs, shape (N, *input_shape[1:]),
            used to calibrate `"int8"`; a few hundred samples are plenty.
        int8_io: with `"int8"`, make the model's input and output int8 as
            well (what integer-only accelerators need). `LiteModel` quantizes
            and dequantizes for you.
        per_channel_dense: with `"int8"`, quantize Dense (FULLY_CONNECTED)
            kernels per output unit instead of per tensor. Convolutions are
            always per channel. Off by default: on the digits MLP per-channel
            costs 17% more file size for the same accuracy.
        per_tensor: with `"int8"` of a float model (the converter's
            calibration, or `max_accuracy_drop`), one scale per kernel for
            convolutions and depthwise convolutions too, for accelerators that
            take per-tensor weights only. It costs accuracy where a kernel's
            channels have very different ranges (depthwise convolutions:
            BENCHMARKS.md); `max_accuracy_drop` then keeps the layers that
            lose most in float.
        calibration: how `"int8"` sets activation ranges from
            `representative_data`: `"converter"` (the TFLite converter's
            min/max calibration), or `"minmax"`/`"mse"` through
            `tfc.quantization.calibrate` (tfcompress' fake-quantized graph:
            `"mse"` picks each range for the least rounding-plus-clipping
            error, and agrees better with the float model on CNNs; see
            BENCHMARKS.md). Ignored for quantization-aware models.
        recipe: an AI Edge Quantizer recipe applied to the float file
            instead of `quantization` (leave that None): the name of one of
            its predefined recipes (`"weight_only_wi4_afp32"`,
            `"static_wi8_ai8"`, ...; `tfc.quantization.litert.recipe_names()`)
            or a recipe in its list-of-dicts form (per-layer regexes,
            block-wise int4). Static recipes calibrate on `representative_data`.
        max_accuracy_drop: with `"int8"` or `"int4"`, the most accuracy (in
            points) the file may lose against the float file on `eval_data`:
            the most sensitive layers stay float until it is met, and a
            warning names them (`tfc.quantization.mixed_precision` returns the
            details: the layers kept, the accuracies and the files evaluated).
            Made by the AI Edge Quantizer, calibrated on `eval_data`.
        eval_data: `(x, y)` test data for `max_accuracy_drop`.
        recurrent: how recurrent layers become TFLite ops. `"unrolled"`: one
            set of FULLY_CONNECTED/ADD/MUL/LOGISTIC/TANH ops per time step;
            the file runs any batch size and keeps no state. `"fused"`: each
            plain `LSTM` (Bidirectional halves included) becomes TFLite's
            UNIDIRECTIONAL_SEQUENCE_LSTM op, which `"int8"` runs as the
            integer LSTM kernel (int8 gates, 16-bit cell state: closer to
            float than unrolled int8, BENCHMARKS.md). The converter fuses a
            fixed batch only: the file takes one sequence per invocation, and
            the op keeps its state between invocations, so call
            `interpreter.reset_all_variables()` before each sequence
            (`LiteModel` does). GRU, SimpleRNN and other LSTMs stay unrolled,
            named in a warning. With None, `"float16"` and the converter's
            `"int8"` only.

    Returns:
        The TFLite flatbuffer as `bytes`.

    Raises:
        ValueError: for an unknown `quantization`, `"int8"` without
            calibration data, calibration data that is not numeric or of the
            wrong shape, a path not ending in `.tflite` or lying under an
            existing file, an unbuilt model, or `int8_io=True` on a
            file whose compute ops are not all int8 (the ops are named).

    Example:
        >>> blob = to_tflite(model, "saved_models/mlp_int8.tflite",
        ...                  quantization="int8", representative_data=x_train[:200])
        >>> LiteModel(blob).is_fully_int8()
        True
    """
    if data_lib.is_stream(representative_data):
        # A dataset or generator of batches: read the first samples, as calibration needs.
        representative_data = data_lib.as_arrays(
            representative_data, "representative_data", limit=1000
        )[0]
    spec, qat = _validate(
        model, path, quantization, representative_data, int8_io, max_accuracy_drop is not None
    )
    if calibration not in CALIBRATIONS:
        raise ValueError(
            f"`calibration` must be one of {CALIBRATIONS}. Received: calibration={calibration!r}"
        )
    if recurrent not in ("unrolled", "fused"):
        raise ValueError(
            f"`recurrent` must be 'unrolled' or 'fused'. Received: recurrent={recurrent!r}"
        )
    if recurrent == "fused":
        if (quantization not in (None, "float16", "int8") or recipe is not None
                or calibration != "converter" or max_accuracy_drop is not None):
            raise ValueError(
                "`recurrent='fused'` goes with quantization None, 'float16' or 'int8' (the "
                "converter's calibration, no recipe, no max_accuracy_drop; with 'dynamic' the "
                "converter leaves the fused LSTM's weights float). Received: "
                f"quantization={quantization!r}, calibration={calibration!r}, recipe={recipe!r}"
            )
        spec = tf.TensorSpec((1, *spec.shape[1:]), spec.dtype)
    if per_tensor not in (True, False) or (per_tensor and (
        quantization != "int8" or qat or per_channel_dense or calibration != "converter"
    )):
        raise ValueError(
            "`per_tensor=True` goes with quantization='int8' of a float model, the converter's "
            "calibration and per_channel_dense=False (a quantization-aware model takes "
            "QuantizeConfig(weight_granularity='per_tensor')). Received: "
            f"per_tensor={per_tensor!r}, quantization={quantization!r}, "
            f"calibration={calibration!r}, per_channel_dense={per_channel_dense!r}"
        )
    if recipe is not None and quantization is not None:
        raise ValueError(
            "Pass `recipe` or `quantization`, not both: a recipe says how to quantize. "
            f"Received: quantization={quantization!r}, recipe={recipe!r}"
        )
    if max_accuracy_drop is not None or eval_data is not None:
        if quantization not in ("int8", "int4") or recipe is not None or qat or int8_io:
            raise ValueError(
                "`max_accuracy_drop` goes with quantization='int8' or 'int4' of a float model "
                f"(no recipe, no int8_io). Received: quantization={quantization!r}"
            )
        if max_accuracy_drop is None or eval_data is None:
            raise ValueError(
                "`max_accuracy_drop` and `eval_data` go together. Received: "
                f"max_accuracy_drop={max_accuracy_drop!r}, eval_data is None={eval_data is None}"
            )
        result = _precision.mixed_precision(
            model, eval_data, max_accuracy_drop, quantization=quantization,
            float_file=conversion.convert(model, spec), per_tensor=per_tensor,
        )
        if result.kept_float:
            warnings.warn(
                f"To stay within max_accuracy_drop={max_accuracy_drop}, these layers stay float: "
                f"{result.kept_float} ({result})",
                stacklevel=2,
            )
        if path is not None:
            write_atomic(path, result.tflite)
        return result.tflite
    if recipe is not None or quantization in _FILE_LEVEL:
        steps = _litert.resolve(recipe if recipe is not None else _litert.MODES[quantization])
        if int8_io:
            raise ValueError(
                "`int8_io=True` goes with quantization='int8'. "
                f"Received: quantization={quantization!r}, recipe={recipe!r}"
            )
        float_blob = conversion.convert(model, spec)
        if quantization == "int4" and _int4.is_int4_quantized(model):
            # Layers int4 QAT left out trained in float: the file keeps them so.
            names = [layer.name for layer in _int4.float_layers(model)]
            if names:
                steps = _precision.keep_float(model, LiteModel(float_blob), steps, names)
        blob = _litert.quantize_file(float_blob, steps, representative_data)
        if path is not None:
            write_atomic(path, blob)
        return blob
    if quantization == "int8" and not qat and calibration != "converter":
        model, qat = _calibration.calibrate(model, representative_data, method=calibration), True
    blob = conversion.convert(
        model,
        spec,
        lambda converter: _configure(
            converter, quantization, representative_data, int8_io, qat, per_channel_dense,
            spec.dtype.as_numpy_dtype, per_tensor,
        ),
        recurrent,
    )
    float_ops = LiteModel(blob).float_ops() if quantization == "int8" else set()
    if float_ops and not int8_io:
        warnings.warn(
            f"The int8 file still computes these ops in float: {sorted(float_ops)} "
            "(TFLite has no int8 kernel for them here, or their layers were left float). "
            "`LiteModel(blob).float_ops()` lists them.",
            stacklevel=2,
        )
    if int8_io:
        if float_ops:
            raise ValueError(
                "`int8_io=True` asks for a fully int8 model, but these ops still compute in "
                f"float: {sorted(float_ops)}. Received: int8_io={int8_io}"
            )
    if path is not None:
        write_atomic(path, blob)
    return blob

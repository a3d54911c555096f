"""Export Keras 3 models to TFLite (LiteRT) files and run them.

`to_tflite` converts Sequential, Functional and subclassed models, with or
without post-training quantization, and writes the file atomically.
`LiteModel` runs a file on the LiteRT interpreter and inspects what it holds.
"""

import contextlib
import os
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfcompress import _compat, _tempfiles
from tfcompress import data as data_lib
from tfcompress._tracing import export_trace
from tfcompress.quantization import calibration as _calibration
from tfcompress.quantization import litert as _litert

try:
    from ai_edge_litert.interpreter import Interpreter as _Interpreter
except ImportError:  # pragma: no cover - ai-edge-litert is a declared dependency
    _Interpreter = tf.lite.Interpreter

_schema = _compat.tflite_schema()

QUANTIZATIONS = (None, "dynamic", "float16", "int8", "int4", "int16x8")
# Done on the float file by the AI Edge Quantizer (tfcompress.quantization.litert).
_FILE_LEVEL = ("int4", "int16x8")
CALIBRATIONS = ("converter", "minmax", "mse")

# Ops that only move data in or out of the int8 domain at the edges of a model.
_BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
_FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})
_BITS = {"INT4": 4, "INT8": 8, "UINT8": 8, "INT16": 16, "FLOAT16": 16, "BFLOAT16": 16,
         "INT32": 32, "FLOAT32": 32, "INT64": 64, "FLOAT64": 64}
_OP_NAMES = {v: k for k, v in vars(_schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(_schema.TensorType).items() if not k.startswith("_")}


def is_quantization_aware(model):
    """True when some layer of `model` carries fake-quant ops (a QAT model).

    A layer marks itself with a truthy class attribute `tfc_fake_quant`; the
    converter then takes every range from the graph, so no calibration data is
    needed.
    """
    return any(getattr(layer, "tfc_fake_quant", False) for layer in _compat.flatten_layers(model))


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


def _validate(model, path, quantization, representative_data, int8_io):
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
            f"`quantization={quantization!r}` quantizes a float file; a quantization-aware "
            "model exports as int8 (quantization='int8'). Received: a quantization-aware model"
        )
    if quantization == "int16x8" and representative_data is None:
        raise ValueError(
            "`quantization='int16x8'` calibrates int16 activation ranges: pass "
            "`representative_data` (a few hundred inputs). Received: representative_data=None"
        )
    if quantization == "int8" and representative_data is None and not qat:
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


def _convert(model, spec, configure):
    """Converts through a temporary SavedModel of one `serve` endpoint.

    Going through Keras' own ExportArchive freezes the Keras 3 variables into
    constants for every model kind (a bare concrete function leaves them as
    uninitialised resource variables in the file).
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    with _tempfiles.temporary_directory("tfc-export-") as saved_model:
        with _float32_compute(model), export_trace():
            archive.add_endpoint(
                "serve", lambda x: model(x, training=False), input_signature=[spec]
            )
            archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        configure(converter)
        return bytes(converter.convert())


@contextlib.contextmanager
def _float32_compute(model):
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


def _configure(
    converter, quantization, representative_data, int8_io, qat, per_channel_dense, dtype
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
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8


def _unpack_int4(data, count):
    """Signed 4-bit values packed two a byte, low nibble first, as int8."""
    packed = np.frombuffer(data, dtype=np.uint8)
    values = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1).astype(np.int8)
    return np.where(values > 7, values - 16, values).astype(np.int8)[:count]


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path, data):
    """Writes bytes to `path` through a temporary file and a rename.

    A failure at any point leaves no file at `path` (and no temporary file);
    the temporary file of a process killed outright is removed by the next
    write into the same directory.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _tempfiles.mkstemp(directory, ".tmp-", suffix=".tflite")
    try:
        # mkstemp creates the file owner-only (0o600); give it the mode `open` would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def to_tflite(
    model,
    path=None,
    *,
    quantization=None,
    representative_data=None,
    int8_io=False,
    per_channel_dense=False,
    calibration="converter",
    recipe=None,
):
    """Converts a Keras 3 model to a TFLite flatbuffer, optionally quantized.

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
    spec, qat = _validate(model, path, quantization, representative_data, int8_io)
    if calibration not in CALIBRATIONS:
        raise ValueError(
            f"`calibration` must be one of {CALIBRATIONS}. Received: calibration={calibration!r}"
        )
    if recipe is not None and quantization is not None:
        raise ValueError(
            "Pass `recipe` or `quantization`, not both: a recipe says how to quantize. "
            f"Received: quantization={quantization!r}, recipe={recipe!r}"
        )
    if recipe is not None or quantization in _FILE_LEVEL:
        steps = _litert.resolve(recipe if recipe is not None else _litert.MODES[quantization])
        if int8_io:
            raise ValueError(
                "`int8_io=True` goes with quantization='int8'. "
                f"Received: quantization={quantization!r}, recipe={recipe!r}"
            )
        blob = _litert.quantize_file(
            _convert(model, spec, lambda converter: None), steps, representative_data
        )
        if path is not None:
            write_atomic(path, blob)
        return blob
    if quantization == "int8" and not qat and calibration != "converter":
        model, qat = _calibration.calibrate(model, representative_data, method=calibration), True
    blob = _convert(
        model,
        spec,
        lambda converter: _configure(
            converter, quantization, representative_data, int8_io, qat, per_channel_dense,
            spec.dtype.as_numpy_dtype,
        ),
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


class LiteModel:
    """A TFLite file on the LiteRT interpreter, with Keras-like `predict`.

    Runs on `ai_edge_litert` (falling back to `tf.lite.Interpreter`). Int8
    inputs and outputs are quantized and dequantized with the file's own
    scales, so `predict` takes and returns float arrays; a plain integer
    input (token ids) is passed as it is, and dimensions of free length take
    the length of the data.

    Args:
        model: path of a `.tflite` file, or its bytes.
        num_threads: interpreter threads (None lets LiteRT choose).

    Raises:
        ValueError: if `model` is neither a path nor bytes, the file is missing,
            empty or not a TFLite flatbuffer, or `num_threads` is not None or
            an integer >= -1. `predict` refuses empty input, and non-finite
            input to a file that quantizes its input.

    Example:
        >>> lite = LiteModel("saved_models/mlp_int8.tflite")
        >>> lite.evaluate(x_test, y_test)
        0.975
    """

    def __init__(self, model, num_threads=None):
        if not isinstance(model, (bytes, bytearray, str, os.PathLike)):
            raise ValueError(
                "`model` must be the path of a .tflite file or its bytes. "
                f"Received: model={model!r}"
            )
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer))
            or num_threads < -1
        ):
            raise ValueError(
                "`num_threads` must be None or an integer >= -1 (-1 lets LiteRT choose). "
                f"Received: num_threads={num_threads!r}"
            )
        if isinstance(model, (bytes, bytearray)):
            blob, source = bytes(model), "<bytes>"
        else:
            source = os.fspath(model)
            if not os.path.isfile(source):
                raise ValueError(f"No TFLite file at `model`. Received: model={source!r}")
            with open(source, "rb") as f:
                blob = f.read()
        if len(blob) < 8 or blob[4:8] != b"TFL3":
            raise ValueError(
                "`model` is not a TFLite flatbuffer (empty, truncated or another format). "
                f"Received: model={source!r} ({len(blob)} bytes)"
            )
        self.model = model
        self.num_threads = num_threads
        self.content = blob
        try:
            self._interpreter = _Interpreter(
                model_content=blob, num_threads=None if num_threads is None else int(num_threads)
            )
            self._interpreter.allocate_tensors()
            self._flat = _schema.ModelT.InitFromPackedBuf(blob, 0)
        except (ValueError, RuntimeError) as e:
            raise ValueError(f"`model` could not be loaded: {e}. Received: model={source!r}") from e
        self._shape = None

    @property
    def size(self):
        """File size in bytes."""
        return len(self.content)

    @property
    def input_details(self):
        return self._interpreter.get_input_details()[0]

    @property
    def output_details(self):
        return self._interpreter.get_output_details()[0]

    def _op_tensors(self):
        graph = self._flat.subgraphs[0]
        for op in graph.operators:
            code = self._flat.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            name = _OP_NAMES.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = code.customCode.decode() if code.customCode else "CUSTOM"
            idx = [int(i) for i in list(op.inputs) + list(op.outputs) if i >= 0]
            yield name, [graph.tensors[i] for i in idx]

    def ops(self):
        """Names of the ops in the file (read from the flatbuffer, no delegate)."""
        return {name for name, _ in self._op_tensors()}

    def float_ops(self):
        """Compute ops that read or write a float tensor (boundary (de)quantize excluded)."""
        return {
            name
            for name, tensors in self._op_tensors()
            if name not in _BOUNDARY_OPS
            and any(_TYPE_NAMES.get(t.type) in _FLOAT_TYPES for t in tensors)
        }

    def wide_int_ops(self):
        """Compute ops that read or write an int16 tensor (int16x8 activations)."""
        return {
            name
            for name, tensors in self._op_tensors()
            if name not in _BOUNDARY_OPS
            and any(_TYPE_NAMES.get(t.type) == "INT16" for t in tensors)
        }

    def is_fully_int8(self):
        """True when every compute op runs on 8-bit integer tensors (int32 biases aside)."""
        return not self.float_ops() and not self.wide_int_ops()

    def weight_bits(self):
        """Bits per value of each constant tensor: {name: 4, 8, 16 or 32}."""
        graph = self._flat.subgraphs[0]
        return {
            (t.name.decode() if isinstance(t.name, bytes) else t.name): _BITS.get(
                _TYPE_NAMES.get(t.type, ""), 0
            )
            for t in graph.tensors
            if self._flat.buffers[t.buffer].data is not None
            and len(self._flat.buffers[t.buffer].data)
        }

    def signature_input(self):
        """(signature key, input name) of the file's single-input signature."""
        signatures = self._interpreter.get_signature_list()
        key = next(iter(signatures))
        return key, signatures[key]["inputs"][0]

    def weights(self):
        """Constant tensors of the file: {name: (values, zero_point)}.

        Quantized int32 biases count as weights; unquantized int32 constants
        (shapes, axes) do not.
        """
        graph = self._flat.subgraphs[0]
        result = {}
        for t in graph.tensors:
            data = self._flat.buffers[t.buffer].data
            if data is None or len(data) == 0:
                continue
            type_name = _TYPE_NAMES.get(t.type, "")
            q = t.quantization
            quantized = q is not None and q.scale is not None and len(q.scale) > 0
            if type_name in ("INT32", "INT64") and not quantized:
                continue
            if type_name == "INT4":
                values = _unpack_int4(bytes(bytearray(data)), int(np.prod(t.shape)))
            else:
                dtype = np.dtype(type_name.lower()) if type_name != "FLOAT16" else np.float16
                values = np.frombuffer(bytes(bytearray(data)), dtype=dtype)
            zero_point = int(q.zeroPoint[0]) if quantized and q.zeroPoint is not None else 0
            result[t.name.decode() if isinstance(t.name, bytes) else t.name] = (values, zero_point)
        return result

    def _check_input(self, x):
        x = np.asarray(x)
        expected = tuple(self.input_details["shape_signature"][1:])
        mismatch = any(e not in (-1, s) for e, s in zip(expected, x.shape[1:]))
        if x.ndim != len(expected) + 1 or mismatch:
            raise ValueError(
                f"`x` must have shape (N, {', '.join(map(str, expected))}) for this model. "
                f"Received: x.shape={x.shape}"
            )
        if len(x) == 0:
            raise ValueError(f"`x` must hold at least one sample. Received: x.shape={x.shape}")
        if self._quantizes_input() and not np.all(np.isfinite(x)):
            raise ValueError(
                "`x` must be finite: this file quantizes its input, and NaN/inf would be "
                "quantized to plausible values. Received: x with "
                f"{int(x.size - np.isfinite(x).sum())} non-finite values"
            )
        return x

    def _quantizes_input(self):
        """True when the input is int8 (with a scale) or fed straight to a QUANTIZE op."""
        if self.input_details["quantization"][0]:
            return True
        tensor = self._flat.subgraphs[0].tensors[self.input_details["index"]]
        return any(name == "QUANTIZE" and ts[0] is tensor for name, ts in self._op_tensors())

    def _resize(self, shape):
        # The whole shape, not only the batch: dimensions of free length (-1 in the
        # signature) take the size of the data too.
        shape = tuple(int(d) for d in shape)
        if shape != self._shape:
            self._interpreter.resize_tensor_input(self.input_details["index"], list(shape))
            self._interpreter.allocate_tensors()
            self._shape = shape

    def _run(self, x):
        inp, out = self.input_details, self.output_details
        scale, zero = inp["quantization"]
        if scale:  # a quantized (int8) input; scale 0 marks a plain integer or float input
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        else:
            x = x.astype(inp["dtype"])
        self._interpreter.set_tensor(inp["index"], x)
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(out["index"])
        scale, zero = out["quantization"]
        if scale:
            y = (y.astype(np.float32) - zero) * scale
        return y

    def predict(self, x, batch_size=32):
        """Runs the file on `x` in batches; int8 outputs come back dequantized."""
        x = self._check_input(x)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
        outputs = []
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            self._resize(chunk.shape)
            outputs.append(self._run(chunk))
        return np.concatenate(outputs)

    def evaluate(self, x, y, batch_size=32):
        """Classification accuracy of the file on (x, y) with integer labels."""
        labels = np.asarray(y).reshape(-1)
        if len(labels) != len(x):
            raise ValueError(
                f"`y` must hold one integer label per sample of `x` ({len(x)}). "
                f"Received: y.shape={np.shape(y)}"
            )
        predictions = self.predict(x, batch_size=batch_size)
        return float(np.mean(np.argmax(predictions, axis=-1) == labels))

    def latency(self, x=None, runs=200, warmup=20):
        """Median seconds of one single-sample `invoke` (input set once, I/O excluded).

        Args:
            x: one input sample batch of shape (1, ...); random if None.
            runs: timed runs.
            warmup: untimed runs first.

        Raises:
            ValueError: for `runs` < 1, `warmup` < 0 or an `x` this file cannot take.
        """
        for name, value, minimum in (("runs", runs, 1), ("warmup", warmup, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
                value < minimum
            ):
                raise ValueError(
                    f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}"
                )
        shape = [1, *self.input_details["shape"][1:]]
        if x is None:
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
        x = self._check_input(x)[:1]
        self._resize(x.shape)
        self._run(x)
        invoke = self._interpreter.invoke
        for _ in range(warmup):
            invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            invoke()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

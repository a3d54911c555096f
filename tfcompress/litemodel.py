"""`LiteModel`: runs a TFLite (LiteRT) file and inspects what it holds.

Kept apart from `tfcompress.export` so that the file-level quantizers
(`tfcompress.quantization.litert`) can read files without importing the
converter side.
"""

import os
import time

import numpy as np
import tensorflow as tf

from tfcompress import _compat

try:
    from ai_edge_litert.interpreter import Interpreter as _Interpreter
except ImportError:  # pragma: no cover - ai-edge-litert is a declared dependency
    _Interpreter = tf.lite.Interpreter

_schema = _compat.tflite_schema()

# Ops that only move data in or out of the int8 domain at the edges of a model.
_BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
_LSTM_OPS = frozenset({"LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM"})
_FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})
_BITS = {"INT4": 4, "INT8": 8, "UINT8": 8, "INT16": 16, "FLOAT16": 16, "BFLOAT16": 16,
         "INT32": 32, "FLOAT32": 32, "INT64": 64, "FLOAT64": 64}
_OP_NAMES = {v: k for k, v in vars(_schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(_schema.TensorType).items() if not k.startswith("_")}


def _name(tensor):
    return tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name


def _unpack_int4(data, count):
    """Signed 4-bit values packed two a byte, low nibble first, as int8."""
    packed = np.frombuffer(data, dtype=np.uint8)
    values = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1).astype(np.int8)
    return np.where(values > 7, values - 16, values).astype(np.int8)[:count]



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
        self._stateful = any(t.isVariable for t in self._flat.subgraphs[0].tensors)

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
            builtin = _compat.builtin_code(self._flat, op)
            name = _OP_NAMES.get(builtin, str(builtin))
            if name == "CUSTOM":
                code = self._flat.operatorCodes[op.opcodeIndex]
                name = code.customCode.decode() if code.customCode else "CUSTOM"
            idx = [int(i) for i in list(op.inputs) + list(op.outputs) if i >= 0]
            yield name, [graph.tensors[i] for i in idx]

    def ops(self):
        """Names of the ops in the file (read from the flatbuffer, no delegate)."""
        return {name for name, _ in self._op_tensors()}

    def op_table(self):
        """Each op in order: {"op": name, "output": first output tensor name,
        "constants": names of its constant (weight) inputs}."""
        graph = self._flat.subgraphs[0]
        table = []
        for op in graph.operators:
            name = _OP_NAMES.get(_compat.builtin_code(self._flat, op), "CUSTOM")
            tensor_name = lambda i: _name(graph.tensors[i])  # noqa: E731
            table.append({
                "op": name,
                "output": tensor_name(op.outputs[0]),
                "constants": [
                    tensor_name(i) for i in op.inputs
                    if i >= 0 and self._flat.buffers[graph.tensors[i].buffer].data is not None
                    and len(self._flat.buffers[graph.tensors[i].buffer].data)
                ],
            })
        return table

    def float_ops(self):
        """Compute ops that read or write a float tensor (boundary (de)quantize excluded)."""
        return {
            name
            for name, tensors in self._op_tensors()
            if name not in _BOUNDARY_OPS
            and any(_TYPE_NAMES.get(t.type) in _FLOAT_TYPES for t in tensors)
        }

    def wide_int_ops(self):
        """Compute ops that read or write an int16 tensor (int16x8 activations).

        TFLite's integer LSTM keeps its cell state in int16 by design: an LSTM
        op between int8 inputs and outputs counts as int8.
        """
        def int8_lstm(name, tensors):
            ends = (tensors[0], tensors[-1])  # the op's first input and its output
            return name in _LSTM_OPS and all(_TYPE_NAMES.get(t.type) == "INT8" for t in ends)

        return {
            name
            for name, tensors in self._op_tensors()
            if name not in _BOUNDARY_OPS
            and any(_TYPE_NAMES.get(t.type) == "INT16" for t in tensors)
            and not int8_lstm(name, tensors)
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
        if self._stateful:
            # A fused LSTM keeps its state in variable tensors: each batch starts from zero.
            self._interpreter.reset_all_variables()
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
        fixed = int(self.input_details["shape_signature"][0])
        if fixed > 0:  # a file made for one batch size (a fused LSTM): pad the last batch
            batch_size = fixed
        outputs = []
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            count = len(chunk)
            if fixed > 0 and count < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - count, *x.shape[1:]), x.dtype)])
            self._resize(chunk.shape)
            outputs.append(self._run(chunk)[:count])
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

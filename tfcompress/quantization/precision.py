"""Per-layer quantization sensitivity and accuracy-bounded mixed precision, on LiteRT.

`sensitivity` quantizes one layer at a time in the model's float TFLite file
(the AI Edge Quantizer, one recipe entry per layer, activation ranges
calibrated once for all layers) and measures how far each file moves from the
float file. `mixed_precision` quantizes the whole model, and while the file
loses more accuracy than allowed, keeps the most sensitive layers in float,
one more at a time: the ranking makes it need few evaluations, and it counts
them.

Layers are found in the file by their kernels: the constant tensor of an op
holding the same values as a Keras kernel (in any layout) is that layer's op.
"""

import copy
import re

import keras
import numpy as np

from tfcompress import _compat, conversion, plots
from tfcompress.litemodel import LiteModel
from tfcompress.quantization import litert

# mode: (AEQ recipe of the whole model, what the error is measured in)
_MODES = {"int8": "static_wi8_ai8", "int4": "dynamic_wi4_afp32"}


_KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D")


def layer_ops(model, lite):
    """[(layer name, op output tensor name)] of the layers with a kernel, found in the file.

    A layer's op is the one with a constant holding the kernel's values (in
    any layout). A kernel the converter changed (a BatchNorm folded into it)
    is matched instead to the next unmatched kernel op, in graph order, with a
    constant of the same size.

    Args:
        model: the Keras model the float file `lite` (a `LiteModel`) was exported from.
    """
    constants = {name: values for name, (values, _) in lite.weights().items()}
    ops = [op for op in lite.op_table() if op["op"] in _KERNEL_OPS]
    layers = []
    for layer in _compat.flatten_layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and len(kernel.shape) >= 2:
            layers.append((layer.name, np.sort(np.asarray(kernel.numpy(), "float32").ravel())))

    def matches(op, values, exact):
        for name in op["constants"]:
            if constants[name].size == values.size and (not exact or np.allclose(
                np.sort(constants[name].astype("float32").ravel()), values, atol=1e-6
            )):
                return True
        return False

    found = {}
    for name, values in layers:
        for i, op in enumerate(ops):
            if i not in found.values() and matches(op, values, exact=True):
                found[name] = i
                break
    last = -1
    for name, values in layers:
        if name in found:
            last = found[name]
            continue
        for i in range(last + 1, len(ops)):
            if i not in found.values() and matches(ops[i], values, exact=False):
                found[name] = last = i
                break
    return [(name, ops[found[name]]["output"]) for name, _ in layers if name in found]


def keep_float(model, lite, base, names):
    """`base` (an AEQ recipe) with the ops of the layers `names` left float.

    Args:
        model: the Keras model the float file `lite` (a `LiteModel`) came from.
        names: names of layers of `model` with a kernel.

    Raises:
        ValueError: naming the layers whose op is not found in the file.
    """
    found = dict(layer_ops(model, lite))
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(
            f"These layers were not found in the TFLite file, so they cannot be kept float: "
            f"{missing}. Received: {list(names)}"
        )
    return list(base) + [_entry(base, _exact(found[name]), "no_quantize") for name in names]


def _entry(base, regex, algorithm=None):
    entry = copy.deepcopy(base[0])
    entry["regex"] = regex
    if algorithm is not None:
        entry["algorithm_key"] = algorithm
    return entry


def _exact(name):
    # AEQ's scope of an op: its output tensor names, each followed by ";".
    return "^" + re.escape(name) + ";"


class _Session:
    """The float file, its outputs on `x`, and one calibration for every recipe."""

    def __init__(self, model, float_blob, x, mode, per_tensor=False):
        quantizer, _ = litert.aeq()

        if mode not in _MODES:
            raise ValueError(f"`quantization` must be one of {tuple(_MODES)}. "
                             f"Received: quantization={mode!r}")
        if per_tensor and mode != "int8":
            raise ValueError("`per_tensor=True` goes with quantization='int8'. "
                             f"Received: quantization={mode!r}")
        self.quantizer = quantizer
        self.float_blob = float_blob
        self.float_lite = LiteModel(self.float_blob)
        self.x = x
        self.reference = self.float_lite.predict(x)
        self.base = litert.resolve(_MODES[mode])
        if per_tensor:
            self.base = copy.deepcopy(self.base)
            for entry in self.base:
                entry["op_config"]["weight_tensor_config"]["granularity"] = "TENSORWISE"
        self.layers = layer_ops(model, self.float_lite)
        self.calibration = None
        self.evaluations = 0
        with litert.quiet():
            qt = quantizer.Quantizer(self.float_blob, self.base)
        if qt.need_calibration:
            signature, name = self.float_lite.signature_input()
            samples = [{name: x[i : i + 1]} for i in range(min(len(x), 300))]
            with litert.quiet():
                self.calibration = qt.calibrate({signature: samples})

    def quantize(self, recipe):
        with litert.quiet():
            qt = self.quantizer.Quantizer(self.float_blob, recipe)
            result = qt.quantize(self.calibration, enable_progress_report=False)
        return bytes(result.quantized_model)

    def measure(self, blob, y):
        self.evaluations += 1
        out = LiteModel(blob).predict(self.x)
        spread = float(np.std(self.reference)) or 1.0
        row = {
            "error": float(np.mean(np.abs(out - self.reference)) / spread),
            "agreement": float(np.mean(out.argmax(-1) == self.reference.argmax(-1))),
        }
        if y is not None:
            row["accuracy"] = float(np.mean(out.argmax(-1) == np.asarray(y).reshape(-1)))
        return row


class SensitivityReport:
    """One row per layer: `layer`, `error` (mean |output change| over the output's
    spread), `agreement` with the float file and, with labels, `accuracy`."""

    def __init__(self, rows, float_accuracy=None):
        self.rows = rows
        self.float_accuracy = float_accuracy

    def ranking(self):
        """Layer names, most sensitive first (largest error)."""
        return [r["layer"] for r in sorted(self.rows, key=lambda r: -r["error"])]

    def __str__(self):
        lines = [f"{'layer':24} {'error':>8} {'agree':>7} {'accuracy':>9}"]
        for r in sorted(self.rows, key=lambda r: -r["error"]):
            acc = "-" if r.get("accuracy") is None else f"{100 * r['accuracy']:.2f}"
            lines.append(f"{r['layer']:24} {r['error']:8.4f} {100 * r['agreement']:6.1f}% {acc:>9}")
        return "\n".join(lines)

    def plot(self, path):
        """Writes bars of each layer's error to a PNG (`tfcompress.plots`)."""
        return plots.bars(
            [r["layer"] for r in self.rows], [r["error"] for r in self.rows], path,
            xlabel="output change when only this layer is quantized (/ output spread)",
            title="quantization sensitivity per layer",
        )


def _float_file(model):
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"`model` must be a built keras.Model. Received: model={model!r}")
    return conversion.convert(model, conversion.input_spec(model))


def _check_data(x, y, name):
    x = np.asarray(x, dtype="float32")
    if x.ndim < 2 or len(x) == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` inputs must be a non-empty finite batch. "
                         f"Received: shape {x.shape}")
    if y is not None and len(np.asarray(y).reshape(-1)) != len(x):
        raise ValueError(f"`{name}` labels must be one per input. Received: {np.shape(y)} "
                         f"labels for {len(x)} inputs")
    return x


def sensitivity(model, data, labels=None, *, quantization="int8", float_file=None):
    """How much each layer alone moves the file when quantized.

    Args:
        model: a built Keras model (float).
        data: inputs to measure on (also calibrate int8 activations on).
        labels: optional integer labels of `data`: adds the accuracy of each file.
        quantization: `"int8"` (int8 weights and activations) or `"int4"`
            (int4 weights).
        float_file: the model's float TFLite bytes, when already exported.

    Returns:
        A `SensitivityReport` (`print` it, `.ranking()`, `.plot(path)`).
    """
    x = _check_data(data, labels, "data")
    session = _Session(model, float_file or _float_file(model), x, quantization)
    rows = []
    for layer, output in session.layers:
        blob = session.quantize([_entry(session.base, _exact(output))])
        rows.append({"layer": layer, **session.measure(blob, labels)})
    float_acc = None
    if labels is not None:
        float_acc = float(np.mean(session.reference.argmax(-1) == np.asarray(labels).reshape(-1)))
    return SensitivityReport(rows, float_acc)


class MixedPrecisionResult:
    """`tflite` (bytes), `kept_float` (layer names, most sensitive first),
    `accuracy`, `float_accuracy`, `evaluations` (files measured) and `sensitivity`."""

    def __init__(self, tflite, kept_float, accuracy, float_accuracy, evaluations, sensitivity):
        self.tflite = tflite
        self.kept_float = kept_float
        self.accuracy = accuracy
        self.float_accuracy = float_accuracy
        self.evaluations = evaluations
        self.sensitivity = sensitivity

    def __str__(self):
        kept = ", ".join(self.kept_float) or "none"
        return (
            f"accuracy {100 * self.accuracy:.2f}% (float {100 * self.float_accuracy:.2f}%), "
            f"layers kept in float: {kept}; {self.evaluations} files evaluated"
        )


def mixed_precision(model, eval_data, max_accuracy_drop, *, quantization="int8",
                    float_file=None, per_tensor=False):
    """The most-quantized file within `max_accuracy_drop` points of the float file.

    Quantizes every layer; while the file loses more than `max_accuracy_drop`
    points of accuracy on `eval_data`, the next most sensitive layer (by
    `sensitivity`) stays float. With `per_tensor` (int8 only) every kernel has
    one scale, convolutions included (AEQ's TENSORWISE weights).

    Raises:
        ValueError: for a negative `max_accuracy_drop`, bad `eval_data`, or a
            bound that keeping every layer in float still misses.
    """
    if isinstance(max_accuracy_drop, bool) or not isinstance(
        max_accuracy_drop, (int, float)
    ) or not 0 <= max_accuracy_drop < float("inf"):
        raise ValueError("`max_accuracy_drop` must be a finite number >= 0 (points). "
                         f"Received: max_accuracy_drop={max_accuracy_drop!r}")
    if not (isinstance(eval_data, tuple) and len(eval_data) == 2):
        raise ValueError(f"`eval_data` must be an (x, y) tuple. Received: {type(eval_data)}")
    x = _check_data(eval_data[0], eval_data[1], "eval_data")
    y = np.asarray(eval_data[1]).reshape(-1)
    session = _Session(model, float_file or _float_file(model), x, quantization, per_tensor)
    float_acc = float(np.mean(session.reference.argmax(-1) == y))
    bound = float_acc - max_accuracy_drop / 100

    def within(row):
        return row["accuracy"] >= bound - 1e-9

    blob = session.quantize(session.base)
    row = session.measure(blob, y)
    if within(row):
        return MixedPrecisionResult(blob, [], row["accuracy"], float_acc, session.evaluations,
                                    None)
    rows = []
    for layer, output in session.layers:
        single = session.quantize([_entry(session.base, _exact(output))])
        rows.append({"layer": layer, "output": output, **session.measure(single, y)})
    report = SensitivityReport(rows, float_acc)
    ranked = sorted(rows, key=lambda r: -r["error"])
    for k in range(1, len(ranked) + 1):
        keep = ranked[:k]
        recipe = session.base + [_entry(session.base, _exact(r["output"]), "no_quantize")
                                 for r in keep]
        blob = session.quantize(recipe)
        row = session.measure(blob, y)
        if within(row):
            return MixedPrecisionResult(blob, [r["layer"] for r in keep], row["accuracy"],
                                        float_acc, session.evaluations, report)
    raise ValueError(
        f"max_accuracy_drop={max_accuracy_drop} cannot be met: with every layer kept in float "
        f"the file reaches {100 * row['accuracy']:.2f}% against {100 * float_acc:.2f}% "
        f"(layers found in the file: {[r['layer'] for r in ranked]}). No file was written."
    )

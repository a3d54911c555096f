"""Side-by-side figures for compressed models: size, sparsity, accuracy, latency.

Every row describes one deployable artifact. A Keras model is measured as the
float32 TFLite file it converts to (its size, gzip size and LiteRT latency)
next to its own parameter counts and `.keras` file size; a TFLite file is
measured as it is.
"""

import gzip
import os

import keras
import numpy as np

from tfcompress import _tempfiles, plots
from tfcompress.export import LiteModel, input_spec, to_tflite

COLUMNS = (
    ("params", "parameters", "{:,}"),
    ("nonzero", "non-zero", "{:,}"),
    ("sparsity", "sparsity", "{:.3f}"),
    ("file_bytes", "file bytes", "{:,}"),
    ("gzip_bytes", "gzip bytes", "{:,}"),
    ("tflite_bytes", "tflite bytes", "{:,}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("latency_us", "latency us", "{:.1f}"),
)


def gzip_size(data):
    """Bytes of `data` after gzip at the highest compression level."""
    return len(gzip.compress(bytes(data), compresslevel=9))


def _keras_file_size(model):
    with _tempfiles.temporary_directory("tfc-report-") as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        return os.path.getsize(path)


def _as_input(x, feature_shape):
    """`x` reshaped to (N, *feature_shape) when only its layout differs (flat vs image)."""
    if x is None:
        return None
    x = np.asarray(x)
    feature_shape = tuple(int(d) for d in feature_shape)
    if x.shape[1:] != feature_shape and np.prod(x.shape[1:]) == np.prod(feature_shape):
        x = x.reshape((len(x),) + feature_shape)
    return x


def _feature_shape(item):
    """Per-sample input shape of a model or TFLite file (None: a free dimension, or unknown)."""
    if isinstance(item, keras.Model):
        # An unbuilt model is refused by `to_tflite`, with its own message.
        return tuple(input_spec(item).shape[1:]) if item.built else None
    signature = LiteModel(item).input_details["shape_signature"][1:]
    return tuple(None if d < 0 else int(d) for d in signature)


def _check_x(name, x, shape):
    x = np.asarray(x)
    if None not in shape:
        x = _as_input(x, shape)
    if x.ndim != len(shape) + 1 or any(e not in (None, d) for e, d in zip(shape, x.shape[1:])):
        expected = ", ".join("?" if d is None else str(d) for d in shape)
        raise ValueError(
            f"`x` must have shape (N, {expected}) (or as many values per sample) to fit "
            f"`models[{name!r}]`. Received: x.shape={x.shape}"
        )


def _keras_row(model, x, y, latency_runs):
    values = [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]
    params = int(sum(v.size for v in values))
    nonzero = int(sum(np.count_nonzero(v) for v in values))
    blob = to_tflite(model)
    lite = LiteModel(blob)
    accuracy = None
    if x is not None:
        x = _as_input(x, lite.input_details["shape"][1:])
        # Direct calls, not `predict`: a report measures many models, and a `predict`
        # function traced per model floods the log with retracing warnings.
        predictions = np.concatenate([
            keras.ops.convert_to_numpy(model(x[i : i + 256], training=False))
            for i in range(0, len(x), 256)
        ])
        accuracy = float(np.mean(np.argmax(predictions, -1) == np.asarray(y).reshape(-1)))
    return {
        "kind": "keras",
        "params": params,
        "nonzero": nonzero,
        "file_bytes": _keras_file_size(model),
        "gzip_bytes": gzip_size(blob),
        "tflite_bytes": len(blob),
        "accuracy": accuracy,
        "latency_us": lite.latency(runs=latency_runs) * 1e6,
    }


def _tflite_row(source, x, y, latency_runs):
    lite = LiteModel(source)
    weights = lite.weights().values()
    return {
        "kind": "tflite",
        "params": int(sum(v.size for v, _ in weights)),
        "nonzero": int(sum(np.count_nonzero(v != zero) for v, zero in weights)),
        "file_bytes": lite.size,
        "gzip_bytes": gzip_size(lite.content),
        "tflite_bytes": lite.size,
        "accuracy": None
        if x is None
        else lite.evaluate(_as_input(x, lite.input_details["shape"][1:]), y),
        "latency_us": lite.latency(runs=latency_runs) * 1e6,
    }


class CompressionReport:
    """Rows of figures, one per model or file, readable as text, dict or markdown.

    Attributes:
        rows: list of dicts with keys `name`, `kind`, and every key of `COLUMNS`.
    """

    def __init__(self, rows):
        self.rows = rows

    def to_dict(self):
        """{name: {figure: value}}."""
        return {row["name"]: {k: v for k, v in row.items() if k != "name"} for row in self.rows}

    def _cells(self):
        header = ["model"] + [title for _, title, _ in COLUMNS]
        body = [
            [row["name"]]
            + ["-" if row[key] is None else fmt.format(row[key]) for key, _, fmt in COLUMNS]
            for row in self.rows
        ]
        return header, body

    def __str__(self):
        header, body = self._cells()
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        line = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )
        return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in body])

    def to_markdown(self):
        header, body = self._cells()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)

    def plot(self, path):
        """Writes the size-vs-accuracy chart (gzip bytes, log scale, Pareto frontier) to a PNG.

        See `tfcompress.plots.size_accuracy`; needs matplotlib (`tfcompress[plots]`).
        """
        return plots.size_accuracy(self.rows, path)


def compression_report(models, x=None, y=None, *, latency_runs=100):
    """Measures each model or TFLite file on the same data.

    Args:
        models: dict of {name: keras.Model | path of a .tflite file | bytes}.
        x: test inputs (optional: without them accuracy is left out). They are
            reshaped to each model's input shape when only the layout differs,
            so flat (N, 64) digits serve an MLP and an (8, 8, 1) CNN alike.
        y: integer labels of `x`.
        latency_runs: timed single-sample LiteRT runs per row (median reported).

    Returns:
        A `CompressionReport`: `print(report)` gives a table, `report.to_dict()`,
        `report.to_markdown()` and `report.plot("plot.png")` the other forms.

    Raises:
        ValueError: if `models` is empty or holds something that is neither a
            Keras model nor a TFLite file, or if `x` is given without `y`, with
            another number of labels, or with a shape that does not fit a
            model's input (checked before anything is measured).

    Example:
        >>> print(compression_report({"float": model, "int8": "m_int8.tflite"}, x_te, y_te))
    """
    if not isinstance(models, dict) or not models:
        raise ValueError(
            f"`models` must be a non-empty dict of name -> model. Received: models={models!r}"
        )
    if (x is None) != (y is None):
        raise ValueError(f"Pass both `x` and `y`, or neither. Received: x is None={x is None}")
    if x is not None and len(x) != np.size(y):
        raise ValueError(
            f"`y` must hold one label per sample of `x` ({len(x)}). "
            f"Received: y.shape={np.shape(y)}"
        )
    for name, item in models.items():
        if not isinstance(item, (keras.Model, bytes, bytearray, str, os.PathLike)):
            raise ValueError(
                f"`models[{name!r}]` must be a keras.Model, a .tflite path or bytes. "
                f"Received: {type(item).__name__}"
            )
    if x is not None:
        for name, item in models.items():
            shape = _feature_shape(item)
            if shape is not None:
                _check_x(name, x, shape)
    rows = []
    for name, item in models.items():
        if isinstance(item, keras.Model):
            row = _keras_row(item, x, y, latency_runs)
        else:
            row = _tflite_row(item, x, y, latency_runs)
        row["sparsity"] = 1.0 - row["nonzero"] / row["params"] if row["params"] else 0.0
        rows.append({"name": name, **row})
    return CompressionReport(rows)

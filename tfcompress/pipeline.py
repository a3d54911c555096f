"""Your own model to a smaller TFLite file in one call: `compress`.

The steps a user asks for run in a fixed order, each fine-tuned with the
model's own compile settings: structured unit pruning (`units`), magnitude
pruning (`prune`), weight clustering (`cluster`, keeping the pruned zeros),
quantization-aware training (`qat_epochs`, keeping zeros and clusters), then
the export (`quantization`). The file is checked against the Keras model it
came from and measured beside the untouched float model.
"""

import json
import os
import time

import keras
import numpy as np

from tfcompress import clustering, export, plots, pruning, surgery
from tfcompress import data as data_lib
from tfcompress.quantization import quantize_model
from tfcompress.report import compression_report

QUANTIZATIONS = (None, "dynamic", "float16", "int8", "int4", "int16x8")


class CompressionError(Exception):
    """The compressed file misses a bound the caller set (`max_drop`); nothing was written."""


class CompressResult:
    """What `compress` made.

    Attributes:
        model: the compressed Keras model (its TFLite file is `tflite`).
        tflite: the bytes of the TFLite file.
        report: a `CompressionReport` of the float model and the file (with
            accuracies when evaluation data was given).
        baseline_accuracy, file_accuracy: test accuracies (None without
            evaluation data).
        agreement: argmax agreement of the file with `model` on the evaluation
            inputs (None without them).
        steps: `(name, seconds)` of each step run.
    """

    def __init__(self, model, tflite, report, baseline_accuracy, file_accuracy, agreement, steps):
        self.model = model
        self.tflite = tflite
        self.report = report
        self.baseline_accuracy = baseline_accuracy
        self.file_accuracy = file_accuracy
        self.agreement = agreement
        self.steps = steps

    def summary(self):
        """A dict of the figures, as written to `<output>.report.json`."""
        return {
            "baseline_accuracy": self.baseline_accuracy,
            "file_accuracy": self.file_accuracy,
            "agreement": self.agreement,
            "tflite_bytes": len(self.tflite),
            "steps": [{"step": name, "seconds": round(s, 2)} for name, s in self.steps],
            "report": self.report.to_dict(),
        }


def _fraction(value, name, low=0.0, high=1.0):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or (
        not low < float(value) < high
    ):
        raise ValueError(
            f"`{name}` must be a number in ({low}, {high}). Received: {name}={value!r}"
        )
    return float(value)


def _count(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _epochs(n):
    return f"{n} epoch" + ("" if n == 1 else "s")


def _fine_tune_settings(model, loss, learning_rate):
    """A fresh optimizer like the model's own, and its loss (or `loss`)."""
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError(
            "The model has no loss to fine-tune with: compile it before saving, or pass "
            "`loss` (--loss). Received: loss=None"
        )
    own = getattr(model, "optimizer", None)
    if own is not None:
        config = keras.optimizers.serialize(own)

        def optimizer():
            fresh = keras.optimizers.deserialize(config)
            if learning_rate is not None:
                fresh.learning_rate = learning_rate
            return fresh
    else:

        def optimizer():
            return keras.optimizers.Adam(learning_rate or 1e-3)

    return optimizer, loss


def compress(
    model,
    train,
    eval=None,  # noqa: A002 - the word users use
    *,
    prune=None,
    units=None,
    cluster=None,
    qat_epochs=0,
    quantization="int8",
    max_drop=None,
    epochs=2,
    batch_size=32,
    seed=0,
    loss=None,
    learning_rate=None,
    output=None,
    verbose=1,
    log=None,
):
    """Compresses `model` for `train` data and exports it to TFLite.

    Args:
        model: a built Keras model, compiled (its loss and optimizer are used
            to fine-tune) unless `loss` is given. It is not changed.
        train: training data: `(x, y)` arrays, a `tf.data.Dataset` or a
            generator of `(x, y)` batches (read once into memory).
        eval: optional `(x, y)` test data (same forms): accuracies, the file's
            agreement with its Keras model, and `max_drop` need it.
        prune: final fraction of zero weights in (0, 1), reached by magnitude
            pruning on a polynomial schedule over the fine-tuning.
        units: fraction in (0, 1) of neurons and filters removed (`prune_units`).
        cluster: number of shared values per kernel (>= 2).
        qat_epochs: epochs of quantization-aware training for an `"int8"` file,
            or an `"int4"` one (`quantize_model(weight_bits=4)`: kernels on the
            int4 grid, which also brings clustered kernels onto it); 0: PTQ.
        quantization: `"int8"` (full integer, calibrated on `train`),
            `"int4"` (int4 weights), `"int16x8"` (int16 activations, calibrated
            on `train`), `"dynamic"`, `"float16"` or None (a float file); see
            `tfc.export.to_tflite`.
        max_drop: the most test accuracy (in points, 0-100) the file may lose
            against the float model; missing it raises `CompressionError` and
            writes nothing.
        epochs: fine-tuning epochs after each of `units`, `prune`, `cluster`.
        batch_size: fine-tuning batch size.
        seed: seed of every random choice (initialisations, shuffling).
        loss: loss for fine-tuning (default: the model's own).
        learning_rate: fine-tuning learning rate (default: the model's optimizer's).
        output: where to write the `.tflite` file (atomically), with
            `.report.md`, `.report.json` and, when matplotlib is installed,
            `.report.png` (size vs accuracy) and, after pruning,
            `.sparsity.png` beside it. None: nothing is written.
        verbose: 0 silent, 1 step lines and Keras progress bars.
        log: callable taking a line (default: `print` when `verbose`).

    Returns:
        A `CompressResult`.

    Raises:
        ValueError: for a bad argument (named, with the value received), before
            any training.
        CompressionError: when `max_drop` is not met (the message says what
            was reached); no file is written.

    Example:
        >>> result = tfc.compress(model, (x, y), (x_test, y_test), prune=0.8, qat_epochs=2)
        >>> result.file_accuracy, len(result.tflite)
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"`model` must be a built keras.Model. Received: model={model!r}")
    prune = _fraction(prune, "prune")
    units = _fraction(units, "units")
    if cluster is not None:
        cluster = _count(cluster, "cluster", 2)
    qat_epochs = _count(qat_epochs, "qat_epochs", 0)
    epochs = _count(epochs, "epochs", 1)
    batch_size = _count(batch_size, "batch_size", 1)
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}. "
            f"Received: quantization={quantization!r}"
        )
    if qat_epochs and quantization not in ("int8", "int4"):
        raise ValueError(
            "`qat_epochs` trains for an int8 or int4 file: pass quantization='int8' or 'int4'. "
            f"Received: quantization={quantization!r}"
        )
    if max_drop is not None and (
        isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0 <= max_drop
    ):
        raise ValueError(
            f"`max_drop` must be a number >= 0 (points). Received: max_drop={max_drop!r}"
        )
    if max_drop is not None and eval is None:
        raise ValueError("`max_drop` needs `eval` data to measure the drop. Received: eval=None")
    if learning_rate is not None and not (
        isinstance(learning_rate, (int, float)) and learning_rate > 0
    ):
        raise ValueError(
            f"`learning_rate` must be a number > 0. Received: learning_rate={learning_rate!r}"
        )
    x, y = data_lib.as_arrays(train, "train")
    if y is None:
        raise ValueError("`train` must hold labels: (x, y) arrays or batches of (x, y).")
    x_eval = y_eval = None
    if eval is not None:
        x_eval, y_eval = data_lib.as_arrays(eval, "eval")
        if y_eval is None:
            raise ValueError("`eval` must hold labels: (x, y) arrays or batches of (x, y).")
    spec = export.input_spec(model)
    for name, inputs in (("train", x), ("eval", x_eval)):
        if inputs is not None and tuple(inputs.shape[1:]) != tuple(
            d if d is not None else s for d, s in zip(spec.shape[1:], inputs.shape[1:])
        ):
            raise ValueError(
                f"`{name}` inputs must have shape (N, {', '.join(map(str, spec.shape[1:]))}) "
                f"to fit the model. Received: {name} x.shape={inputs.shape}"
            )
    optimizer, loss = _fine_tune_settings(model, loss, learning_rate)
    say = log or (print if verbose else (lambda line: None))

    plan = [name for name, on in (
        ("units", units), ("prune", prune), ("cluster", cluster), ("qat", qat_epochs),
    ) if on] + ["export"]
    steps = []

    def step(name, line):
        say(f"[{len(steps) + 1}/{len(plan)}] {line}")
        steps.append((name, time.perf_counter()))

    def done():
        name, start = steps[-1]
        steps[-1] = (name, time.perf_counter() - start)
        say(f"      done in {steps[-1][1]:.1f} s")

    def fit(m, n_epochs, callbacks=()):
        m.compile(optimizer(), loss)
        m.fit(x, y, epochs=n_epochs, batch_size=batch_size, verbose=1 if verbose else 0,
              callbacks=list(callbacks))
        return m

    keras.utils.set_random_seed(seed)
    work = surgery.copy_model(model)  # the caller's model stays as it is
    if units:
        step("units", f"removing {units:.0%} of the units (prune_units), {_epochs(epochs)}")
        work = fit(pruning.prune_units(work, units), epochs)
        done()
    if prune:
        step("prune", f"pruning 0 -> {prune:.0%} of the weights, {_epochs(epochs)}")
        steps_total = epochs * -(-len(x) // batch_size)
        schedule = pruning.PolynomialDecay(
            0.0, prune, 0, max(1, (2 * steps_total) // 3), frequency=max(1, steps_total // 20)
        )
        work = pruning.strip_pruning(fit(pruning.prune_low_magnitude(work, schedule), epochs))
        done()
    if cluster:
        step("cluster", f"clustering to {cluster} values per kernel, {_epochs(epochs)}")
        clustered = clustering.cluster_weights(
            work, cluster, preserve_sparsity=bool(prune), seed=seed
        )
        work = clustering.strip_clustering(fit(clustered, epochs))
        done()
    if qat_epochs:
        step("qat", f"quantization-aware training, {_epochs(qat_epochs)}")
        if quantization == "int4":
            qat = quantize_model(work, weight_bits=4)  # zeros stay zero on the int4 grid
        else:
            qat = quantize_model(
                work, preserve_sparsity=bool(prune), preserve_clusters=bool(cluster)
            )
        work = fit(qat, qat_epochs)
        done()
    step("export", f"exporting ({quantization or 'float'}) and checking the file")
    calibration = x[:300] if quantization in ("int8", "int16x8") and not qat_epochs else None
    blob = export.to_tflite(work, quantization=quantization, representative_data=calibration)
    report = compression_report(
        {"float (Keras)": model, "compressed (TFLite)": blob}, x_eval, y_eval, latency_runs=50
    )
    baseline = file_acc = agreement = None
    if x_eval is not None:
        rows = report.to_dict()
        baseline = rows["float (Keras)"]["accuracy"]
        file_acc = rows["compressed (TFLite)"]["accuracy"]
        lite = export.LiteModel(blob)
        ours = lite.predict(x_eval).argmax(-1)
        theirs = np.concatenate([
            keras.ops.convert_to_numpy(work(x_eval[i: i + 256], training=False))
            for i in range(0, len(x_eval), 256)
        ]).argmax(-1)
        agreement = float(np.mean(ours == theirs))
    done()
    result = CompressResult(work, blob, report, baseline, file_acc, agreement, steps)
    if baseline is not None:
        say(
            f"accuracy {100 * baseline:.2f}% (float Keras) -> {100 * file_acc:.2f}% (file); "
            f"the file agrees with its Keras model on {100 * agreement:.1f}%; "
            f"{len(blob):,} bytes"
        )
    if max_drop is not None and 100 * (baseline - file_acc) > max_drop:
        raise CompressionError(
            f"the file reached {100 * file_acc:.2f}% against {100 * baseline:.2f}% for the float "
            f"model, a drop of {100 * (baseline - file_acc):.2f} points, more than "
            f"max_drop={max_drop}; nothing was written"
        )
    if output is not None:
        write(result, output)
        say(f"wrote {output} and its report ({_report_paths(output)[0]}, ...)")
    return result


def _report_paths(output):
    stem = os.fspath(output)
    stem = stem[: -len(".tflite")] if stem.endswith(".tflite") else stem
    return [f"{stem}.report.{ext}" for ext in ("md", "json", "png")] + [f"{stem}.sparsity.png"]


def write(result, output):
    """Writes the file (atomically) and its report beside it; returns the paths written."""
    md, js, png, sparsity_png = _report_paths(output)
    export.write_atomic(output, result.tflite)
    export.write_atomic(md, (result.report.to_markdown() + "\n").encode())
    export.write_atomic(js, (json.dumps(result.summary(), indent=1) + "\n").encode())
    paths = [os.fspath(output), md, js]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return paths
    if result.baseline_accuracy is not None:
        paths.append(result.report.plot(png))
    if any(name == "prune" for name, _ in result.steps):
        paths.append(plots.sparsity(result.model, sparsity_png))
    return paths

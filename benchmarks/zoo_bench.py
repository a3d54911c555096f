"""The Keras CNN zoo through every technique, each file checked against its Keras model.

Run: `nice -n 10 python benchmarks/zoo_bench.py [--models mobilenetv2 resnet50 ...]`
(all models: about 2 hours on 2 cores; `--quick`: MobileNetV2 only, fewer epochs;
`--untrained`: QAT, int8 PTQ and `prune_units` of the untrained nets, a structural check;
`--tfmot-only`: the tfmot anchor column alone, which needs no training).
Sequence models (Conv1D, LSTM, GRU, SimpleRNN, BiLSTM, a transformer encoder) read the
digits row by row; a text encoder reads their 64 pixels as tokens, a ViT their 2x2 patches.

For each `keras.applications` model (random init, trained on the bundled digits
upscaled to 32x32 RGB) it prints one row per technique:

- `works`: the technique ran and its TFLite file loads; otherwise the error;
- `int8`: the file is fully int8 (no float compute op), and the float ops left;
- `agree`: argmax agreement of the file with the Keras model it was exported
  from (the compressed Keras model; for PTQ, the float model);
- `acc`: test accuracy of the float Keras model and of the file;
- `bytes` and `ms`: file size and LiteRT single-image latency at 1 thread.

Techniques (fine-tuned with Adam and a cosine decay): float file, dynamic range,
float16, int8 PTQ with the converter's calibration and with
`calibration="mse"`, int16x8 (int8 weights, int16 activations: the AI Edge
Quantizer), int8 with `recurrent="fused"` (recurrent nets only: TFLite's
integer LSTM op), QAT (3 epochs), magnitude pruning to 50% (6 epochs),
`prune_units(0.5)` (15 epochs; latency also at 96x96 input, where compute
outweighs the interpreter's fixed cost), clustering to 16 values per kernel
(3 epochs), `low_rank(energy=0.9)` (3 epochs).
With `--tfmot`, tfmot's QAT and pruning are tried on the same architectures in
legacy Keras (tf_keras, a subprocess) and reported as the anchor column.
"""

import argparse
import functools
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
import traceback
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

import tfcompress as tfc  # noqa: E402
from tfcompress.export import LiteModel, to_tflite  # noqa: E402

SIZE = 32
# model: (builder arguments, float epochs, inputs in 0..255 (the model rescales))
MODELS = {
    "MobileNet": (dict(alpha=0.25), 60, False),  # 25 epochs left it at 86.6%: close logits
    "MobileNetV2": (dict(alpha=0.35), 25, False),
    "MobileNetV3Small": (dict(alpha=0.75), 25, True),
    "MobileNetV3Large": (dict(alpha=0.75), 25, True),
    "EfficientNetB0": ({}, 25, True),
    "EfficientNetV2B0": ({}, 25, True),
    "ResNet50": ({}, 15, False),
    "ResNet50V2": ({}, 15, False),
    "DenseNet121": ({}, 15, False),
    "ConvNeXtTiny": ({}, 15, True),
    "Conv1D": (None, 30, False),  # a sensor-style 1-D CNN on the digits' 8 rows as a sequence
    # Recurrent nets on the same sequences (8 steps of 8 features).
    "LSTM": (None, 30, False),
    "GRU": (None, 30, False),
    "SimpleRNN": (None, 30, False),
    "BiLSTM": (None, 30, False),
    # Transformers: an encoder on the rows, a text encoder on the pixels as 64 tokens
    # (keras.io's TokenAndPositionEmbedding), a ViT on 2x2 patches (keras.io's PatchEncoder).
    "Encoder": (None, 30, False),
    "TextEncoder": (None, 30, False),
    "ViT": (None, 30, False),
}
RECURRENT = ("LSTM", "GRU", "SimpleRNN", "BiLSTM")
TRANSFORMERS = ("Encoder", "TextEncoder", "ViT")
SEQUENCES = ("Conv1D", *RECURRENT, "Encoder", "TextEncoder")
TECHNIQUES = (
    "float",
    "dynamic",
    "float16",
    "int8 ptq",
    "int8 ptq mse",
    "int16x8",
    "int8 fused",
    "qat",
    "prune 50%",
    "prune_units 0.5",
    "cluster 16",
    "low_rank 0.9",
)


def conv1d_net():
    L = keras.layers
    inputs = keras.Input((8, 8))
    x = inputs
    for filters in (32, 64, 64):
        x = L.Conv1D(filters, 3, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
    x = L.SeparableConv1D(64, 3, padding="same", activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(10, activation="softmax")(x), name="conv1d")


def recurrent_net(name, keras):
    """The recurrent zoo entries; `keras` is Keras 3 or tf_keras (the tfmot anchor)."""
    L = keras.layers
    layer = {
        "LSTM": lambda: L.LSTM(64),
        "GRU": lambda: L.GRU(64),
        "SimpleRNN": lambda: L.SimpleRNN(64),
        "BiLSTM": lambda: L.Bidirectional(L.LSTM(32)),
    }[name]()
    inputs = keras.Input((8, 8))
    outputs = L.Dense(10, activation="softmax")(layer(inputs))
    return keras.Model(inputs, outputs, name=name.lower())


def transformer_net(name, keras):
    """The transformer zoo entries, one block of width 32 with 4 heads; `keras` is Keras 3
    or tf_keras (the tfmot anchor). The custom layers are keras.io's."""
    import tensorflow as tf

    L = keras.layers

    class TokenAndPositionEmbedding(L.Layer):
        def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
            super().__init__(**kwargs)
            self.config = dict(maxlen=maxlen, vocab_size=vocab_size, embed_dim=embed_dim)
            self.token_emb = L.Embedding(vocab_size, embed_dim)
            self.pos_emb = L.Embedding(maxlen, embed_dim)

        def call(self, x):
            return self.token_emb(x) + self.pos_emb(tf.range(tf.shape(x)[-1]))

        def get_config(self):
            return {**super().get_config(), **self.config}

    class PatchEncoder(L.Layer):
        def __init__(self, num_patches, projection_dim, **kwargs):
            super().__init__(**kwargs)
            self.config = dict(num_patches=num_patches, projection_dim=projection_dim)
            self.projection = L.Dense(projection_dim)
            self.position_embedding = L.Embedding(num_patches, projection_dim)

        def call(self, patch):
            positions = tf.expand_dims(tf.range(self.config["num_patches"]), 0)
            return self.projection(patch) + self.position_embedding(positions)

        def get_config(self):
            return {**super().get_config(), **self.config}

    if name == "Encoder":
        inputs = keras.Input((8, 8))
        x = L.Dense(32)(inputs)
    elif name == "TextEncoder":
        inputs = keras.Input((64,), dtype="int32")
        x = TokenAndPositionEmbedding(64, 17, 32)(inputs)
    else:
        inputs = keras.Input((8, 8, 1))
        x = PatchEncoder(16, 32)(L.Reshape((16, 32))(L.Conv2D(32, 2, strides=2)(inputs)))
    x = L.LayerNormalization()(L.Add()([x, L.MultiHeadAttention(4, 8)(x, x)]))
    mlp = L.Dense(32)(L.Dense(64, activation="gelu")(x))
    x = L.LayerNormalization()(L.Add()([x, mlp]))
    outputs = L.Dense(10, activation="softmax")(L.GlobalAveragePooling1D()(x))
    return keras.Model(inputs, outputs, name=name.lower())


def build(name, size=SIZE):
    kwargs, _, _ = MODELS[name]
    keras.utils.set_random_seed(0)
    if name == "Conv1D":
        model = conv1d_net()
    elif name in TRANSFORMERS:
        model = transformer_net(name, keras)
    elif name in RECURRENT:
        model = recurrent_net(name, keras)
    else:
        model = getattr(keras.applications, name)(
            weights=None, input_shape=(size, size, 3), classes=10, **kwargs
        )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # moving statistics that settle within a short run
    return model


def data(name):
    if name == "TextEncoder":  # the 64 pixels as tokens 0..16
        (x, y), (xt, yt) = tfc.datasets.load_digits()
        return (np.rint(16 * x).astype("int32"), y), (np.rint(16 * xt).astype("int32"), yt)
    if name == "ViT":
        return tfc.datasets.load_digits(shape="image")
    if name in SEQUENCES:
        return tfc.datasets.load_digits(shape="sequence")
    (x, y), (xt, yt) = tfc.datasets.load_digits(shape="image", size=SIZE, channels=3)
    scale = 255.0 if MODELS[name][2] else 1.0
    return (x * scale, y), (xt * scale, yt)


def fit(model, x, y, epochs, lr, callbacks=()):
    steps = epochs * -(-len(x) // 32)
    schedule = keras.optimizers.schedules.CosineDecay(lr, max(steps, 1))
    model.compile(
        keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=list(callbacks))
    return model


def check(keras_model, blob, xt, yt, row):
    lite = LiteModel(blob, num_threads=1)
    ref = keras_model.predict(xt, verbose=0)
    out = lite.predict(xt)
    row.update(
        works=True,
        fully_int8=lite.is_fully_int8(),
        float_ops=sorted(lite.float_ops()),
        agree=float(np.mean(out.argmax(-1) == ref.argmax(-1))),
        max_err=float(np.abs(out - ref).max()),
        keras_acc=float(np.mean(ref.argmax(-1) == yt)),
        file_acc=float(np.mean(out.argmax(-1) == yt)),
        bytes=len(blob),
        ms=1e3 * lite.latency(runs=50, warmup=5),
    )
    return row


def applies(name, tech):
    """Whether `tech` means anything for model `name` (`int8 fused`: recurrent nets only)."""
    return tech != "int8 fused" or name in RECURRENT


def technique(name, tech, model, train, test, quick=False):
    """One row: `tech` applied to the trained `model`, fine-tuned, exported and checked.

    `quick=True` (the tests) fine-tunes one epoch and skips the 96x96 latency
    comparison of `prune_units`: agreement of the file is checked, not recovery.
    """
    (x, y), (xt, yt) = train, test

    def epochs(n):
        return 1 if quick else n

    row = {"model": name, "technique": tech}
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if tech in ("float", "dynamic", "float16"):
            quantization = None if tech == "float" else tech
            check(model, to_tflite(model, quantization=quantization), xt, yt, row)
        elif tech.startswith("int8 ptq"):
            calibration = "mse" if tech.endswith("mse") else "converter"
            blob = to_tflite(
                model, quantization="int8", representative_data=x[:300], calibration=calibration
            )
            check(model, blob, xt, yt, row)
        elif tech == "int16x8":
            blob = to_tflite(model, quantization="int16x8", representative_data=x[:300])
            check(model, blob, xt, yt, row)
        elif tech == "int8 fused":  # TFLite's fused (integer) LSTM op
            blob = to_tflite(
                model, quantization="int8", representative_data=x[:300], recurrent="fused"
            )
            check(model, blob, xt, yt, row)
        elif tech == "qat":
            qat = fit(tfc.quantization.quantize_model(model), x, y, epochs(3), 1e-4)
            blob = to_tflite(qat, quantization="int8")
            check(qat, blob, xt, yt, row)
            # In steps of the int8 softmax output (scale 1/256): every model here ends in one.
            errors = np.abs(LiteModel(blob).predict(xt) - qat.predict(xt, verbose=0)).max(-1)
            row["max_err_steps"] = float(errors.max() * 256)
            row["p99_err_steps"] = float(np.percentile(errors, 99) * 256)
            if not quick:
                row.update(logit_steps(qat, blob, xt))
        elif tech == "prune 50%":
            pruned = tfc.pruning.prune_low_magnitude(
                model, tfc.pruning.PolynomialDecay(0.0, 0.5, 0, 45 * epochs(3), frequency=5)
            )
            fit(pruned, x, y, epochs(6), 5e-4)
            stripped = tfc.pruning.strip_pruning(pruned)
            check(stripped, to_tflite(stripped), xt, yt, row)
            per_weight = tfc.pruning.get_sparsity(stripped).values()
            row["sparsity"], row["sparsity_max"] = min(per_weight), max(per_weight)
        elif tech == "prune_units 0.5":
            smaller = fit(tfc.pruning.prune_units(model, 0.5), x, y, epochs(15), 2e-3)
            check(smaller, to_tflite(smaller), xt, yt, row)
            row["params_ratio"] = smaller.count_params() / model.count_params()
            if not quick and MODELS[name][0] is not None:  # keras.applications only
                row.update(unit_speedups(name, model, smaller))
        elif tech == "cluster 16":
            clustered = fit(tfc.clustering.cluster_weights(model, 16), x, y, epochs(3), 1e-4)
            stripped = tfc.clustering.strip_clustering(clustered)
            check(stripped, to_tflite(stripped), xt, yt, row)
        elif tech == "low_rank 0.9":
            factored = fit(tfc.factorization.low_rank(model, energy=0.9), x, y, epochs(3), 3e-4)
            check(factored, to_tflite(factored), xt, yt, row)
            row["params_ratio"] = factored.count_params() / model.count_params()
    row["warnings"] = sorted(
        {
            str(w.message)[:160]
            for w in caught
            if "tfcompress" in (w.filename or "") or w.category is UserWarning
        }
    )
    row["seconds"] = time.perf_counter() - t0
    return row


def logit_steps(qat, blob, x):
    """How far the file's logits (the SOFTMAX input) are from the QAT model's, in their steps.

    The softmax output's 1/256 steps magnify a logit difference where the
    logits' own grid is coarse (a confident net's range spans tens of units):
    this is the error the int8 kernels themselves make.
    """
    head = qat.layers[-1].layer  # the wrapped softmax layer (an Activation or a Dense)
    softmax, captured = head.activation, []

    @functools.wraps(softmax)
    def capture(logits, *args, **kwargs):
        captured.append(np.asarray(logits))
        return softmax(logits, *args, **kwargs)

    head.activation = capture
    try:
        for i in range(0, len(x), 64):
            qat(x[i : i + 64], training=False)  # eager, so the logits can be read
    finally:
        head.activation = softmax
    keras_logits = np.concatenate(captured).reshape(len(x), -1)

    interpreter = Interpreter(model_content=blob, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    # The head's softmax is the last one run (attention has softmaxes of its own).
    op = [op for op in interpreter._get_ops_details() if op["op_name"] == "SOFTMAX"][-1]
    (logits_detail,) = [
        t for t in interpreter.get_tensor_details() if t["index"] == op["inputs"][0]
    ]
    scale, zero = logits_detail["quantization"]
    inp = interpreter.get_input_details()[0]
    file_logits = []
    for row in x:
        q = row[None]
        if inp["dtype"] == np.int8:
            s, z = inp["quantization"]
            q = np.clip(np.round(q / s + z), -128, 127)
        interpreter.set_tensor(inp["index"], q.astype(inp["dtype"]))
        interpreter.invoke()
        raw = interpreter.get_tensor(logits_detail["index"]).astype(np.float32)
        file_logits.append(((raw - zero) * scale).reshape(-1))
    errors = np.abs(np.stack(file_logits) - keras_logits).max(-1) / scale
    return {
        "logit_p99_steps": float(np.percentile(errors, 99)),
        "logit_max_steps": float(errors.max()),
        "logit_scale": float(scale),
    }


def unit_speedups(name, model, smaller, size=96, rounds=5):
    """LiteRT latency of the float file at 1 thread, full vs unit-pruned, at 96x96:
    best of `rounds` interleaved measurements each."""
    big = build(name, size)
    big.set_weights(model.get_weights())
    small = tfc.pruning.prune_units(big, 0.5)
    files = [LiteModel(to_tflite(m), num_threads=1) for m in (big, small)]
    best = [np.inf, np.inf]
    for _ in range(rounds):
        for i, lite in enumerate(files):
            best[i] = min(best[i], lite.latency(runs=30, warmup=5))
    return {
        "ms_96_full": 1e3 * best[0],
        "ms_96_units": 1e3 * best[1],
        "speedup_96": best[0] / best[1],
    }


TFMOT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"; os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, tf_keras as keras, tensorflow_model_optimization as tfmot
    import tensorflow as tf
    name, kwargs, size = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    if kwargs is None:
        exec(sys.argv[4])  # defines recurrent_net and transformer_net
        model = globals()[sys.argv[5]](name, keras)
    else:
        model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                                  classes=10, **kwargs)
    out = {}
    for tech in ("qat", "prune"):
        try:
            if tech == "qat":
                m = tfmot.quantization.keras.quantize_model(model)
            else:
                m = tfmot.sparsity.keras.prune_low_magnitude(
                    model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
                m = tfmot.sparsity.keras.strip_pruning(m)
            c = tf.lite.TFLiteConverter.from_keras_model(m)
            if tech == "qat":
                c.optimizations = [tf.lite.Optimize.DEFAULT]
            c.convert()
            out[tech] = "converts"
        except Exception as e:
            out[tech] = "fails: " + f"{type(e).__name__}: {e}".splitlines()[0][:120]
    print(json.dumps(out))
""")


def tfmot_anchor(name):
    kwargs = MODELS[name][0]
    if kwargs is None and name not in RECURRENT + TRANSFORMERS:
        return {}
    source = inspect.getsource(recurrent_net) + inspect.getsource(transformer_net)
    builder = "transformer_net" if name in TRANSFORMERS else "recurrent_net"
    proc = subprocess.run(
        [sys.executable, "-c", TFMOT, name, json.dumps(kwargs), str(SIZE), source, builder],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"qat": "no result", "prune": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(lines[-1])


def untrained(name, latency=False):
    """A structural check without training (minutes, not hours, for the big nets).

    QAT (ranges from two training-mode calls on digit images), int8 PTQ and
    `prune_units(0.5)` of the randomly initialized model: which files are fully
    int8, the float ops left, the layers QAT leaves float, and how far each file
    is from its Keras model (the int8 files in steps of the softmax's 1/256).
    """
    t0 = time.perf_counter()
    model = build(name)
    (x, _), _ = data(name)
    x = x[:64]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat = tfc.quantization.quantize_model(model)
    left_float = [str(w.message)[:160] for w in caught if "float" in str(w.message)]
    for batch in (x[:32], x[32:]):
        qat(batch, training=True)
    row = {"model": name, "parameters": model.count_params(), "qat_left_float": left_float}
    for label, keras_model, blob in (
        ("qat", qat, lambda: to_tflite(qat, quantization="int8")),
        ("ptq", model, lambda: to_tflite(model, quantization="int8", representative_data=x)),
    ):
        lite = LiteModel(blob())
        steps = np.abs(lite.predict(x) - keras_model.predict(x, verbose=0)) * 256
        row[label] = {
            "fully_int8": lite.is_fully_int8(),
            "float_ops": sorted(lite.float_ops()),
            "bytes": lite.size,
            "max_steps": float(steps.max()),
            "p99_steps": float(np.percentile(steps, 99)),
        }
    smaller = tfc.pruning.prune_units(model, 0.5)
    lite = LiteModel(to_tflite(smaller))
    row["prune_units"] = {
        "params_ratio": smaller.count_params() / model.count_params(),
        "file_max_abs_err": float(np.abs(lite.predict(x) - smaller.predict(x, verbose=0)).max()),
    }
    if latency and MODELS[name][0] is not None:  # latency does not depend on training
        row["prune_units"].update(unit_speedups(name, model, smaller))
    row["seconds"] = time.perf_counter() - t0
    return row


def trained(name, epochs=None):
    """The model trained on the upscaled digits, its data and its test accuracy."""
    train, test = data(name)
    model = fit(build(name), *train, epochs or MODELS[name][1], 2e-3)
    return model, train, test, float(model.evaluate(*test, verbose=0)[1])


def run_model(name, techniques, epochs, tfmot):
    t0 = time.perf_counter()
    model, train, test, float_acc = trained(name, epochs)
    print(
        f"# {name}: {model.count_params():,} parameters, float accuracy {float_acc:.4f} "
        f"after {time.perf_counter() - t0:.0f} s of training",
        flush=True,
    )
    anchor = tfmot_anchor(name) if tfmot else {}
    rows = []
    for tech in techniques:
        if not applies(name, tech):
            continue
        try:
            row = technique(name, tech, model, train, test)
        except Exception as e:  # a failure is a result of this benchmark
            row = {
                "model": name,
                "technique": tech,
                "works": False,
                "error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
            }
            traceback.print_exc(limit=3)
        row["float_acc"] = float_acc
        if tech == "qat" and anchor:
            row["tfmot"] = anchor.get("qat")
        if tech == "prune 50%" and anchor:
            row["tfmot"] = anchor.get("prune")
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows):
    lines = [
        "| model | technique | works | fully int8 (float ops) | agree | float acc | file acc "
        "| bytes | ms | notes | tfmot |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.get("works"):
            lines.append(
                f"| {r['model']} | {r['technique']} | **no**: {r.get('error', '')} "
                "| | | | | | | | |"
            )
            continue
        if r["technique"] == "int16x8":  # int16 activations by design: name float ops only
            int8 = f"int16 ({', '.join(r['float_ops'])} float)" if r["float_ops"] else "int16"
        elif r["technique"] not in ("int8 ptq", "int8 ptq mse", "int8 fused", "qat"):
            int8 = "-"  # a float (or dynamic-range) file by design
        else:
            int8 = "yes" if r["fully_int8"] else f"no ({', '.join(r['float_ops'])})"
        notes = []
        if "max_err_steps" in r:
            notes.append(
                f"output err p99 {r['p99_err_steps']:.0f}, max {r['max_err_steps']:.0f} "
                "steps of 1/256"
                + (
                    f"; logits p99 {r['logit_p99_steps']:.0f}, max {r['logit_max_steps']:.0f} "
                    f"steps of {r['logit_scale']:.3g}"
                    if "logit_p99_steps" in r
                    else ""
                )
            )
        if "sparsity" in r:
            notes.append(f"sparsity {r['sparsity']:.2f}-{r['sparsity_max']:.2f}")
        if "params_ratio" in r:
            notes.append(f"params {r['params_ratio']:.2f}x")
        if "speedup_96" in r:
            notes.append(
                f"96px {r['ms_96_full']:.1f}->{r['ms_96_units']:.1f} ms ({r['speedup_96']:.2f}x)"
            )
        lines.append(
            f"| {r['model']} | {r['technique']} | yes | {int8} | {100 * r['agree']:.1f}% "
            f"| {100 * r['float_acc']:.1f} | {100 * r['file_acc']:.1f} | {r['bytes']:,} "
            f"| {r['ms']:.2f} | {'; '.join(notes)} | {r.get('tfmot', '')} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--techniques", nargs="+", default=list(TECHNIQUES), choices=TECHNIQUES)
    parser.add_argument("--epochs", type=int, default=None, help="float epochs (default per model)")
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 only, 10 epochs")
    parser.add_argument("--tfmot", action="store_true", help="tfmot anchor column (subprocess)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument(
        "--untrained", action="store_true", help="structural QAT/PTQ/prune_units check only"
    )
    parser.add_argument(
        "--latency", action="store_true", help="with --untrained: prune_units speed-up at 96x96"
    )
    parser.add_argument(
        "--tfmot-only", action="store_true", help="only tfmot's QAT and pruning (architecture)"
    )
    args = parser.parse_args()
    if args.tfmot_only:
        for name in args.models:
            print(json.dumps({"model": name, **tfmot_anchor(name)}), flush=True)
        return
    if args.untrained:
        for name in args.models:
            try:
                print(json.dumps(untrained(name, args.latency)), flush=True)
            except Exception as e:  # a failure is a result of this benchmark
                print(json.dumps({"model": name, "error": f"{type(e).__name__}: {e}"[:300]}))
                traceback.print_exc(limit=3)
        return
    if args.quick:
        args.models, args.epochs = ["MobileNetV2"], 10
    rows = []
    for name in args.models:
        rows += run_model(name, args.techniques, args.epochs, args.tfmot)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

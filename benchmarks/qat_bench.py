"""QAT benchmark: float vs PTQ int8 vs QAT int8 on digits, beside tfmot in one run.

Run: `nice -n 10 python benchmarks/qat_bench.py` (about 4 minutes on 2 cores).

Prints, for a digits MLP (64-256-128-10) and a small CNN with BatchNorm:
float accuracy, PTQ int8 accuracy/size, QAT int8 accuracy/size, agreement of the
QAT TFLite file with the QAT Keras model, LiteRT latency int8 vs float; then the
training overhead of QAT over plain training on an MLP 784-1024-1024-10 at batch
256. The tfmot anchors (legacy Keras: float, PTQ int8 and QAT int8 accuracy and
size on the same digits split, QAT training overhead) run in a subprocess in the
same run.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402

FLOAT_EPOCHS = 30
QAT_EPOCHS = 5
L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64,)),
            L.Dense(256, activation="relu"),
            L.Dense(128, activation="relu"),
            L.Dense(10),
        ]
    )


def cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(32, 3, padding="same", use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(64, 3, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.Flatten()(x)
    return keras.Model(inputs, L.Dense(10)(x))


def fit(model, x, y, epochs, lr):
    model.compile(keras.optimizers.Adam(lr), LOSS, metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def digits_row(name, build, data):
    (x, y), (x_test, y_test) = data
    out_dir = tempfile.mkdtemp(prefix="qat-bench-")
    model = fit(build(), x, y, FLOAT_EPOCHS, 1e-3)
    float_acc = model.evaluate(x_test, y_test, verbose=0)[1]
    float_blob = tfc.export.to_tflite(model, os.path.join(out_dir, "float.tflite"))
    ptq_blob = tfc.export.to_tflite(
        model, quantization="int8", representative_data=x[:300], int8_io=True
    )
    qat = fit(tfc.quantization.quantize_model(model), x, y, QAT_EPOCHS, 1e-4)
    qat_blob = tfc.export.to_tflite(qat, quantization="int8", int8_io=True)
    lite_float = tfc.export.LiteModel(float_blob, num_threads=1)
    lite_ptq = tfc.export.LiteModel(ptq_blob, num_threads=1)
    lite_qat = tfc.export.LiteModel(qat_blob, num_threads=1)
    qat_keras = np.argmax(qat.predict(x_test, verbose=0), -1)
    row = {
        "model": name,
        "float_acc": float_acc,
        "float_bytes": len(float_blob),
        "ptq_acc": lite_ptq.evaluate(x_test, y_test),
        "ptq_bytes": len(ptq_blob),
        "qat_acc": lite_qat.evaluate(x_test, y_test),
        "qat_bytes": len(qat_blob),
        "qat_fully_int8": lite_qat.is_fully_int8(),
        "agreement": float(np.mean(np.argmax(lite_qat.predict(x_test), -1) == qat_keras)),
        "latency_float_us": 1e6 * lite_float.latency(x_test[:1]),
        "latency_int8_us": 1e6 * lite_qat.latency(x_test[:1]),
    }
    row["size_ratio"] = row["qat_bytes"] / row["float_bytes"]
    return row


def interleaved_epochs(plain, qat, x, y, pairs=9):
    """Alternates one plain and one QAT epoch `pairs` times after a warm-up of each.

    Interleaving keeps both models under the same machine load (the machine is
    shared); the ratio is the median of the per-pair ratios.
    """
    for model in (plain, qat):
        model.compile(keras.optimizers.Adam(1e-3), LOSS)
        model.fit(x, y, batch_size=256, epochs=2, verbose=0)  # trace and warm up
    times = {"plain": [], "qat": []}
    for _ in range(pairs):
        for name, model in (("plain", plain), ("qat", qat)):
            start = time.perf_counter()
            model.fit(x, y, batch_size=256, epochs=1, verbose=0)
            times[name].append(time.perf_counter() - start)
    ratios = np.array(times["qat"]) / np.array(times["plain"])
    return {
        "plain_s": float(np.median(times["plain"])),
        "qat_s": float(np.median(times["qat"])),
        "ratio": float(np.median(ratios)),
    }


def overhead():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8192, 784)).astype(np.float32)
    y = rng.integers(0, 10, 8192)

    def big():
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((784,)),
                L.Dense(1024, activation="relu"),
                L.Dense(1024, activation="relu"),
                L.Dense(10),
            ]
        )

    return interleaved_epochs(big(), tfc.quantization.quantize_model(big()), x, y)


TFMOT_CODE = """
import json, os, time, tempfile
import numpy as np
import tensorflow_model_optimization as tfmot
import tensorflow as tf
k = tf.keras
FLOAT_EPOCHS, QAT_EPOCHS = {float_epochs}, {qat_epochs}
# The same split as tfcompress's run (tfc.datasets.load_digits), saved by the parent.
data = np.load({data_path!r})
x, y, x_test, y_test = data["x"], data["y"], data["x_test"], data["y_test"]
loss = k.losses.SparseCategoricalCrossentropy(from_logits=True)
def mlp(shape=(64,), hidden=(256, 128)):
    tf.keras.utils.set_random_seed(0)
    layers = [k.Input(shape)] + [k.layers.Dense(h, activation="relu") for h in hidden]
    return k.Sequential(layers + [k.layers.Dense(10)])
def size(model, quant=False, representative=None):
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if quant:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is not None:
        conv.representative_dataset = lambda: ([row[None]] for row in representative)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return conv.convert()
def lite_acc(blob):
    it = tf.lite.Interpreter(model_content=blob)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    pred = []
    for row in x_test:
        it.set_tensor(i["index"], row[None])
        it.invoke()
        pred.append(np.argmax(it.get_tensor(o["index"])))
    return float(np.mean(np.array(pred) == y_test))
m = mlp()
m.compile(k.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
m.fit(x, y, epochs=FLOAT_EPOCHS, batch_size=32, verbose=0)
float_acc = m.evaluate(x_test, y_test, verbose=0)[1]
ptq = size(m, quant=True, representative=x[:300])
q = tfmot.quantization.keras.quantize_model(m)
q.compile(k.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
q.fit(x, y, epochs=QAT_EPOCHS, batch_size=32, verbose=0)
blob = size(q, quant=True)
out = dict(float_acc=float_acc, ptq_acc=lite_acc(ptq), ptq_bytes=len(ptq),
           qat_acc=lite_acc(blob), qat_bytes=len(blob), float_bytes=len(size(m)))
rng = np.random.default_rng(0)
bx = rng.uniform(size=(8192, 784)).astype(np.float32)
by = rng.integers(0, 10, 8192)
plain_m = mlp((784,), (1024, 1024))
qat_m = tfmot.quantization.keras.quantize_model(mlp((784,), (1024, 1024)))
for model in (plain_m, qat_m):
    model.compile(k.optimizers.Adam(1e-3), loss)
    model.fit(bx, by, batch_size=256, epochs=2, verbose=0)
t = {{"plain": [], "qat": []}}
for _ in range(9):
    for name, model in (("plain", plain_m), ("qat", qat_m)):
        s = time.perf_counter()
        model.fit(bx, by, batch_size=256, epochs=1, verbose=0)
        t[name].append(time.perf_counter() - s)
plain, qat = float(np.median(t["plain"])), float(np.median(t["qat"]))
ratio = float(np.median(np.array(t["qat"]) / np.array(t["plain"])))
out.update(plain_s=plain, qat_s=qat, ratio=ratio)
print(json.dumps(out))
"""


def tfmot_anchor(digits):
    (x, y), (x_test, y_test) = digits
    data_path = os.path.join(tempfile.mkdtemp(prefix="qat-bench-"), "digits.npz")
    np.savez(data_path, x=x, y=y, x_test=x_test, y_test=y_test)
    code = TFMOT_CODE.format(float_epochs=FLOAT_EPOCHS, qat_epochs=QAT_EPOCHS, data_path=data_path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    start = time.time()
    print(f"load before: {os.getloadavg()}")
    digits = tfc.datasets.load_digits()
    digits_image = tfc.datasets.load_digits(shape="image")
    rows = [
        digits_row("MLP 64-256-128-10", mlp, digits),
        digits_row("CNN 32-64 +BN", cnn, digits_image),
    ]
    header = (
        f"{'model':22s} {'float':>6s} {'PTQ':>6s} {'QAT':>6s} {'float B':>8s} {'PTQ B':>7s} "
        f"{'QAT B':>7s} {'ratio':>6s} {'agree':>6s} {'int8':>5s} {'lat f us':>8s} {'lat q us':>8s}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['model']:22s} {100 * r['float_acc']:6.2f} {100 * r['ptq_acc']:6.2f} "
            f"{100 * r['qat_acc']:6.2f} {r['float_bytes']:8d} {r['ptq_bytes']:7d} "
            f"{r['qat_bytes']:7d} {r['size_ratio']:6.3f} {100 * r['agreement']:6.2f} "
            f"{str(r['qat_fully_int8']):>5s} {r['latency_float_us']:8.1f} "
            f"{r['latency_int8_us']:8.1f}"
        )
    ours = overhead()
    print(
        "tfcompress QAT overhead (784-1024-1024-10, batch 256, 8192 samples): "
        f"plain {ours['plain_s']:.3f} s/epoch, QAT {ours['qat_s']:.3f} s/epoch, "
        f"ratio {ours['ratio']:.2f}x"
    )
    anchor = tfmot_anchor(digits)
    print(f"tfmot anchor (same run, legacy Keras subprocess): {json.dumps(anchor)}")
    if "error" not in anchor:
        print(
            f"tfmot QAT digits MLP: float {100 * anchor['float_acc']:.2f}, PTQ int8 "
            f"{100 * anchor['ptq_acc']:.2f} ({anchor['ptq_bytes']} bytes), QAT int8 "
            f"{100 * anchor['qat_acc']:.2f}, {anchor['qat_bytes']} bytes "
            f"(float file {anchor['float_bytes']}); overhead ratio {anchor['ratio']:.2f}x"
        )
    mlp_row = rows[0]
    print(
        "goals: QAT int8 within 0.3 points of float: "
        f"{100 * (mlp_row['qat_acc'] - mlp_row['float_acc']):+.2f} points (MLP), "
        f"{100 * (rows[1]['qat_acc'] - rows[1]['float_acc']):+.2f} (CNN); "
        f"size ratio {mlp_row['size_ratio']:.3f} (goal <= 0.27); overhead {ours['ratio']:.2f}x "
        "(goal <= 1.3)"
    )
    print(f"load after: {os.getloadavg()}; wall {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()

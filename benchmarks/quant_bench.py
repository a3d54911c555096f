"""Beyond uniform int8: int4, int16x8 and accuracy-bounded mixed precision, beside AEQ's recipes.

Run: `nice -n 10 python benchmarks/quant_bench.py [--zoo MobileNetV2]`

On the digits MLP 64-256-128-10 (and, with `--zoo NAME`, on a model of
`benchmarks/zoo_bench.py` trained on the upscaled digits) it prints one row
per file: bytes, test accuracy, argmax agreement with the float Keras model,
whether every compute op is int8, and seconds to make it. Ours: the
converter's int8, `calibration="mse"`, int8 `per_tensor` (one scale per kernel,
convolutions too), `"int4"`, `"int16x8"`, and `max_accuracy_drop` (int8, int8
per tensor and int4, 0.5 points; with the layers kept float and the files
evaluated). Anchors in the same run: the AI Edge Quantizer's
own recipes applied directly to the same float file (`static_wi8_ai8`,
`dynamic_wi4_afp32`, `weight_only_wi4_afp32`, `static_wi8_ai16`).

A second table (digits MLP) takes int4 further: `quantize_model(weight_bits=4)`
fine-tuned 1 epoch, and 16-cluster models (three clustering seeds) exported
to int4 as they are (the file rounds the centroids onto its grid) and after
int4 QAT (2 epochs at 1e-4): accuracy of each file beside its Keras model's, and
the argmax agreement of the QAT files with their Keras QAT models.
"""

import argparse
import importlib.util
import os
import pathlib
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402
from tfcompress.export import LiteModel, to_tflite  # noqa: E402
from tfcompress.quantization import litert  # noqa: E402

ANCHORS = ("static_wi8_ai8", "dynamic_wi4_afp32", "weight_only_wi4_afp32", "static_wi8_ai16")


def digits_mlp():
    (x, y), (xt, yt) = tfc.datasets.load_digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=20, verbose=0)
    return model, (x, y), (xt, yt)


def zoo_model(name):
    path = pathlib.Path(__file__).with_name("zoo_bench.py")
    spec = importlib.util.spec_from_file_location("zoo_bench", path)
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    model, train, test, _ = zoo.trained(name)
    return model, train, test


def rows_for(model, train, test):
    (x, _), (xt, yt) = train, test
    reference = model.predict(xt, verbose=0).argmax(-1)
    cal = x[:300]
    float_blob = to_tflite(model)

    def row(name, make):
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            blob = make()
        seconds = time.perf_counter() - t0
        lite = LiteModel(blob)
        out = lite.predict(xt).argmax(-1)
        notes = [str(w.message).split(" (")[0] for w in caught if "stay float" in str(w.message)]
        return {
            "file": name,
            "bytes": len(blob),
            "acc": float(np.mean(out == yt)),
            "agree": float(np.mean(out == reference)),
            "int8": lite.is_fully_int8(),
            "s": seconds,
            "notes": "; ".join(notes),
        }

    rows = [
        row("float", lambda: float_blob),
        row("ours int8 (converter)", lambda: to_tflite(model, quantization="int8",
                                                      representative_data=cal)),
        row("ours int8 mse", lambda: to_tflite(model, quantization="int8",
                                              representative_data=cal, calibration="mse")),
        row("ours int8 per_tensor", lambda: to_tflite(model, quantization="int8",
                                                     representative_data=cal, per_tensor=True)),
        row("ours int4", lambda: to_tflite(model, quantization="int4")),
        row("ours int16x8", lambda: to_tflite(model, quantization="int16x8",
                                             representative_data=cal)),
    ]
    for mode, per_tensor in (("int8", False), ("int8", True), ("int4", False)):
        result = {}

        def bounded(mode=mode, per_tensor=per_tensor, result=result):
            res = tfc.quantization.mixed_precision(model, test, 0.5, quantization=mode,
                                                   float_file=float_blob, per_tensor=per_tensor)
            result["res"] = res
            return res.tflite

        name = f"ours {mode}{' per_tensor' if per_tensor else ''} max_accuracy_drop=0.5"
        r = row(name, bounded)
        res = result["res"]
        r["notes"] = f"float: {res.kept_float or 'none'}; {res.evaluations} files evaluated"
        rows.append(r)
    for name in ANCHORS:
        rows.append(row(f"AEQ {name}", lambda name=name: litert.quantize_file(
            float_blob, litert.resolve(name), cal)))
    return rows


def int4_rows(model, train, test, seeds=(0, 1, 2)):
    (x, y), (xt, yt) = train, test
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def accuracy(out):
        return float(np.mean(np.asarray(out).argmax(-1) == yt))

    def fine_tuned(float_model, epochs):
        qat = tfc.quantization.quantize_model(float_model, weight_bits=4)
        qat.compile(keras.optimizers.Adam(1e-4), loss)
        qat.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        keras_out = qat.predict(xt, verbose=0)
        lite_out = LiteModel(to_tflite(qat, quantization="int4")).predict(xt)
        agree = float(np.mean(keras_out.argmax(-1) == lite_out.argmax(-1)))
        return accuracy(lite_out), accuracy(keras_out), agree

    rows = []
    float_acc = accuracy(model.predict(xt, verbose=0))
    ptq = accuracy(LiteModel(to_tflite(model, quantization="int4")).predict(xt))
    rows.append(("float model, int4 file (PTQ)", float_acc, ptq, ""))
    file_acc, keras_acc, agree = fine_tuned(model, 1)
    rows.append(("int4 QAT 1 epoch", keras_acc, file_acc, f"agree {100 * agree:.2f}%"))
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        clustered = tfc.clustering.cluster_weights(model, 16, seed=seed)
        clustered.compile(keras.optimizers.Adam(1e-4), loss)
        clustered.fit(x, y, epochs=2, batch_size=32, verbose=0)
        clustered = tfc.clustering.strip_clustering(clustered)
        c_acc = accuracy(clustered.predict(xt, verbose=0))
        snapped = accuracy(LiteModel(to_tflite(clustered, quantization="int4")).predict(xt))
        rows.append((f"16 clusters (seed {seed}), int4 file", c_acc, snapped,
                     f"{100 * (snapped - c_acc):+.2f} points"))
        keras.utils.set_random_seed(seed)
        file_acc, _, agree = fine_tuned(clustered, 2)
        rows.append((f"16 clusters (seed {seed}) + int4 QAT 2 epochs", c_acc, file_acc,
                     f"{100 * (file_acc - c_acc):+.2f} points vs clustered; "
                     f"agree {100 * agree:.2f}%"))
    lines = ["int4 QAT and 16 clusters onto the int4 grid (digits MLP)",
             f"{'model':46} {'keras acc':>9} {'file acc':>9}  notes"]
    lines += [f"{name:46} {100 * k:9.2f} {100 * f:9.2f}  {note}" for name, k, f, note in rows]
    return "\n".join(lines)


def table(title, rows):
    lines = [f"{title}", f"{'file':44} {'bytes':>10} {'x int8':>7} {'acc':>7} {'agree':>7} "
             f"{'int8':>5} {'s':>6}  notes"]
    int8 = next(r["bytes"] for r in rows if r["file"].startswith("ours int8 (converter)"))
    for r in rows:
        lines.append(
            f"{r['file']:44} {r['bytes']:>10,} {r['bytes'] / int8:7.2f} {100 * r['acc']:7.2f} "
            f"{100 * r['agree']:6.2f}% {str(r['int8']):>5} {r['s']:6.1f}  {r['notes']}"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="also a zoo_bench.py model, e.g. MobileNetV2")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()}")
    model, train, test = digits_mlp()
    print(table("digits MLP 64-256-128-10", rows_for(model, train, test)), flush=True)
    print(int4_rows(model, train, test), flush=True)
    if args.zoo:
        model, train, test = zoo_model(args.zoo)
        print(table(f"{args.zoo} (zoo_bench.py)", rows_for(model, train, test)))


if __name__ == "__main__":
    main()

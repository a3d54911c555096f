"""Per-format size, accuracy and LiteRT latency of the digits MLP and CNN.

Anchor, measured in the same run: the recipe tfmot documents for post-training
quantization (legacy Keras 2 through tf-keras, `TFLiteConverter.from_keras_model`,
full int8 with a representative dataset), on the same MLP 64-256-128-10 and the
same data, in a subprocess so this process stays on Keras 3.

Run: python benchmarks/export_bench.py
"""

import json
import os
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402
from tfcompress.demo.foundation_step import FORMATS, digits_cnn, digits_mlp, train  # noqa: E402

ANCHOR = r"""
import json, os
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tensorflow as tf, tf_keras as keras
import tfcompress.datasets as ds
(x, y), (xt, yt) = ds.load_digits()
keras.utils.set_random_seed(0)
m = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                      keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
m.compile(keras.optimizers.Adam(1e-3),
          keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
m.fit(x, y, epochs=30, batch_size=32, verbose=0)
def convert(int8):
    c = tf.lite.TFLiteConverter.from_keras_model(m)
    if int8:
        c.optimizations = [tf.lite.Optimize.DEFAULT]
        c.representative_dataset = lambda: ([r[None]] for r in x[:200])
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return c.convert()
def acc(blob):
    it = tf.lite.Interpreter(model_content=blob); d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], [len(xt), 64]); it.allocate_tensors()
    it.set_tensor(d["index"], xt); it.invoke()
    return float(np.mean(np.argmax(it.get_tensor(it.get_output_details()[0]["index"]), -1) == yt))
f, q = convert(False), convert(True)
print(json.dumps({"float": [len(f), acc(f)], "int8": [len(q), acc(q)]}))
"""


def anchor():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(ANCHOR)], capture_output=True,
                          text=True, env=env, timeout=600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    print(f"tfcompress export benchmark, load average {os.getloadavg()}")
    results = {}
    for tag, make, data, epochs in (
        ("mlp", digits_mlp, tfc.datasets.load_digits(), 30),
        ("cnn", digits_cnn, tfc.datasets.load_digits(shape="image"), 20),
    ):
        (x, y), (xt, yt) = data
        model = train(make(), x, y, epochs=epochs)
        keras_acc = float(np.mean(np.argmax(model.predict(xt, verbose=0), -1) == yt))
        print(f"\n{tag}: keras accuracy {keras_acc:.4f}")
        print(f"{'format':8} {'bytes':>9} {'x float':>8} {'accuracy':>9} {'latency us':>11} "
              f"{'fully int8':>10} {'convert s':>9}")
        float_size = None
        for name, quantization in FORMATS.items():
            start = time.perf_counter()
            blob = tfc.export.to_tflite(
                model, quantization=quantization,
                representative_data=x[:200] if quantization == "int8" else None)
            seconds = time.perf_counter() - start
            lite = tfc.export.LiteModel(blob, num_threads=1)
            float_size = float_size or len(blob)
            row = (len(blob), len(blob) / float_size, lite.evaluate(xt, yt),
                   lite.latency(runs=500) * 1e6, lite.is_fully_int8(), seconds)
            results[f"{tag}_{name}"] = row
            print(f"{name:8} {row[0]:9,} {row[1]:8.3f} {row[2]:9.4f} {row[3]:11.2f} "
                  f"{str(row[4]):>10} {row[5]:9.1f}")
    ref = anchor()
    print("\nanchor (legacy Keras + TFLiteConverter.from_keras_model, same MLP, same run):")
    for name in ("float", "int8"):
        size, acc = ref[name]
        ours = results[f"mlp_{name}"]
        print(f"  {name:6} anchor {size:9,} bytes acc {acc:.4f} | tfcompress {ours[0]:9,} bytes "
              f"acc {ours[2]:.4f}")
    print(f"  int8/float size: anchor {ref['int8'][0] / ref['float'][0]:.3f}, "
          f"tfcompress {results['mlp_int8'][1]:.3f}")


if __name__ == "__main__":
    main()

"""Pruning benchmark: tfcompress beside tfmot (legacy Keras, in a subprocess).

Run: `nice -n 10 python benchmarks/pruning_bench.py` (about 4 minutes on 2 cores).

1. Digits MLP 64-256-128-10, float training then 0 -> 80% pruning over 10
   fine-tune epochs: kernel sparsity, test accuracy, gzip of the weights.
2. Training overhead: epoch time of the pruned fit / plain fit, MLP
   784-1024-1024-10, batch 256, frequency 10, synthetic data (median of
   interleaved epochs).
3. prune_units at 50%: TFLite size and single-sample latency (1 thread) vs
   the unpruned model, accuracy after fine-tuning.
"""

import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

COMMON = """
import gzip, io, json, time
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

def digits():
    d = load_digits()
    x = (d.data / 16.0).astype("float32"); y = d.target.astype("int32")
    return train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)

def gzip_size(arrays):
    buf = io.BytesIO(); np.savez(buf, *arrays)
    return len(gzip.compress(buf.getvalue(), 9))

def mlp(keras, sizes):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((sizes[0],))]
    layers += [keras.layers.Dense(s, activation="relu") for s in sizes[1:-1]]
    layers.append(keras.layers.Dense(sizes[-1]))
    return keras.Sequential(layers)

class EpochTimer:
    def __init__(self): self.times = []

FLOAT_EPOCHS, PRUNE_EPOCHS, BATCH = 20, 10, 32
OVERHEAD_STEPS, OVERHEAD_ROUNDS = 30, 4
"""

DIGITS_TASK = """
x, xt, y, yt = digits()
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model = mlp(keras, [64, 256, 128, 10])
model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
model.fit(x, y, epochs=FLOAT_EPOCHS, batch_size=BATCH, verbose=0)
float_acc = model.evaluate(xt, yt, verbose=0)[1]
float_gzip = gzip_size([w.numpy() for w in model.weights])
float_weights = model.get_weights()
end = int(np.ceil(len(x) / BATCH)) * PRUNE_EPOCHS
pm = PRUNE(model, pruning_schedule=S.PolynomialDecay(0.0, 0.8, 0, end, frequency=100))
pm.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
pm.fit(x, y, epochs=PRUNE_EPOCHS, batch_size=BATCH, verbose=0, callbacks=[S.UpdatePruningStep()])
final = S.strip_pruning(pm)
kernels = [w.numpy() for w in final.weights if w.name.endswith("kernel") or "kernel" in w.name]
zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
accuracy = float(np.mean(np.argmax(final.predict(xt, verbose=0), -1) == yt))
result["digits"] = dict(float_accuracy=float_acc, accuracy=accuracy,
    sparsity=zeros, float_gzip=float_gzip, gzip=gzip_size([w.numpy() for w in final.weights]))
"""

OVERHEAD_TASK = """
rng = np.random.default_rng(0)
xs = rng.random((256 * OVERHEAD_STEPS, 784), dtype=np.float32)
ys = rng.integers(0, 10, 256 * OVERHEAD_STEPS)

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None): self.t0 = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None): self.times.append(time.perf_counter() - self.t0)

def trainer(pruned):
    model = mlp(keras, [784, 1024, 1024, 10])
    cbs = []
    if pruned:
        end = OVERHEAD_STEPS * (OVERHEAD_ROUNDS + 1)
        model = PRUNE(model, pruning_schedule=S.PolynomialDecay(0.0, 0.8, 0, end, frequency=10))
        cbs.append(S.UpdatePruningStep())
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = Timer(); timer.times = []
    model.fit(xs, ys, batch_size=256, epochs=1, verbose=0, callbacks=cbs + [timer])  # warm-up
    return model, cbs, timer

plain, pruned = trainer(False), trainer(True)
for _ in range(OVERHEAD_ROUNDS):
    for model, cbs, timer in (plain, pruned):
        model.fit(xs, ys, batch_size=256, epochs=1, verbose=0, callbacks=cbs + [timer])
p_t, q_t = np.median(plain[2].times[1:]), np.median(pruned[2].times[1:])
result["overhead"] = dict(plain_epoch_s=float(p_t), pruned_epoch_s=float(q_t),
                          ratio=float(q_t / p_t),
                          steps_per_epoch=OVERHEAD_STEPS)
"""

TFMOT = (
    COMMON
    + """
import tensorflow_model_optimization as tfmot
import tf_keras as keras
S = tfmot.sparsity.keras
PRUNE = S.prune_low_magnitude
result = {}
"""
    + DIGITS_TASK
    + OVERHEAD_TASK
    + "print(json.dumps(result))\n"
)

OURS = (
    COMMON
    + """
import keras
import tfcompress
from tfcompress import pruning as S
PRUNE = S.prune_low_magnitude
result = {}
"""
    + DIGITS_TASK
    + OVERHEAD_TASK
    + """
import tensorflow as tf
pm = pruned[0]
end = pm.pruning_schedule.end_step

def one_update():
    pm.pruning_step.assign(-1)
    pm.update_masks(end)

@tf.function
def constrain():
    for v in pm.pruned_weights:
        v.assign(v.constraint(v))

def per_call_ms(fn, n=20):
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3

result["costs"] = dict(update_ms=per_call_ms(one_update), constraint_ms=per_call_ms(constrain),
                       step_ms=result["overhead"]["plain_epoch_s"] / OVERHEAD_STEPS * 1e3)
import tempfile
from tfcompress import export
model = mlp(keras, [64, 256, 128, 10])  # the float model: pruning above worked in place
model.set_weights(float_weights)
small = S.prune_units(model, fraction=0.5)
small.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
small.fit(x, y, epochs=PRUNE_EPOCHS, batch_size=BATCH, verbose=0)
out = tempfile.mkdtemp()
lat = {}
for name, m in (("unpruned", model), ("units50", small)):
    path = f"{out}/{name}.tflite"
    export.to_tflite(m, path)
    lite = export.LiteModel(path, num_threads=1)
    lat[name] = dict(bytes=os.path.getsize(path), accuracy=lite.evaluate(xt, yt),
                     latency_us=float(np.median([lite.latency(runs=300) for _ in range(3)]) * 1e6))
result["units"] = lat
print(json.dumps(result))
"""
)


def run(code, legacy):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", "import os\n" + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    load = os.getloadavg()
    theirs = run(TFMOT, legacy=True)
    ours = run(OURS, legacy=False)
    print(
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; at end: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print("\n1. digits MLP 64-256-128-10, 0 -> 80% over 10 fine-tune epochs")
    print(
        f"{'':12s}{'sparsity':>10s}{'accuracy':>10s}{'float acc':>10s}"
        f"{'gzip float':>12s}{'gzip pruned':>12s}"
    )
    for name, r in (("tfmot", theirs), ("tfcompress", ours)):
        d = r["digits"]
        print(
            f"{name:12s}{d['sparsity']:10.4f}{d['accuracy']:10.4f}{d['float_accuracy']:10.4f}"
            f"{d['float_gzip'] / 1e3:10.1f}KB{d['gzip'] / 1e3:10.1f}KB"
        )
    print("\n2. training overhead, MLP 784-1024-1024-10, batch 256, frequency 10 (goal <= 1.10x)")
    for name, r in (("tfmot", theirs), ("tfcompress", ours)):
        o = r["overhead"]
        print(
            f"{name:12s} plain {o['plain_epoch_s']:.3f} s/epoch, "
            f"pruned {o['pruned_epoch_s']:.3f} s/epoch "
            f"-> {o['ratio']:.2f}x ({o['steps_per_epoch']} steps/epoch)"
        )
    c = ours["costs"]
    print(
        f"tfcompress costs: mask update {c['update_ms']:.1f} ms (every 10 steps), "
        f"mask constraint {c['constraint_ms']:.2f} ms per step, plain step {c['step_ms']:.1f} ms "
        f"-> expected {1 + (c['update_ms'] / 10 + c['constraint_ms']) / c['step_ms']:.3f}x"
    )
    print(
        "\n3. prune_units 50% (digits MLP, fine-tuned 10 epochs), TFLite float, 1 thread "
        "(goal >= 1.6x faster at <= 1 point accuracy loss)"
    )
    u = ours["units"]
    for name in ("unpruned", "units50"):
        print(
            f"{name:12s}{u[name]['bytes']:>10,d} B  accuracy {u[name]['accuracy']:.4f}  "
            f"latency {u[name]['latency_us']:.2f} us"
        )
    print(
        f"speed-up {u['unpruned']['latency_us'] / u['units50']['latency_us']:.2f}x, "
        f"size {u['units50']['bytes'] / u['unpruned']['bytes']:.2f}x, "
        f"accuracy change "
        f"{100 * (u['units50']['accuracy'] - u['unpruned']['accuracy']):+.2f} points"
    )


if __name__ == "__main__":
    main()

"""Magnitude pruning and structured unit pruning of a Keras 3 model, end to end.

Run: `python examples/pruning.py` (about 30 seconds on 2 CPU cores).
"""

import gzip
import io
import os
import tempfile

import keras
import numpy as np

import tfcompress as tfc
from tfcompress import pruning

(x, y), (x_test, y_test) = tfc.datasets.load_digits()
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
out = tempfile.mkdtemp()


def gzip_bytes(model):
    buffer = io.BytesIO()
    np.savez(buffer, *[w.numpy() for w in model.weights])
    return len(gzip.compress(buffer.getvalue(), 9))


# 1. A float model, trained as usual (any Sequential, Functional or subclassed model).
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ]
)
model.compile("adam", loss, metrics=["accuracy"])
model.fit(x, y, epochs=20, batch_size=32, verbose=0)
print(
    f"float accuracy          {model.evaluate(x_test, y_test, verbose=0)[1]:.4f}  "
    f"gzip {gzip_bytes(model):,} B"
)
float_model = keras.models.clone_model(model)  # kept for step 4: pruning works in place
float_model.set_weights(model.get_weights())

# 2. Prune 0 -> 80% while fine-tuning; steps are the optimizer's iterations.
steps = 8 * int(np.ceil(len(x) / 32))
schedule = pruning.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=steps, frequency=10)
pm = pruning.prune_low_magnitude(model, pruning_schedule=schedule)
pm.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
pm.fit(
    x,
    y,
    epochs=10,
    batch_size=32,
    verbose=0,
    callbacks=[pruning.UpdatePruningStep(), pruning.PruningSummaries(os.path.join(out, "logs"))],
)
pm.save(os.path.join(out, "pruning.keras"))  # reloads mid-training after `import tfcompress`

# 3. Strip: a plain Keras model with exact zeros; export it.
final = pruning.strip_pruning(pm)
print("sparsity               ", {k: round(v, 4) for k, v in pruning.get_sparsity(final).items()})
print(
    f"pruned accuracy         {final.evaluate(x_test, y_test, verbose=0)[1]:.4f}  "
    f"gzip {gzip_bytes(final):,} B"
)
path = os.path.join(out, "pruned_int8.tflite")
tfc.export.to_tflite(final, path, quantization="int8", representative_data=x[:200])
print(
    f"pruned int8 TFLite      {tfc.export.LiteModel(path).evaluate(x_test, y_test):.4f}  "
    f"{os.path.getsize(path):,} B"
)

# 4. Structured: remove half the neurons of the float model -> a smaller, faster dense model.
small = pruning.prune_units(float_model, fraction=0.5)
small.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
small.fit(x, y, epochs=10, batch_size=32, verbose=0)
big_path, small_path = os.path.join(out, "big.tflite"), os.path.join(out, "small.tflite")
tfc.export.to_tflite(float_model, big_path)
tfc.export.to_tflite(small, small_path)
big, lite = (
    tfc.export.LiteModel(big_path, num_threads=1),
    tfc.export.LiteModel(small_path, num_threads=1),
)
print(
    f"units 50% accuracy      {lite.evaluate(x_test, y_test):.4f}  "
    f"{os.path.getsize(small_path):,} B vs {os.path.getsize(big_path):,} B unpruned, "
    f"latency {lite.latency() * 1e6:.1f} us vs {big.latency() * 1e6:.1f} us"
)

"""Quantization-aware training of a Keras 3 model into a fully int8 TFLite file.

Run: `python examples/qat.py` (about 20 seconds on 2 CPU cores).
"""

import os
import tempfile

import keras

import tfcompress as tfc
from tfcompress.quantization import QuantizeConfig, quantize_model

(x, y), (x_test, y_test) = tfc.datasets.load_digits()
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

# 1. A float model, trained as usual.
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [
        keras.Input((64,)),
        keras.layers.Dense(128),
        keras.layers.BatchNormalization(),  # folded into the Dense above
        keras.layers.ReLU(),  # fused into it
        keras.layers.Dense(10, name="head"),
    ]
)
model.compile("adam", loss, metrics=["accuracy"])
model.fit(x, y, epochs=20, batch_size=32, verbose=0)
print(f"float accuracy      {model.evaluate(x_test, y_test, verbose=0)[1]:.4f}")

# 2. Fine-tune with int8 fake quantization (per-layer settings are optional).
qat = quantize_model(model, layer_configs={"head": QuantizeConfig(ema_decay=0.95)})
qat.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
qat.fit(x, y, epochs=3, batch_size=32, verbose=0)
print(f"QAT Keras accuracy  {qat.evaluate(x_test, y_test, verbose=0)[1]:.4f}")

# 3. Export: no representative data needed, int8 in and out.
out = tempfile.mkdtemp()
blob = tfc.export.to_tflite(qat, os.path.join(out, "qat.tflite"), quantization="int8", int8_io=True)
lite = tfc.export.LiteModel(blob)
print(f"TFLite int8 accuracy {lite.evaluate(x_test, y_test):.4f}, {len(blob):,} bytes")
print(f"fully int8: {lite.is_fully_int8()}, ops: {sorted(lite.ops())}")

# For comparison: post-training int8 quantization of the float model (needs
# representative data for its activation ranges, no fine-tuning).
ptq = tfc.export.to_tflite(model, quantization="int8", representative_data=x[:200], int8_io=True)
ptq_lite = tfc.export.LiteModel(ptq)
print(f"PTQ int8 accuracy   {ptq_lite.evaluate(x_test, y_test):.4f}, {len(ptq):,} bytes")

# 4. The QAT model saves and reloads with no custom_objects.
qat.save(os.path.join(out, "qat.keras"))
reloaded = keras.saving.load_model(os.path.join(out, "qat.keras"))
print(f"reloaded accuracy   {reloaded.evaluate(x_test, y_test, verbose=0)[1]:.4f}")

# 5. Cluster-preserving QAT (CQAT): a clustered model keeps its cluster count.
# The kernels train as centroids[indices]; each weight stays in its cluster.
import numpy as np  # noqa: E402

keras.utils.set_random_seed(0)
mlp = keras.Sequential(
    [keras.Input((64,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)]
)
mlp.compile("adam", loss, metrics=["accuracy"])
mlp.fit(x, y, epochs=20, batch_size=32, verbose=0)
clustered = tfc.clustering.cluster_weights(mlp, 16, cluster_centroids_init="linear")
clustered.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
clustered.fit(x, y, epochs=1, batch_size=32, verbose=0)
clustered = tfc.clustering.strip_clustering(clustered)
clustered.compile("adam", loss, metrics=["accuracy"])
print(f"clustered float acc {clustered.evaluate(x_test, y_test, verbose=0)[1]:.4f}")
cqat = quantize_model(clustered, preserve_clusters=True)
cqat.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
cqat.fit(x, y, epochs=3, batch_size=32, verbose=0)
cqat_lite = tfc.export.LiteModel(tfc.export.to_tflite(cqat, quantization="int8", int8_io=True))
kernels = [v.reshape(len(b), -1) for (v, _), (b, _) in zip(
    [w for w in cqat_lite.weights().values() if w[0].dtype == np.int8],
    [w for w in cqat_lite.weights().values() if w[0].dtype == np.int32],
)]
counts = [max(len(np.unique(row)) for row in k) for k in kernels]
print(f"CQAT int8 accuracy  {cqat_lite.evaluate(x_test, y_test):.4f}, "
      f"distinct int8 values per channel <= {max(counts)}")

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

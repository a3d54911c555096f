"""Train a digits MLP, export it in every post-training format, compare them.

Run: python examples/export_ptq.py   (writes into saved_models/)
"""

import keras

import tfcompress as tfc

(x_tr, y_tr), (x_te, y_te) = tfc.datasets.load_digits()

model = keras.Sequential([
    keras.Input((64,)),
    keras.layers.Dense(256, activation="relu"),
    keras.layers.Dense(128, activation="relu"),
    keras.layers.Dense(10),
])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(x_tr, y_tr, epochs=30, batch_size=32, verbose=0)

rows = {"keras float": model}
for quantization in ("dynamic", "float16", "int8"):
    path = f"saved_models/example_mlp_{quantization}.tflite"
    tfc.export.to_tflite(model, path, quantization=quantization,
                         representative_data=x_tr[:200] if quantization == "int8" else None)
    rows[quantization] = path

lite = tfc.export.LiteModel(rows["int8"])
print("int8 ops:", sorted(lite.ops()), "fully int8:", lite.is_fully_int8())
print(tfc.report.compression_report(rows, x_te, y_te))

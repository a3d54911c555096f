"""Knowledge distillation of a digits MLP into a 32-unit student, exported int8.

Run: `python examples/distill.py` (about 30 seconds on 2 CPU cores).
"""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

import tfcompress as tfc

(x, y), (x_test, y_test) = tfc.datasets.load_digits()
scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
out = tempfile.mkdtemp()


def mlp(hidden, seed):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((64,))] + [keras.layers.Dense(h, activation="relu") for h in hidden]
    return keras.Sequential(layers + [keras.layers.Dense(10)])  # logits out


# 1. A trained teacher (any Keras model returning logits; pass
#    teacher_output="probabilities" for one that ends in a softmax).
teacher = mlp((256, 128), seed=0)
teacher.compile(keras.optimizers.Adam(1e-3), scce, metrics=["accuracy"])
teacher.fit(x, y, epochs=30, batch_size=32, verbose=0)
print(f"teacher accuracy {teacher.evaluate(x_test, y_test, verbose=0)[1]:.4f}")

# 2. Distil it into a student 1/20 its size: alpha weighs the label loss, (1 - alpha) * T^2
#    the KL divergence between the softened teacher and student distributions. Teacher and
#    student see the same batch, so augmenting the batches gives the teacher new inputs to
#    explain: on digits that is what makes the distilled student beat one trained alone.
def pixel_dropout(x, y, rate=0.2):
    def drop(a, b):
        return a * tf.cast(tf.random.uniform(tf.shape(a)) >= rate, a.dtype), b

    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).map(drop).batch(32)


distiller = tfc.Distiller(student=mlp((32,), seed=1), teacher=teacher)
distiller.compile(
    optimizer=keras.optimizers.Adam(1e-3),
    metrics=["accuracy"],
    student_loss_fn=scce,
    distillation_loss_fn=keras.losses.KLDivergence(),
    alpha=0.1,
    temperature=3,
)
history = distiller.fit(pixel_dropout(x, y), epochs=40, verbose=0)
print("logged:", sorted(history.history))
logs = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
print(f"distilled student accuracy {logs['accuracy']:.4f}")

# 3. The Distiller saves and reloads with alpha and temperature (teacher included).
distiller.save(os.path.join(out, "distiller.keras"))
reloaded = keras.saving.load_model(os.path.join(out, "distiller.keras"))
print(f"reloaded: alpha={reloaded.alpha}, temperature={reloaded.temperature}")

# 4. Cheap distillation from a big teacher: compute its logits once, feed them with the labels.
logits = teacher.predict(x, verbose=0)
cached = tfc.Distiller(student=mlp((32,), seed=1))
cached.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"], student_loss_fn=scce)
cached.fit(x, {"labels": y, "teacher": logits}, epochs=30, batch_size=32, verbose=0)
cached_accuracy = np.mean(cached.predict(x_test, verbose=0).argmax(-1) == y_test)
print(f"student from cached logits: accuracy {cached_accuracy:.4f}")

# 5. Export the student alone, full int8.
path = os.path.join(out, "student_int8.tflite")
tfc.export.to_tflite(distiller.student, path, quantization="int8", representative_data=x[:200])
lite = tfc.export.LiteModel(path)
print(f"{path}: {os.path.getsize(path)} bytes, fully int8 {lite.is_fully_int8()}, "
      f"accuracy {lite.evaluate(x_test, y_test):.4f}")

"""Demo step: distil the digits MLP teacher into a 64-32-10 student and export it int8."""

import keras
import tensorflow as tf

from tfcompress import export
from tfcompress.demo.foundation_step import STEPS_PER_EXECUTION, digits_mlp, train
from tfcompress.distill import Distiller

STUDENT_UNITS = 32
EPOCHS = 40


def _teacher(ctx, x, y):
    path = ctx.out_dir / "mlp_float.keras"
    if path.exists():
        return keras.saving.load_model(path)
    return train(digits_mlp(), x, y, epochs=30)


def pixel_dropout(x, y, rate=0.2, seed=0, batch_size=32):
    """Shuffled batches with each pixel zeroed with probability `rate`.

    The Distiller shows teacher and student the same augmented batch, which is
    what makes distillation pay off on a training set this small.
    """

    def drop(a, b):
        return a * tf.cast(tf.random.uniform(tf.shape(a)) >= rate, a.dtype), b

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    return ds.map(drop).batch(batch_size)


def student_mlp(seed=0):
    """The 64-32-10 student (logits out), 1/20 of the teacher's parameters."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(STUDENT_UNITS, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="digits_student",
    )


def run(ctx):
    (x, y), (x_test, y_test) = ctx.digits
    teacher = _teacher(ctx, x, y)
    distiller = Distiller(student=student_mlp(), teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        metrics=["accuracy"],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=0.1,
        temperature=3,
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    distiller.fit(pixel_dropout(x, y), epochs=EPOCHS, verbose=0)
    logs = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    ctx.log(
        f"distilled 64-{STUDENT_UNITS}-10 student: accuracy {logs['accuracy']:.4f}, "
        f"student loss {logs['student_loss']:.3f}, distillation loss "
        f"{logs['distillation_loss']:.3f}"
    )
    distiller.save(ctx.out_dir / "distiller.keras")
    student = distiller.student
    student.save(ctx.out_dir / "student_distilled.keras")
    path = ctx.out_dir / "student_int8.tflite"
    export.to_tflite(student, str(path), quantization="int8", representative_data=x[:200])
    ctx.add(f"student 64-{STUDENT_UNITS}-10 distilled keras", student)
    ctx.add(f"student 64-{STUDENT_UNITS}-10 distilled int8", path)

"""Distillation benchmark: accuracy gain over the student alone, and training cost.

Run: python benchmarks/distill_bench.py [--quick]

1. Accuracy on digits (mean of 3 seeds): a 64-256-128-10 teacher distilled into
   a 64-32-10 student (alpha 0.1, T 3, KL) vs the same student trained alone
   with the same optimizer, epochs and batches, both exported to int8 TFLite;
   once on the plain training set and once with 20% pixel dropout applied to
   each batch (teacher and student see the same augmented batch).
2. Cost: samples/s of one training epoch of a 784-512-512-10 student alone, with
   a 784-1280-1280-10 teacher run online (4.0x the student's parameters) and with
   the teacher's logits precomputed once, and with keras.distillation.Distiller
   (same teacher, student and loss), all timed in the same run (the plain epoch
   and Keras' Distiller are the anchors; epochs are timed round-robin); the
   FLOP-count ratio is printed beside, and whether the goal (online <= 1.5x
   plain) is met.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
GOAL_SLOWDOWN = 1.5  # issue 6: a distillation epoch at most 1.5x a plain student epoch


def mlp(input_dim, hidden, seed, name=None):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((input_dim,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers, name=name)


def params(model):
    return sum(int(np.prod(w.shape)) for w in model.weights)


def pixel_dropout(x, y, rate, seed, batch_size=32):
    """Batches of (x, y) in which each pixel is zeroed with probability `rate`.

    Teacher and student see the same augmented batch (the Distiller feeds both
    the same x), the "consistent" augmentation of Beyer et al. 2022.
    """
    import tensorflow as tf

    def drop(a, b):
        return a * tf.cast(tf.random.uniform(tf.shape(a)) >= rate, a.dtype), b

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    return ds.map(drop).batch(batch_size)


def _train(model, x, y, epochs, seed, augment):
    keras.utils.set_random_seed(100 + seed)
    if augment:
        model.fit(pixel_dropout(x, y, 0.2, seed), epochs=epochs, verbose=0)
    else:
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)


def accuracy_study(epochs, seeds, hidden=(32,)):
    (x, y), (x_te, y_te) = tfc.datasets.load_digits()
    teacher = mlp(64, (256, 128), seed=0, name="teacher")
    teacher.compile(keras.optimizers.Adam(1e-3), SCCE, metrics=["accuracy"])
    teacher.fit(x, y, epochs=30, batch_size=32, verbose=0)
    result = {
        "teacher_params": params(teacher),
        "student_params": params(mlp(64, hidden, seed=0)),
        "teacher_accuracy": teacher.evaluate(x_te, y_te, verbose=0)[1],
    }
    for augment in (False, True):
        rows = []
        for seed in seeds:
            alone = mlp(64, hidden, seed=seed, name="alone")
            alone.compile(keras.optimizers.Adam(1e-3), SCCE, metrics=["accuracy"])
            _train(alone, x, y, epochs, seed, augment)
            student = mlp(64, hidden, seed=seed, name="student")
            d = tfc.Distiller(student=student, teacher=teacher)
            d.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"], student_loss_fn=SCCE,
                      distillation_loss_fn=keras.losses.KLDivergence(), alpha=0.1,
                      temperature=3)
            _train(d, x, y, epochs, seed, augment)
            row = {
                "seed": seed,
                "alone": alone.evaluate(x_te, y_te, verbose=0)[1],
                "distilled": d.evaluate(x_te, y_te, verbose=0, return_dict=True)["accuracy"],
            }
            for name, model in (("alone", alone), ("distilled", student)):
                blob = tfc.export.to_tflite(model, quantization="int8",
                                            representative_data=x[:200])
                row[f"{name}_int8"] = tfc.export.LiteModel(blob).evaluate(x_te, y_te)
            rows.append(row)
            print(json.dumps({"augment": augment, **row}), flush=True)
        setting = "augmented" if augment else "plain"
        result[setting] = {
            "rows": rows,
            **{
                f"mean_{k}": statistics.mean(r[k] for r in rows)
                for k in ("alone", "distilled", "alone_int8", "distilled_int8")
            },
        }
    return result


def _epoch_rates(runs, n, batch_size, repeats):
    """Samples/s of one epoch for each `(model, x, target)`, median of `repeats`.

    Every model is traced and warmed up first (two full epochs: on this CPU the
    second epoch of a fresh model is still ~1.7x slower than the steady state, and
    a 2-batch warm-up left that cost in the timed epochs), then the epochs are
    timed round-robin so that a change of machine load hits all of them alike.
    """
    for model, x, target in runs:
        model.fit(x, target, batch_size=batch_size, epochs=2, verbose=0, shuffle=False)
    times = [[] for _ in runs]
    for _ in range(repeats):
        for i, (model, x, target) in enumerate(runs):
            start = time.perf_counter()
            model.fit(x, target, batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
            times[i].append(time.perf_counter() - start)
    return [n / statistics.median(t) for t in times]


def _keras_distiller(teacher, student):
    """The anchor: keras.distillation.Distiller with the same loss (alpha 0.1, T 3, KL)."""
    teacher.trainable = False
    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=3.0, loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=0.1,
    )
    distiller.compile(keras.optimizers.Adam(1e-3), loss=SCCE)
    return distiller


def cost_study(n, batch_size, repeats):
    rng = np.random.default_rng(0)
    x = rng.random((n, 784), dtype=np.float32)
    y = rng.integers(0, 10, n).astype("int32")
    teacher = mlp(784, (1280, 1280), seed=0, name="teacher")
    student = mlp(784, (512, 512), seed=1, name="student")
    ratio = params(teacher) / params(student)

    plain = mlp(784, (512, 512), seed=1)
    plain.compile(keras.optimizers.Adam(1e-3), SCCE)

    online = tfc.Distiller(student=student, teacher=teacher)
    online.compile(keras.optimizers.Adam(1e-3), student_loss_fn=SCCE)

    start = time.perf_counter()
    logits = teacher.predict(x, batch_size=1024, verbose=0)
    precompute_s = time.perf_counter() - start
    cached = tfc.Distiller(student=mlp(784, (512, 512), seed=1))
    cached.compile(keras.optimizers.Adam(1e-3), student_loss_fn=SCCE)
    keras_distiller = _keras_distiller(mlp(784, (1280, 1280), seed=0),
                                       mlp(784, (512, 512), seed=1))
    plain_rate, online_rate, cached_rate, keras_rate = _epoch_rates(
        [(plain, x, y), (online, x, y), (cached, x, {"labels": y, "teacher": logits}),
         (keras_distiller, x, y)],
        n, batch_size, repeats,
    )
    # Multiply-adds per sample: a training step costs ~3 forward passes, the teacher adds one.
    flops_ratio = (3 * params(student) + params(teacher)) / (3 * params(student))
    return {
        "teacher_params": params(teacher),
        "student_params": params(student),
        "param_ratio": ratio,
        "plain_samples_per_s": plain_rate,
        "online_samples_per_s": online_rate,
        "cached_samples_per_s": cached_rate,
        "keras_distiller_samples_per_s": keras_rate,
        "online_slowdown": plain_rate / online_rate,
        "keras_distiller_slowdown": plain_rate / keras_rate,
        "cached_slowdown": plain_rate / cached_rate,
        "flop_ratio_online": flops_ratio,
        "precompute_s": precompute_s,
        "precompute_epochs_equiv": precompute_s * plain_rate / n,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer epochs and samples")
    args = parser.parse_args(argv)
    print(f"load before: {os.getloadavg()}")
    acc = accuracy_study(epochs=15 if args.quick else 40, seeds=(0, 1, 2))
    print(f"teacher 64-256-128-10 ({acc['teacher_params']} params): "
          f"{acc['teacher_accuracy']:.4f}; student 64-32-10 ({acc['student_params']} params)")
    for setting in ("plain", "augmented"):
        r = acc[setting]
        print(f"  {setting:9s}: alone {r['mean_alone']:.4f} (int8 {r['mean_alone_int8']:.4f})"
              f"  distilled {r['mean_distilled']:.4f} (int8 {r['mean_distilled_int8']:.4f})"
              "  mean of 3 seeds")
    cost = cost_study(n=4096 if args.quick else 16384, batch_size=256,
                      repeats=2 if args.quick else 5)
    print(f"cost: teacher {cost['teacher_params']} / student {cost['student_params']} params "
          f"= {cost['param_ratio']:.2f}x")
    print(f"  plain student epoch : {cost['plain_samples_per_s']:.0f} samples/s (anchor)")
    print(f"  online teacher      : {cost['online_samples_per_s']:.0f} samples/s "
          f"= {cost['online_slowdown']:.2f}x plain (FLOP ratio {cost['flop_ratio_online']:.2f}x)")
    print(f"  keras.distillation  : {cost['keras_distiller_samples_per_s']:.0f} samples/s "
          f"= {cost['keras_distiller_slowdown']:.2f}x plain (anchor, same loss)")
    met = "met" if cost["online_slowdown"] <= GOAL_SLOWDOWN else "NOT met"
    print(f"  goal: online epoch <= {GOAL_SLOWDOWN}x plain for a ~4x teacher: {met}")
    print(f"  precomputed logits  : {cost['cached_samples_per_s']:.0f} samples/s "
          f"= {cost['cached_slowdown']:.2f}x plain; precomputing took {cost['precompute_s']:.2f} s"
          f" = {cost['precompute_epochs_equiv']:.2f} plain epochs, once")
    print(f"load after: {os.getloadavg()}")
    out = os.environ.get("DISTILL_BENCH_JSON")
    if out:
        with open(out, "w") as f:
            json.dump({"accuracy": acc, "cost": cost}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

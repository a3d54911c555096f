"""Runs for tests/test_crash_resume.py: each resumes one technique, then is killed in the next.

Run as `python tests/_crash_worker.py DIR [--resume TECHNIQUE] [--kill TECHNIQUE]`.
Each technique fits 4 epochs of 10 steps on the digits (no shuffling, fixed
seeds) under `keras.callbacks.BackupAndRestore(DIR/TECHNIQUE)`.

`--resume T` completes T's fit from its backup, runs the same training again
uninterrupted from scratch, and writes DIR/T.npz: every weight of both models
(`resumed_<i>`, `reference_<i>`) and the `epochs` the resumed fit ran.
`--kill T` then starts T's fit and SIGKILLs the process at step 4 of epoch 3,
as a preempted machine would. One process thus does both halves of two
techniques: TensorFlow's import, most of each run's time, is paid once per
technique instead of twice.
"""

import argparse
import os
import signal

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402

TECHNIQUES = ("pruning", "qat", "clustering", "rbm_cd", "rbm_pcd", "distiller")


class Kill(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if self._epoch == 2 and batch == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch


class Epochs(keras.callbacks.Callback):
    """The epochs a fit ran (a resumed one starts where its backup left off)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def mlp(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )


def build(technique):
    """The model to fit, and whether it is fitted on labels."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if technique == "pruning":
        schedule = tfc.pruning.PolynomialDecay(0.0, 0.8, 0, 30, frequency=5)
        model = tfc.pruning.prune_low_magnitude(mlp(0), pruning_schedule=schedule)
    elif technique == "qat":
        model = tfc.quantization.quantize_model(mlp(0))
    elif technique == "clustering":
        model = tfc.clustering.cluster_weights(mlp(0), 8, seed=0)
    elif technique.startswith("rbm"):
        keras.utils.set_random_seed(0)
        persistent = technique == "rbm_pcd"
        rbm = tfc.rbm.RBM(16, k=2, persistent=persistent, num_chains=32, seed=1)
        model = keras.Sequential([keras.Input((64,)), rbm])
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9))
        return model, False
    else:
        teacher = mlp(1)
        teacher.compile("adam", loss)
        (x, y), _ = tfc.datasets.load_digits()
        teacher.fit(x[:320], y[:320], epochs=2, batch_size=32, shuffle=False, verbose=0)
        model = tfc.distill.Distiller(mlp(0), teacher)
        model.compile(keras.optimizers.Adam(1e-3), alpha=0.3, temperature=4.0)
        return model, True
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss)
    return model, True


def train(technique, callbacks):
    model, labelled = build(technique)
    (x, y), _ = tfc.datasets.load_digits()
    x, y = x[:320], y[:320]
    model.fit(
        x,
        y if labelled else None,
        epochs=4,
        batch_size=32,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return [np.asarray(w) for w in model.weights]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--resume", choices=TECHNIQUES)
    parser.add_argument("--kill", choices=TECHNIQUES)
    args = parser.parse_args()
    if args.resume:
        backup = keras.callbacks.BackupAndRestore(os.path.join(args.dir, args.resume))
        epochs = Epochs()
        resumed = train(args.resume, [backup, epochs])
        keras.backend.clear_session()
        reference = train(args.resume, [])
        arrays = {"epochs": np.array(epochs.seen)}
        arrays.update({f"resumed_{i}": w for i, w in enumerate(resumed)})
        arrays.update({f"reference_{i}": w for i, w in enumerate(reference)})
        np.savez(os.path.join(args.dir, f"{args.resume}.npz"), **arrays)
        keras.backend.clear_session()
    if args.kill:
        backup = keras.callbacks.BackupAndRestore(os.path.join(args.dir, args.kill))
        train(args.kill, [backup, Kill()])
        raise SystemExit(f"{args.kill} was not killed")


if __name__ == "__main__":
    main()

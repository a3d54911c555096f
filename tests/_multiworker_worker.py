"""One worker of tests/test_multiworker.py: distils a student with MultiWorkerMirroredStrategy.

Run as `python tests/_multiworker_worker.py WORKDIR` with TF_CONFIG set. Reads
WORKDIR/initial.keras (a compiled Distiller) and WORKDIR/data.npz, writes
WORKDIR/worker_<index>.npz (final student weights, training losses, test
predictions); the chief also writes WORKDIR/distiller.keras.
"""

import json
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402

# The strategy must exist before TensorFlow runs any op.
strategy = tfc.distribute.multi_worker_strategy()


def main(workdir):
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    data = np.load(workdir / "data.npz")
    with strategy.scope():
        # A compiled Distiller saved by the test; reloading restores alpha, T and the losses.
        distiller = keras.saving.load_model(workdir / "initial.keras")
    history = distiller.fit(
        data["x"], data["y"], batch_size=64, epochs=3, shuffle=False, verbose=0
    ).history
    # predict is distributed too, so every worker runs it.
    predictions = distiller.predict(data["x_test"], verbose=0)
    np.savez(
        workdir / f"worker_{index}.npz",
        loss=np.array(history["loss"]),
        distillation_loss=np.array(history["distillation_loss"]),
        replicas=np.array(strategy.num_replicas_in_sync),
        alpha_temperature=np.array([distiller.alpha, distiller.temperature]),
        predictions=predictions,
        **{f"weight_{k}": w for k, w in enumerate(distiller.student.get_weights())},
    )
    if tfc.distribute.is_chief():
        distiller.save(workdir / "distiller.keras")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))

"""Demo step: DBN pre-training on digits, fine-tuning, pruning and int8 export."""

import keras

from tfcompress import export, pruning
from tfcompress.dbn import DBN


def run(ctx):
    (x, y), (x_test, y_test) = ctx.digits
    keras.utils.set_random_seed(0)

    dbn = DBN([128, 64], seed=0)
    histories = dbn.pretrain(x, epochs=10, batch_size=32, steps_per_execution=15, verbose=0)
    errors = [h.history["reconstruction_error"] for h in histories]
    ctx.log(
        "DBN pre-training, reconstruction error first -> last epoch: "
        + ", ".join(f"rbm_{i} {e[0]:.4f} -> {e[-1]:.4f}" for i, e in enumerate(errors))
    )
    dbn.save(ctx.out_dir / "dbn.keras")

    clf = dbn.to_classifier(10)
    clf.compile(keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    clf.fit(x, y, epochs=20, batch_size=32, verbose=0)
    ctx.log(f"DBN classifier fine-tuned: accuracy {clf.evaluate(x_test, y_test, verbose=0)[1]:.4f}")
    clf.save(ctx.out_dir / "dbn_classifier.keras")
    ctx.add("dbn classifier keras", clf)

    steps_per_epoch = -(-len(x) // 32)
    schedule = pruning.PolynomialDecay(
        0.0, 0.8, begin_step=0, end_step=5 * steps_per_epoch, frequency=10
    )
    pm = pruning.prune_low_magnitude(clf, pruning_schedule=schedule)
    pm.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"])
    pm.fit(x, y, epochs=7, batch_size=32, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    pruned = pruning.strip_pruning(pm)
    sparsity = pruning.get_sparsity(pruned)
    ctx.log("DBN classifier pruned: " + ", ".join(f"{k} {v:.3f}" for k, v in sparsity.items()))
    pruned.save(ctx.out_dir / "dbn_pruned80.keras")

    path = ctx.out_dir / "dbn_pruned80_int8.tflite"
    export.to_tflite(pruned, str(path), quantization="int8", representative_data=x[:200])
    lite = export.LiteModel(str(path))
    ctx.log(f"DBN int8 TFLite: accuracy {lite.evaluate(x_test, y_test):.4f}, "
            f"{path.stat().st_size:,} bytes")
    ctx.add("dbn pruned 80% int8", path)

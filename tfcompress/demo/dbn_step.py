"""Demo step: DBN pre-training on digits, fine-tuning, pruning and int8 export."""

import keras

from tfcompress import export, plots
from tfcompress.dbn import DBN
from tfcompress.demo.foundation_step import STEPS_PER_EXECUTION
from tfcompress.demo.pruning_step import prune_80_and_export


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
    ctx.figure(
        "rbm_filters.png",
        lambda path: plots.filters(dbn.rbms[0].kernel, path, (8, 8), title="DBN's first RBM"),
    )

    clf = dbn.to_classifier(10)
    clf.compile(keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                metrics=["accuracy"], steps_per_execution=STEPS_PER_EXECUTION)
    clf.fit(x, y, epochs=20, batch_size=32, verbose=0)
    ctx.log(f"DBN classifier fine-tuned: accuracy {clf.evaluate(x_test, y_test, verbose=0)[1]:.4f}")
    clf.save(ctx.out_dir / "dbn_classifier.keras")
    ctx.add("dbn classifier keras", clf)

    _, path = prune_80_and_export(
        ctx, clf, x, y, "sparse_categorical_crossentropy", "dbn_pruned80", "DBN classifier pruned"
    )
    lite = export.LiteModel(str(path))
    ctx.log(f"DBN int8 TFLite: accuracy {lite.evaluate(x_test, y_test):.4f}, "
            f"{path.stat().st_size:,} bytes")
    ctx.add("dbn pruned 80% int8", path)

"""Demo step: magnitude pruning 0 -> 80% and structured unit pruning of the digits MLP."""

import keras

from tfcompress import export, plots, pruning
from tfcompress.demo.foundation_step import digits_mlp, train


def _float_mlp(ctx, x, y):
    path = ctx.out_dir / "mlp_float.keras"
    if path.exists():
        return keras.saving.load_model(path)
    return train(digits_mlp(), x, y, epochs=30)


def prune_80_and_export(ctx, model, x, y, loss, name, label):
    """Prunes `model` 0 -> 80% over 5 of 7 epochs; saves `name`.keras and `name`_int8.tflite."""
    steps_per_epoch = -(-len(x) // 32)
    schedule = pruning.PolynomialDecay(
        0.0, 0.8, begin_step=0, end_step=5 * steps_per_epoch, frequency=10
    )
    pm = pruning.prune_low_magnitude(model, pruning_schedule=schedule)
    pm.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    pm.fit(x, y, epochs=7, batch_size=32, verbose=0, callbacks=[pruning.UpdatePruningStep()])
    pruned = pruning.strip_pruning(pm)
    sparsity = pruning.get_sparsity(pruned)
    ctx.log(f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in sparsity.items()))
    pruned.save(ctx.out_dir / f"{name}.keras")
    path = ctx.out_dir / f"{name}_int8.tflite"
    export.to_tflite(pruned, str(path), quantization="int8", representative_data=x[:200])
    return pruned, path


def run(ctx):
    (x, y), (x_test, y_test) = ctx.digits
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    float_model = _float_mlp(ctx, x, y)
    model = keras.models.clone_model(float_model)  # pruning works in place; keep the float one
    model.set_weights(float_model.get_weights())
    pruned, path = prune_80_and_export(ctx, model, x, y, loss, "mlp_pruned80", "magnitude pruning")
    ctx.add("mlp pruned 80% keras", pruned)
    ctx.figure("mlp_pruned80_sparsity.png", lambda p: plots.sparsity(pruned, p))
    ctx.add("mlp pruned 80% int8", path)

    small = pruning.prune_units(float_model, fraction=0.5)
    small.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    small.fit(x, y, epochs=6, batch_size=32, verbose=0)
    ctx.log(
        "prune_units 50%: units "
        + "-".join(str(layer.units) for layer in small.layers)
        + f", accuracy {small.evaluate(x_test, y_test, verbose=0)[1]:.4f}"
    )
    small.save(ctx.out_dir / "mlp_units50.keras")
    for name, quantization in (("float", None), ("int8", "int8")):
        path = ctx.out_dir / f"mlp_units50_{name}.tflite"
        export.to_tflite(small, str(path), quantization=quantization, representative_data=x[:200])
        ctx.add(f"mlp units/2 {name}", path)

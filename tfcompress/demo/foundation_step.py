"""Demo step: float MLP and CNN on digits, exported in every post-training format."""

import keras

from tfcompress import export

FORMATS = {"float": None, "dynamic": "dynamic", "float16": "float16", "int8": "int8"}
# Fits on the digits run 15 batches per call: the same steps in the same order, about twice
# as fast on models this small, where each call's Python overhead outweighs the step.
STEPS_PER_EXECUTION = 15


def digits_mlp(seed=0):
    """The digits MLP 64-256-128-10 of the benchmarks (logits out)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="digits_mlp",
    )


def digits_cnn(seed=0):
    """A small CNN for (8, 8, 1) digits (logits out)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="digits_cnn",
    )


def train(model, x, y, epochs, batch_size=32, lr=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=STEPS_PER_EXECUTION,
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


def run(ctx):
    for tag, model, (train_set, _) in (
        ("mlp", digits_mlp(), ctx.digits),
        ("cnn", digits_cnn(), ctx.digits_image),
    ):
        x, y = train_set
        train(model, x, y, epochs=30 if tag == "mlp" else 20)
        model.save(ctx.out_dir / f"{tag}_float.keras")
        ctx.add(f"{tag} keras", model)
        for name, quantization in FORMATS.items():
            path = ctx.out_dir / f"{tag}_{name}.tflite"
            export.to_tflite(
                model,
                path,
                quantization=quantization,
                representative_data=x[:200] if quantization == "int8" else None,
            )
            ctx.add(f"{tag} {name}", path)
            ctx.log(f"wrote {path} ({path.stat().st_size:,} bytes)")

"""Pruning heads and MLP units of a transformer encoder: LiteRT latency and accuracy.

Run: `nice -n 5 python benchmarks/transformer_bench.py [--rounds 7]` (about 3 minutes on 2 cores).

1. Latency: an encoder of the size a phone runs on text or sensor windows (64 steps,
   width 128, 8 heads, MLP 256, 2 blocks; random weights: latency does not depend on
   them) and `tfc.pruning.prune_units(encoder, 0.5)` of it (half the heads, half the
   MLP units). Both float files run on LiteRT at 1 thread, interleaved, warmed up;
   best (minimum) of `--rounds` rounds of 30 runs each, with the spread.
   With keras_hub installed, the same encoder made of its `TransformerEncoder` layers
   too (`prune_units` calls them inline).
2. Accuracy: the test encoder (8 steps of the digits' rows, width 32, 4 heads) trained
   20 epochs, pruned the same way and fine-tuned 10 epochs, against the unpruned net.
"""

import argparse
import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402
from tfcompress.export import LiteModel, to_tflite  # noqa: E402

L = keras.layers


def encoder(steps=8, features=8, dim=32, heads=2, blocks=1, classes=10):
    """A small text-style encoder: Dense embedding, attention + GELU MLP blocks, mean pool."""
    inputs = keras.Input((steps, features))
    x = L.Dense(dim, name="embed")(inputs)
    for i in range(blocks):
        attention = L.MultiHeadAttention(heads, dim // heads, name=f"mha{i}")(x, x)
        x = L.LayerNormalization(name=f"ln{i}a")(x + attention)
        mlp = L.Dense(2 * dim, activation="gelu", name=f"mlp{i}a")(x)
        x = L.LayerNormalization(name=f"ln{i}b")(x + L.Dense(dim, name=f"mlp{i}b")(mlp))
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(classes, name="head")(x))


def hub_encoder(steps=64, features=32, dim=128, heads=8, blocks=2, classes=10):
    """The same encoder made of keras_hub's `TransformerEncoder` layers (custom layers:
    `prune_units` calls them inline)."""
    import keras_hub

    inputs = keras.Input((steps, features))
    x = L.Dense(dim, name="embed")(inputs)
    for i in range(blocks):
        x = keras_hub.layers.TransformerEncoder(2 * dim, heads, activation="gelu",
                                                name=f"block{i}")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, L.Dense(classes, name="head")(x))


def latency(rounds, hub=False):
    keras.utils.set_random_seed(0)
    if hub:
        big = hub_encoder()
        attention, mlp = "self_attention_layer", "feedforward_intermediate_dense"
    else:
        big = encoder(steps=64, features=32, dim=128, heads=8, blocks=2)
        attention, mlp = "mha0", "mlp0a"

    def get(model, name):  # the first block's layer (inside keras_hub's block, or inlined)
        return next(lr for lr in tfc.surgery.all_layers(model) if lr.name.endswith(name))

    small = tfc.pruning.prune_units(big, 0.5)
    files = [LiteModel(to_tflite(m), num_threads=1) for m in (big, small)]
    x = np.random.default_rng(0).normal(size=(1, 64, 32)).astype("float32")
    times = [[], []]
    for _ in range(rounds):
        for i, lite in enumerate(files):
            times[i].append(1e3 * lite.latency(x, runs=30, warmup=5))
    heads = [get(m, attention).num_heads for m in (big, small)]
    units = [get(m, mlp).units for m in (big, small)]
    kind = "keras_hub TransformerEncoder" if hub else "encoder"
    print(f"# {kind} 64x128, heads {heads[0]} -> {heads[1]}, MLP {units[0]} -> {units[1]}, "
          f"params {big.count_params():,} -> {small.count_params():,}")
    for name, t, lite in zip(("full", "pruned 0.5"), times, files):
        print(f"{name}: best {min(t):.3f} ms, spread {min(t):.3f}-{max(t):.3f} ms, "
              f"{lite.size:,} bytes")
    print(f"speed-up (ratio of best times): {min(times[0]) / min(times[1]):.2f}x")


def accuracy():
    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = tfc.datasets.load_digits(shape="sequence")

    def fit(model, epochs):
        model.compile(
            keras.optimizers.Adam(2e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        return float(model.evaluate(xt, yt, verbose=0)[1])

    model = encoder(heads=4)
    full = fit(model, 20)
    pruned = tfc.pruning.prune_units(model, 0.5)
    before = float(np.mean(pruned.predict(xt, verbose=0).argmax(1) == yt))
    after = fit(pruned, 10)
    lite = LiteModel(to_tflite(pruned))
    agree = float(np.mean(lite.predict(xt).argmax(1) == pruned.predict(xt, verbose=0).argmax(1)))
    print(f"# digits encoder: float {100 * full:.1f}%, pruned 0.5 before fine-tune "
          f"{100 * before:.1f}%, after 10 epochs {100 * after:.1f}%, "
          f"file agrees {100 * agree:.1f}%, "
          f"params {model.count_params():,} -> {pruned.count_params():,}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    latency(args.rounds)
    if importlib.util.find_spec("keras_hub") is not None:
        latency(args.rounds, hub=True)
    accuracy()


if __name__ == "__main__":
    main()

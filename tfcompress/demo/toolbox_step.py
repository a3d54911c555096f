"""Demo step: low-rank factorization, PCA reduction and weight clustering of the digits MLP."""

import keras

from tfcompress import clustering, export, factorization
from tfcompress.demo.foundation_step import digits_mlp, train

CLUSTERS = 16


def fine_tune(model, x, y, epochs):
    """Adam 1e-4 for `epochs` epochs: the fine-tune after low-rank or clustering."""
    return train(model, x, y, epochs, lr=1e-4)


def _base_mlp(ctx, x, y):
    """The foundation step's float MLP when it ran in this folder, else a fresh one."""
    path = ctx.out_dir / "mlp_float.keras"
    if path.exists():
        ctx.log(f"starting from {path}")
        return keras.models.load_model(path)
    return train(digits_mlp(), x, y, epochs=30)


def _export(ctx, name, model, stem, **kwargs):
    path = ctx.out_dir / f"{stem}.tflite"
    export.to_tflite(model, path, **kwargs)
    ctx.add(name, path)
    ctx.log(f"wrote {path} ({path.stat().st_size:,} bytes)")


def run(ctx):
    (x, y), _ = ctx.digits
    base = _base_mlp(ctx, x, y)

    ctx.log("low-rank factorization (energy 0.9):\n" + str(factorization.low_rank_report(base)))
    small = fine_tune(factorization.low_rank(base, energy=0.9), x, y, epochs=3)
    small.save(ctx.out_dir / "low_rank.keras")
    _export(ctx, "low-rank e=0.9", small, "low_rank_float")

    keras.utils.set_random_seed(0)
    pca = factorization.PCA(0.95)
    pca.adapt(x)
    ctx.log(f"PCA(0.95) keeps {pca.n_components_} of {x.shape[1]} inputs")
    reduced = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            pca,
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="pca_mlp",
    )
    train(reduced, x, y, epochs=30)
    reduced.save(ctx.out_dir / "pca_mlp.keras")
    _export(ctx, "PCA(0.95)+MLP", reduced, "pca_mlp_float")

    clustered = clustering.cluster_weights(
        base, CLUSTERS, cluster_centroids_init="linear", seed=0
    )
    final = clustering.strip_clustering(fine_tune(clustered, x, y, epochs=3))
    final.save(ctx.out_dir / f"clustered{CLUSTERS}.keras")
    _export(ctx, f"{CLUSTERS} clusters", final, f"clustered{CLUSTERS}_float")
    _export(ctx, f"{CLUSTERS} clusters int8", final, f"clustered{CLUSTERS}_int8",
            quantization="int8", representative_data=x[:200])

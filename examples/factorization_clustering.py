"""Low-rank factorization, PCA reduction and weight clustering on the bundled digits.

Run: python examples/factorization_clustering.py  (about a minute on 2 CPU cores)
"""

import gzip
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402


def compiled(model, lr=1e-3):
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def main():
    (x, y), (x_test, y_test) = tfc.datasets.load_digits()
    keras.utils.set_random_seed(0)
    model = compiled(keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ]))
    model.fit(x, y, epochs=20, verbose=0)
    print(f"float MLP: {model.count_params():,} parameters, "
          f"accuracy {accuracy(model, x_test, y_test):.4f}")

    # 1. Low-rank: keep 90% of each kernel's spectral energy, then fine-tune.
    print(tfc.factorization.low_rank_report(model, energy=0.9))
    for energy in (0.7, 0.5):  # lower energy: fewer parameters, larger kernel error
        rows = tfc.factorization.low_rank_report(model, energy=energy)
        print(f"energy {energy}: ranks {[row['rank'] for row in rows]}, "
              f"{sum(row['params_after'] for row in rows):,} parameters")
    small = compiled(tfc.factorization.low_rank(model, energy=0.9), lr=1e-4)
    small.fit(x, y, epochs=3, verbose=0)
    print(f"low-rank: {small.count_params():,} parameters, "
          f"accuracy {accuracy(small, x_test, y_test):.4f}")

    # 2. PCA as the first layer: 95% of the input variance.
    pca = tfc.factorization.PCA(n_components=0.95)
    pca.adapt(x)
    reduced = compiled(keras.Sequential([
        keras.Input((64,)), pca, keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)
    ]))
    reduced.fit(x, y, epochs=20, verbose=0)
    print(f"PCA keeps {pca.n_components_} of 64 inputs; PCA + MLP 64-10 accuracy "
          f"{accuracy(reduced, x_test, y_test):.4f}")

    # 3. Clustering: 16 shared values per kernel, fine-tuned, then stripped and exported.
    clustered = compiled(
        tfc.clustering.cluster_weights(model, number_of_clusters=16,
                                       cluster_centroids_init="linear"),
        lr=1e-4,
    )
    clustered.fit(x, y, epochs=3, verbose=0)
    final = tfc.clustering.strip_clustering(clustered)
    distinct = [len(np.unique(layer.kernel.numpy())) for layer in final.layers]
    print(f"clustered: distinct kernel values per layer {distinct}, "
          f"accuracy {accuracy(final, x_test, y_test):.4f}")
    before = len(gzip.compress(tfc.export.to_tflite(model), 9))
    after = len(gzip.compress(tfc.export.to_tflite(final), 9))
    print(f"gzip of the float TFLite file: {before:,} -> {after:,} bytes "
          f"({before / after:.1f}x smaller)")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clustered.keras")
        final.save(path)
        reloaded = keras.models.load_model(path)
        blob = tfc.export.to_tflite(reloaded, quantization="int8", representative_data=x[:200])
        lite = tfc.export.LiteModel(blob)
        print(f"clustered int8 TFLite: {lite.size:,} bytes ({len(gzip.compress(blob, 9)):,} "
              f"gzipped), accuracy {lite.evaluate(x_test, y_test):.4f}")


if __name__ == "__main__":
    main()

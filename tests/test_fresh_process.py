"""Each technique's `.keras` file reloads in a fresh Python process.

A fresh process knows the tfcompress classes only through `import tfcompress`
(their registration), not through anything the test process built. One
subprocess checks every technique: its TensorFlow import is most of the time.
"""


import keras
import numpy as np
import pytest
from conftest import compile_classifier, run_reference, small_mlp
from test_cqat import clustered_mlp
from test_pruning import _expected_zero_count

import tfcompress as tfc
from tfcompress import pruning
from tfcompress.clustering import ClusterWeights, cluster_weights, strip_clustering
from tfcompress.quantization import quantize_model

FRESH = """
import json, numpy as np, keras
import tfcompress
out = {}
load = lambda name: keras.saving.load_model(f"{folder}/{name}.keras")
x_test = np.load(f"{folder}/x_test.npy")

qat = load("qat")
out["qat"] = dict(out=qat.predict(x_test, verbose=0).tolist(),
                  layers=[type(layer).__name__ for layer in qat.layers])

cqat = load("cqat")
out["cqat"] = dict(out=cqat.predict(x_test, verbose=0).tolist(),
                   counts=[len(np.unique(layer.float_kernels()[0].numpy()))
                           for layer in cqat.layers if getattr(layer, "kernel_centroids", None)])

out["clustering"] = {name: load(name).predict(x_test, verbose=0).tolist()
                     for name in ("clustered", "stripped", "pca")}

pm = load("pruned")
saved = np.load(f"{folder}/masks.npy")[0]
first = dict(kind=type(pm).__name__, step=int(pm.pruning_step.numpy()),
             iterations=int(pm.optimizer.iterations.numpy()),
             same_mask=bool(np.array_equal(pm.masks[0].numpy().ravel(), saved)))
old_zero = pm.pruned_weights[0].numpy() == 0
x, y = np.load(f"{folder}/x.npy"), np.load(f"{folder}/y.npy")
pm.fit(x, y, epochs=1, batch_size=16, verbose=0)  # steps 20..39, then the update at 40
w = pm.pruned_weights[0].numpy()
first.update(final_step=int(pm.pruning_step.numpy()), zeros=int((w == 0).sum()),
             size=int(w.size), kept_old_zeros=bool((w[old_zero] == 0).all()),
             constrained=type(pm.pruned_weights[0].constraint).__name__)
out["pruning"] = first
print(json.dumps(out))
"""


def _models(digits, folder):
    """Every technique's model, saved in `folder`; returns {name: model}."""
    (x, y), (x_test, _) = digits
    models = {}
    qat = quantize_model(small_mlp(hidden=(64,)))
    models["qat"] = compile_classifier(qat)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)

    final = clustered_mlp(x, y, 5, epochs=1)
    cqat = compile_classifier(quantize_model(final, preserve_clusters=True))
    cqat.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    models["cqat"] = cqat

    clustered = compile_classifier(
        cluster_weights(small_mlp(hidden=(16,)), 4, preserve_sparsity=True)
    )
    clustered.fit(x[:256], y[:256], epochs=1, verbose=0)
    rebuilt = ClusterWeights.from_config(clustered.layers[0].get_config())
    assert rebuilt.number_of_clusters == 4 and rebuilt.preserve_sparsity
    pca = tfc.factorization.PCA(0.8, whiten=True)
    pca.adapt(x)
    models["clustered"] = clustered
    models["stripped"] = strip_clustering(clustered)
    models["pca"] = keras.Sequential([keras.Input((64,)), pca, keras.layers.Dense(10)])

    schedule = pruning.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=40, frequency=4)
    pm = compile_classifier(
        pruning.prune_low_magnitude(small_mlp(hidden=(32,)), pruning_schedule=schedule)
    )
    pm.fit(x[:320], y[:320], epochs=1, batch_size=16, verbose=0)  # 20 steps: mid-schedule
    models["pruned"] = pm
    np.save(folder / "masks.npy", np.stack([m.numpy().ravel() for m in pm.masks[:1]]))
    np.save(folder / "x.npy", x[:320])
    np.save(folder / "y.npy", y[:320])
    np.save(folder / "x_test.npy", x_test[:50])
    for name, model in models.items():
        model.save(folder / f"{name}.keras")
    return models


@pytest.mark.slow
def test_every_technique_reloads_and_resumes_in_a_fresh_process(digits, tmp_path):
    models = _models(digits, tmp_path)
    x_test = digits[1][0][:50]
    got = run_reference(f"folder = {str(tmp_path)!r}\n" + FRESH)

    expected = {name: model.predict(x_test, verbose=0) for name, model in models.items()}
    np.testing.assert_allclose(np.array(got["qat"]["out"]), expected["qat"], atol=1e-6)
    assert got["qat"]["layers"].count("QuantizeWrapper") == 2

    np.testing.assert_allclose(np.array(got["cqat"]["out"]), expected["cqat"], atol=1e-6)
    assert len(got["cqat"]["counts"]) == 2 and all(c <= 5 for c in got["cqat"]["counts"])

    for name, out in got["clustering"].items():
        np.testing.assert_allclose(np.asarray(out), expected[name], atol=1e-5, err_msg=name)

    # The pruning update due at step 20 ran when the first fit ended; the reloaded model
    # resumes the schedule: its masks, step and optimizer, up to the update at step 40.
    out = got["pruning"]
    assert out["kind"] == "PrunedModel" and out["step"] == 20 and out["iterations"] == 20
    assert out["same_mask"] and out["kept_old_zeros"]
    assert out["final_step"] == 40 and out["constrained"] == "_MaskConstraint"
    assert out["zeros"] == _expected_zero_count(out["size"], 0.9)

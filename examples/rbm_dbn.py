"""RBMs and DBNs with Keras `fit`: train, measure likelihood, pretrain, fine-tune, compress.

Run: `python examples/rbm_dbn.py` (about a minute and a half on 2 CPU cores).
"""

import os
import tempfile

import keras
import numpy as np
from sklearn.model_selection import train_test_split

import tfcompress as tfc
from tfcompress import pruning

out = tempfile.mkdtemp()
(x, y), (x_test, y_test) = tfc.datasets.load_digits()
x_bin, x_test_bin = (x > 0.5).astype("float32"), (x_test > 0.5).astype("float32")

# 1. An RBM is a Keras layer: a Sequential ending in it, compiled with only an optimizer
#    and fitted on unlabeled data, trains by contrastive divergence (CD-k).
rbm = tfc.RBM(16, visible="bernoulli", k=1, seed=0)
rbm.init_visible_bias(x_bin)  # Hinton's start: log(p / (1 - p)) of the data
model = keras.Sequential([keras.Input((64,)), rbm])
model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5), steps_per_execution=24)
history = model.fit(
    x_bin,
    epochs=30,
    batch_size=20,
    validation_data=(x_test_bin,),
    callbacks=[tfc.rbm.FreeEnergyGap(x_bin[:300], x_test_bin[:300])],
    verbose=0,
)
h = history.history
errors = h["reconstruction_error"]
print(f"reconstruction error  {errors[0]:.4f} -> {errors[-1]:.4f}"
      f"  (validation {h['val_reconstruction_error'][-1]:.4f})")
print(f"free-energy gap (validation - training) {h['free_energy_gap'][-1]:+.3f}")

# 2. Likelihood: exact log Z for <= 20 hidden units, AIS beyond.
log_z = tfc.rbm.log_partition(rbm)
ais = tfc.rbm.ais_log_partition(rbm, num_chains=100, num_betas=5000, data=x_bin)
p = np.clip(x_bin.mean(0), 1e-3, 1 - 1e-3)
baseline = np.mean(x_test_bin @ np.log(p) + (1 - x_test_bin) @ np.log(1 - p))
print(f"log Z exact {log_z:.3f}, AIS {ais:.3f}")
print(f"held-out log-likelihood {tfc.rbm.log_likelihood(rbm, x_test_bin, log_z):.2f} nats "
      f"(independent pixels {baseline:.2f})")

# 3. A .keras file reloads after `import tfcompress` alone.
model.save(os.path.join(out, "rbm.keras"))
reloaded = keras.saving.load_model(os.path.join(out, "rbm.keras"))
print("reloaded matches:", np.allclose(reloaded.predict(x_test_bin, verbose=0), rbm(x_test_bin)))

# 4. A DBN pays where labels are scarce and the sigmoid network is deep (see the table in
#    BENCHMARKS.md, from benchmarks/dbn_bench.py): pretrain on all 1,438 training images without
#    labels, fine-tune on 143 of them labelled (10%), and compare with the same network trained
#    from random weights on the same labels. With all labels, or a shallow network, expect little
#    or no gain.
few, _ = train_test_split(np.arange(len(x)), train_size=0.1, stratify=y, random_state=0)
dbn = tfc.DBN([256, 256, 256], k=1, seed=0)
dbn.pretrain(x, epochs=60, batch_size=32, steps_per_execution=45, verbose=0)  # SGD 0.05, mom. 0.9
clf = dbn.to_classifier(10)
scratch = keras.models.clone_model(clf)  # same network, fresh random weights


def fine_tune(model, head_epochs, epochs):
    """Adam 3e-3; the first `head_epochs` train only the new output layer."""
    for trainable, n in ((False, head_epochs), (True, epochs - head_epochs)):
        if not n:
            continue
        for layer in model.layers[:-1]:
            layer.trainable = trainable
        model.compile(keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        model.fit(x[few], y[few], epochs=n, batch_size=32, verbose=0)
    return model.evaluate(x_test, y_test, verbose=0)[1]


print(f"143 labels: DBN-pretrained {fine_tune(clf, 20, 100):.4f}, "
      f"from scratch {fine_tune(scratch, 0, 100):.4f}")

# 5. It is an ordinary Keras model: prune it (with the same 143 labels) and export it as a
#    full-int8 TFLite file.
steps = 25 * int(np.ceil(len(few) / 32))
schedule = pruning.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=steps, frequency=10)
pm = pruning.prune_low_magnitude(clf, pruning_schedule=schedule)
pm.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
           metrics=["accuracy"])
pm.fit(x[few], y[few], epochs=30, batch_size=32, verbose=0,
       callbacks=[pruning.UpdatePruningStep()])
final = pruning.strip_pruning(pm)
path = os.path.join(out, "dbn_int8.tflite")
tfc.export.to_tflite(final, path, quantization="int8", representative_data=x[:200])
lite = tfc.export.LiteModel(path)
print(f"pruned int8 TFLite accuracy {lite.evaluate(x_test, y_test):.4f}, "
      f"{os.path.getsize(path):,} bytes, sparsity {pruning.get_sparsity(final)}")

"""DBN benchmark: when does greedy RBM pretraining beat training from scratch?

Run: `nice -n 10 python benchmarks/dbn_bench.py` (about 8 minutes on 2 CPU cores;
`--quick`: 2 seeds and one learning rate, about 3.5 minutes; `--variants`: also the deep DBN
pretrained with SGD momentum 0.5, the default before issue 16, and one whose first RBM has
Gaussian visible units fed standardized pixels, both at 1% and 10% labels, 4 minutes more).

Data: `tfc.datasets.load_digits()` (its fixed split: 1,438 training and 359 test images,
pixels in [0, 1]). For each seed, a stratified labelled subset of 1%, 10% or 100% of the
training images; the DBN is pretrained on all 1,438 training images without labels.

Networks: shallow 64-128-64-10 and deep 64-256-256-256-10, sigmoid hidden layers, softmax
output. DBN side: `tfc.DBN(units)` pretrained with the default recipe (CD-1, SGD 0.05 with
momentum 0.9, batch 32, visible biases from the data, 60 epochs per RBM), then
`to_classifier(10)`. Scratch side: `keras.models.clone_model` of that classifier (the same
architecture with fresh Glorot weights).

Fine-tuning, both sides: Adam, batch min(32, n), the same budget of max(500 steps, 20 epochs)
gradient steps. Grid, both sides: learning rate in {3e-3, 1e-3} x "head first" (the first
100 of those steps train only the output layer, hidden layers frozen) or "joint" (all
layers from the start). Each side's best grid cell is chosen by mean test accuracy over the
seeds, the same (optimistic) selection for both; the whole grid is printed as well. The gain is
the DBN minus the scratch accuracy on the same labelled subset, mean and sample std over seeds.

Anchors, same run and same labelled subsets: scikit-learn's RBM-features pipeline with its
example's settings (BernoulliRBM 100 hidden, learning rate 0.06, 10 iterations, fitted on all
training images; LogisticRegression C=6000 on its features) and plain LogisticRegression (C=100)
on the pixels.
"""

import argparse
import os
import time
import warnings
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

# One intra-op thread: the layers are small, and the machine is shared.
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
# Each grid cell builds new models, so Keras' retracing warnings are expected.
tf.get_logger().setLevel("ERROR")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import BernoulliRBM  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import tfcompress as tfc  # noqa: E402

NETWORKS = {"shallow": [128, 64], "deep": [256, 256, 256]}
FRACTIONS = (0.01, 0.1, 1.0)
PRETRAIN_EPOCHS = 60
LEARNING_RATES = (3e-3, 1e-3)
HEAD_STEPS = 100
MIN_STEPS, MIN_EPOCHS, BATCH = 500, 20, 32
VARIANTS = ("SGD momentum 0.5 (default before issue 16)",
            "first RBM Gaussian, standardized pixels")


@dataclass(frozen=True)
class Recipe:
    learning_rate: float
    head_first: bool

    def __str__(self):
        return f"Adam {self.learning_rate:g}, {'head first' if self.head_first else 'joint'}"


@dataclass(frozen=True)
class Cell:
    """One (network, label fraction, side, recipe) of the grid."""

    network: str
    fraction: float
    side: str
    recipe: Recipe


def labelled_subset(y, fraction, seed):
    if fraction >= 1.0:
        return np.arange(len(y))
    idx, _ = train_test_split(np.arange(len(y)), train_size=fraction, stratify=y,
                              random_state=seed)
    return np.sort(idx)


def budget(n):
    return max(MIN_STEPS, MIN_EPOCHS * int(np.ceil(n / BATCH)))


def _order(rng, n, batch, steps):
    # Epoch-wise reshuffles laid end to end: one `fit` call runs all the steps.
    epochs = int(np.ceil(steps * batch / n))
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[: steps * batch]


def _fit(clf, x, y, idx, learning_rate, batch):
    clf.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy",
                steps_per_execution=50)
    clf.fit(x[idx], y[idx], batch_size=batch, epochs=1, shuffle=False, verbose=0)


def fine_tune(clf, x, y, x_test, y_test, recipe, seed):
    """Test accuracy of `clf` after the recipe's budget of Adam steps on (x, y)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    batch, steps = min(BATCH, n), budget(n)
    if recipe.head_first:
        for layer in clf.layers[:-1]:
            layer.trainable = False
        _fit(clf, x, y, _order(rng, n, batch, HEAD_STEPS), recipe.learning_rate, batch)
        for layer in clf.layers[:-1]:
            layer.trainable = True
        steps -= HEAD_STEPS
    _fit(clf, x, y, _order(rng, n, batch, steps), recipe.learning_rate, batch)
    pred = np.argmax(clf.predict(x_test, batch_size=512, verbose=0), axis=-1)
    return float(np.mean(pred == y_test))


def pretrain(units, x, seed, visible="bernoulli", optimizer=None):
    """A DBN pretrained on `x`; `optimizer` None is the library's default recipe."""
    keras.utils.set_random_seed(seed)
    dbn = tfc.DBN(units, visible=visible, seed=1000 * seed)
    run = dict(batch_size=BATCH, steps_per_execution=45, verbose=0)
    if visible == "gaussian":
        # Unit-variance Gaussian units need a 10x smaller step (Hinton's guide, section 13.2).
        upper = [PRETRAIN_EPOCHS] * (len(units) - 1)
        dbn.pretrain(x, epochs=[PRETRAIN_EPOCHS] + [0] * len(upper),
                     optimizer=keras.optimizers.SGD(0.005, momentum=0.9), **run)
        dbn.pretrain(x, epochs=[0] + upper, optimizer=optimizer, **run)
    else:
        dbn.pretrain(x, epochs=PRETRAIN_EPOCHS, optimizer=optimizer, **run)
    return dbn


def anchors(x, y, x_test, y_test, subsets, seed):
    """sklearn's RBM + logistic pipeline and plain logistic regression, per label fraction."""
    out = {}
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        rbm = BernoulliRBM(100, learning_rate=0.06, n_iter=10, random_state=seed).fit(x)
        f, f_test = rbm.transform(x), rbm.transform(x_test)
        for fraction, idx in subsets.items():
            rbm_lr = LogisticRegression(C=6000.0, max_iter=1000).fit(f[idx], y[idx])
            plain = LogisticRegression(C=100.0, max_iter=1000).fit(x[idx], y[idx])
            out[fraction] = (rbm_lr.score(f_test, y_test), plain.score(x_test, y_test))
    return out


def run_dbn_side(results, name, dbn, subsets, data, recipes, seed, side="DBN"):
    (x, y), (x_test, y_test) = data
    for fraction, idx in subsets.items():
        for recipe in recipes:
            acc = fine_tune(dbn.to_classifier(10), x[idx], y[idx], x_test, y_test, recipe, seed)
            results.setdefault(Cell(name, fraction, side, recipe), []).append(acc)


def run_scratch_side(results, name, dbn, subsets, data, recipes, seed):
    (x, y), (x_test, y_test) = data
    for fraction, idx in subsets.items():
        for recipe in recipes:
            keras.utils.set_random_seed(seed)
            clf = keras.models.clone_model(dbn.to_classifier(10))
            acc = fine_tune(clf, x[idx], y[idx], x_test, y_test, recipe, seed)
            results.setdefault(Cell(name, fraction, "scratch", recipe), []).append(acc)


def best(results, network, fraction, side):
    cells = [c for c in results if (c.network, c.fraction, c.side) == (network, fraction, side)]
    return max(cells, key=lambda c: np.mean(results[c]))


def spread(values, sign=""):
    values = 100.0 * np.asarray(values)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():{sign}5.1f} +- {std:3.1f}"


def print_grid(results):
    print("\nfull grid: test accuracy %, mean +- std over seeds (each seed)")
    for cell in sorted(results, key=lambda c: (c.network, c.fraction, c.side, str(c.recipe))):
        seeds = " ".join(f"{100 * a:4.1f}" for a in results[cell])
        print(f"  {cell.network:7s} {cell.fraction:4.0%} {cell.side:42s} {str(cell.recipe):24s}"
              f"{spread(results[cell])}  ({seeds})")


def print_summary(results, anchor, sides, n_labels):
    print("\nbest recipe of each side (test accuracy %, mean +- std over seeds; gain per seed)")
    head = (f"{'network':8s} {'labels':>11s}  {'DBN-pretrained':>14s}  {'scratch':>14s}  "
            f"{'gain':>14s}  {'sklearn RBM+LR':>14s}  {'LR pixels':>14s}")
    print(head)
    for network in NETWORKS:
        for fraction in FRACTIONS:
            if not any(c.network == network and c.fraction == fraction for c in results):
                continue
            d, s = (best(results, network, fraction, side) for side in sides)
            gain = np.asarray(results[d]) - np.asarray(results[s])
            rbm_lr, plain = (np.asarray([a[fraction][i] for a in anchor]) for i in (0, 1))
            labels = f"{n_labels[fraction]:4d} ({fraction:4.0%})"
            cols = [spread(results[d]), spread(results[s]), spread(gain, "+"), spread(rbm_lr),
                    spread(plain)]
            print(f"{network:8s} {labels}  " + "  ".join(f"{c:>14s}" for c in cols))
            print(f"{'':22s}best recipes: DBN {d.recipe}; scratch {s.recipe}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, learning rate 3e-3 only")
    parser.add_argument("--variants", action="store_true",
                        help="also the deep DBN pretrained with momentum 0.5, and with Gaussian "
                             "visible units on standardized pixels (1%% and 10%% labels)")
    args = parser.parse_args()
    seeds = (0, 1) if args.quick else (0, 1, 2)
    rates = LEARNING_RATES[:1] if args.quick else LEARNING_RATES
    recipes = [Recipe(lr, head) for lr in rates for head in (False, True)]
    start = time.perf_counter()
    print(f"tfcompress DBN benchmark, load average {os.getloadavg()}, seeds {seeds}")
    print(f"pretraining {PRETRAIN_EPOCHS} epochs per RBM; fine-tuning budget max({MIN_STEPS} "
          f"steps, {MIN_EPOCHS} epochs), batch {BATCH}; grid: "
          + "; ".join(str(r) for r in recipes) + f" (head first: {HEAD_STEPS} steps)")

    (x, y), (x_test, y_test) = tfc.datasets.load_digits()
    data = ((x, y), (x_test, y_test))
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 0, std, 1.0)  # constant pixels stay constant (0) after scaling
    standardized = (((x - mean) / std).astype("float32"), y), (
        ((x_test - mean) / std).astype("float32"), y_test)
    n_labels = {f: len(labelled_subset(y, f, 0)) for f in FRACTIONS}
    results, variants, anchor = {}, {}, []
    for seed in seeds:
        subsets = {f: labelled_subset(y, f, seed) for f in FRACTIONS}
        anchor.append(anchors(x, y, x_test, y_test, subsets, seed))
        for name, units in NETWORKS.items():
            dbn = pretrain(units, x, seed)
            run_dbn_side(results, name, dbn, subsets, data, recipes, seed)
            run_scratch_side(results, name, dbn, subsets, data, recipes, seed)
            print(f"seed {seed} {name} done, {time.perf_counter() - start:.0f} s", flush=True)
        if args.variants:
            few = {f: subsets[f] for f in FRACTIONS[:2]}
            variants_seed(variants, few, data, standardized, recipes, seed)
            print(f"seed {seed} variants done, {time.perf_counter() - start:.0f} s", flush=True)

    print_grid(results)
    print_summary(results, anchor, ("DBN", "scratch"), n_labels)
    if args.variants:
        print_grid(variants)
        print("\nDBN variants, deep network, best recipe of each (test accuracy %)")
        for fraction in FRACTIONS[:2]:
            for label, table, side in (("default (SGD 0.05, momentum 0.9)", results, "DBN"),
                                       *((v, variants, v) for v in VARIANTS)):
                cell = best(table, "deep", fraction, side)
                print(f"  {fraction:4.0%}  {label:42s} {spread(table[cell])}  ({cell.recipe})")
    print(f"\nload average at end {os.getloadavg()}, wall {time.perf_counter() - start:.0f} s")


def variants_seed(variants, subsets, data, standardized, recipes, seed):
    units = NETWORKS["deep"]
    old_default = keras.optimizers.SGD(0.05, momentum=0.5)
    for side, dbn, inputs in (
        (VARIANTS[0], pretrain(units, data[0][0], seed, optimizer=old_default), data),
        (VARIANTS[1], pretrain(units, standardized[0][0], seed, visible="gaussian"), standardized),
    ):
        run_dbn_side(variants, "deep", dbn, subsets, inputs, recipes, seed, side=side)


if __name__ == "__main__":
    main()

"""RBM benchmark: held-out log-likelihood and CD-k training speed, beside scikit-learn.

Run: `nice -n 10 python benchmarks/rbm_bench.py` (about 3-4 minutes on 2 CPU cores).

Quality: exact held-out log-likelihood on binarised digits (X/16 > 0.5, 80/20
split with scikit-learn's train_test_split, random_state 0), 64 visible units:
tfcompress RBM trained through `fit` (CD-1, SGD 0.05 momentum 0.5, batch 20,
50 epochs, visible biases from the data) versus scikit-learn's BernoulliRBM
(learning rate 0.05, 50 epochs) and the independent-Bernoulli model.

Speed: CD-k samples/s at 784 x 500, batch 256, float32 through `fit`, versus
scikit-learn's BernoulliRBM (PCD-1, float32 and float64; ratios use the faster)
and the matmul ceiling measured in the same run (CD-1 costs 5 matmuls of
2 * 784 * 500 flops per sample).
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import BernoulliRBM  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import tfcompress as tfc  # noqa: E402

N_VIS, N_HID, BATCH = 784, 500, 256


def binarised_digits():
    x = (load_digits().data / 16.0 > 0.5).astype("float32")
    return train_test_split(x, test_size=0.2, random_state=0)


def exact_ll(kernel, visible_bias, hidden_bias, x):
    rbm = tfc.RBM(kernel.shape[1])
    rbm.build((None, kernel.shape[0]))
    rbm.set_weights([kernel, visible_bias, hidden_bias])
    return tfc.rbm.log_likelihood(rbm, x, tfc.rbm.log_partition(rbm))


def ours_quality(x_train, x_test, units, k=1):
    keras.utils.set_random_seed(0)
    rbm = tfc.RBM(units, k=k, seed=0)
    rbm.init_visible_bias(x_train)
    model = keras.Sequential([keras.Input((64,)), rbm])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5), steps_per_execution=24)
    start = time.perf_counter()
    model.fit(x_train, epochs=50, batch_size=20, verbose=0)
    seconds = time.perf_counter() - start
    log_z = tfc.rbm.log_partition(rbm)
    return tfc.rbm.log_likelihood(rbm, x_test, log_z), seconds


def sklearn_quality(x_train, x_test, units):
    with threadpool_limits(1):
        sk = BernoulliRBM(units, learning_rate=0.05, n_iter=50, random_state=0).fit(x_train)
    return exact_ll(sk.components_.T.astype("float32"), sk.intercept_visible_.astype("float32"),
                    sk.intercept_hidden_.astype("float32"), x_test)


def independent_bernoulli(x_train, x_test):
    p = np.clip(x_train.mean(0), 1e-3, 1 - 1e-3)
    return float(np.mean(x_test @ np.log(p) + (1 - x_test) @ np.log(1 - p)))


def matmul_ceiling(repeats=30):
    """samples/s if CD-1 ran at this process's float32 matmul rate (5 matmuls/sample)."""
    w = tf.Variable(tf.random.normal((N_VIS, N_HID)))
    x = tf.random.uniform((BATCH, N_VIS))

    @tf.function
    def five(x):
        total = tf.constant(0.0)
        for _ in range(5):
            total += tf.reduce_sum(tf.matmul(x, w))
            x = x + 1e-6
        return total

    five(x).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        five(x).numpy()
    seconds = time.perf_counter() - start
    gflops = repeats * 5 * 2 * BATCH * N_VIS * N_HID / seconds / 1e9
    return repeats * BATCH / seconds, gflops


def speed_data(batches=40):
    rng = np.random.default_rng(0)
    return (rng.random((batches * BATCH, N_VIS)) < 0.13).astype("float32")


def ours_speed(x, k, steps_per_execution, jit_compile=False, epochs=2):
    keras.utils.set_random_seed(0)
    rbm = tfc.RBM(N_HID, k=k, seed=0)
    model = keras.Sequential([keras.Input((N_VIS,)), rbm])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.5),
                  steps_per_execution=steps_per_execution, jit_compile=jit_compile)
    # Trace and warm up on the full data: a fresh model's first epochs run well below
    # its steady rate on this CPU. Then the median of 3 timed fits.
    model.fit(x, epochs=1, batch_size=BATCH, verbose=0)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        model.fit(x, epochs=epochs, batch_size=BATCH, verbose=0)
        rates.append(epochs * len(x) / (time.perf_counter() - start))
    return float(np.median(rates))


def sklearn_speed(x, dtype, n=BATCH * 10):
    x = x[:n].astype(dtype)  # BernoulliRBM keeps float32 or float64 input as is
    sk = BernoulliRBM(N_HID, learning_rate=0.05, batch_size=BATCH, n_iter=1, random_state=0)
    sk.fit(x[:BATCH])
    start = time.perf_counter()
    sk.fit(x)
    return n / (time.perf_counter() - start)


def main():
    print(f"load average at start: {os.getloadavg()}")
    x_train, x_test = binarised_digits()
    print("\n== quality: exact held-out log-likelihood, binarised digits (nats/example) ==")
    print(f"independent Bernoulli           {independent_bernoulli(x_train, x_test):8.2f}")
    for units in (16, 8):
        ll = sklearn_quality(x_train, x_test, units)
        print(f"sklearn BernoulliRBM {units:2d} hidden   {ll:8.2f}")
    for units, k in ((16, 1), (8, 1), (16, 5)):
        ll, seconds = ours_quality(x_train, x_test, units, k)
        print(f"tfcompress RBM {units:2d} hidden CD-{k}  {ll:8.2f}   (fit {seconds:.1f} s)  "
              f"goal at 16 hidden CD-1: > -20.0")

    print(f"\n== speed: CD-k at {N_VIS} x {N_HID}, batch {BATCH}, float32 (samples/s) ==")
    x = speed_data()
    ceiling, gflops = matmul_ceiling()
    sk_rates = {dtype: sklearn_speed(x, dtype) for dtype in ("float32", "float64")}
    sk = max(sk_rates.values())  # ratios are to the faster of the two
    print(f"matmul ceiling (CD-1)           {ceiling:10,.0f}   ({gflops:.0f} GFLOP/s in-graph)")
    for dtype, rate in sk_rates.items():
        print(f"sklearn BernoulliRBM PCD-1 {dtype} {rate:10,.0f}")
    rows = [(1, 1, False), (1, 20, False), (1, 20, True), (5, 20, False), (10, 20, False)]
    for k, spe, jit in rows:
        rate = ours_speed(x, k, spe, jit)
        extra = f"  = {rate / sk:4.1f}x sklearn, {rate / ceiling:5.1%} of ceiling" if k == 1 else ""
        print(f"tfcompress CD-{k:<2d} spe={spe:<2d} jit={str(jit):5s} {rate:10,.0f}{extra}")
    print("goal: CD-1 >= 15,000 samples/s (>= 6x sklearn, >= 50% of the ceiling)")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()

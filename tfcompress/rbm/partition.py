"""The probability an RBM assigns to data: free energy, log Z and log-likelihood.

p(v) = exp(-F(v)) / Z. `log_partition` computes log Z exactly for small models
(sums over every state of the smaller layer), `ais_log_partition` estimates it
by annealed importance sampling otherwise, and `log_likelihood` turns either
into the mean log-probability of data.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

_MAX_EXACT_UNITS = 20
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def free_energy(v, kernel, visible_bias, hidden_bias, visible="bernoulli"):
    """Free energy of visible vectors under an RBM with the given parameters.

    .. math::

        F(v) = -b^\\top v - \\sum_j \\log(1 + e^{c_j + v^\\top W_{:j}})
        \\quad\\text{(Bernoulli)},\\qquad
        F(v) = \\tfrac12\\lVert v - b\\rVert^2 - \\sum_j \\log(1 + e^{c_j + v^\\top W_{:j}})
        \\quad\\text{(Gaussian, unit variance)}

    so that p(v) = exp(-F(v)) / Z.

    Args:
        v: visible vectors, shape (batch, visible).
        kernel: weights W, shape (visible, hidden).
        visible_bias: b, shape (visible,).
        hidden_bias: c, shape (hidden,).
        visible: `"bernoulli"` or `"gaussian"`.

    Returns:
        A tensor of shape (batch,) in the dtype of `v`.

    Example:
        >>> w = np.zeros((3, 2), "float32")
        >>> f = free_energy(np.ones((1, 3), "float32"), w, np.zeros(3), np.zeros(2))
        >>> round(float(f[0]), 4)  # -2 log 2
        -1.3863
    """
    v = ops.convert_to_tensor(v)
    dtype = v.dtype
    kernel = ops.cast(kernel, dtype)
    visible_bias = ops.cast(visible_bias, dtype)
    hidden_bias = ops.cast(hidden_bias, dtype)
    pre = ops.matmul(v, kernel) + hidden_bias
    return free_energy_from_pre(v, pre, visible_bias, visible)


def free_energy_from_pre(v, pre, visible_bias, visible):
    """`free_energy` given the hidden pre-activations `pre = v @ kernel + hidden_bias`."""
    hidden_term = ops.sum(ops.softplus(pre), axis=-1)
    if visible == "gaussian":
        return 0.5 * ops.sum(ops.square(v - visible_bias), axis=-1) - hidden_term
    return -ops.sum(v * visible_bias, axis=-1) - hidden_term


def _parameters64(rbm):
    if not rbm.built:
        raise ValueError(
            "The RBM has no weights yet: build it (call it on data or fit it) first. "
            f"Received: rbm={rbm.name} (unbuilt)"
        )
    return tuple(
        np.asarray(keras.ops.convert_to_numpy(w), dtype="float64")
        for w in (rbm.kernel, rbm.visible_bias, rbm.hidden_bias)
    )


def _binary_states(start, stop, n):
    idx = np.arange(start, stop, dtype=np.int64)[:, None]
    return ((idx >> np.arange(n, dtype=np.int64)) & 1).astype("float64")


def log_partition(rbm, chunk_size=16384):
    """Exact log partition function log Z of a small RBM.

    Sums over every configuration of the smaller layer (for Bernoulli visible
    units) or of the hidden layer (Gaussian visible units, where the visible
    integral is Gaussian and done in closed form), in float64 chunks:

    .. math::

        \\log Z = \\log \\sum_h \\exp\\Big(c^\\top h + \\sum_i \\log(1 + e^{b_i + (W h)_i})\\Big)

    Args:
        rbm: a built `RBM`.
        chunk_size: configurations evaluated per vectorised chunk.

    Returns:
        log Z as a Python float.

    Raises:
        ValueError: if the layer summed over has more than 20 units (2^20
            configurations), or the RBM is not built.

    Example:
        >>> rbm = RBM(4, seed=0)
        >>> rbm.build((None, 6))
        >>> log_z = log_partition(rbm)
    """
    w, b, c = _parameters64(rbm)
    n_vis, n_hid = w.shape
    if rbm.visible == "gaussian" or n_hid <= n_vis:
        n_sum, over_hidden = n_hid, True
    else:
        n_sum, over_hidden = n_vis, False
    if n_sum > _MAX_EXACT_UNITS:
        raise ValueError(
            f"Exact log Z sums over 2^{n_sum} states; it is limited to "
            f"{_MAX_EXACT_UNITS} units in the smaller layer (use ais_log_partition). "
            f"Received: rbm with units={n_hid} and {n_vis} visible units"
        )
    total = -np.inf
    for start in range(0, 2**n_sum, chunk_size):
        s = _binary_states(start, min(2**n_sum, start + chunk_size), n_sum)
        if over_hidden and rbm.visible == "gaussian":
            mean = b + s @ w.T
            terms = s @ c + 0.5 * (mean**2).sum(1) - 0.5 * (b**2).sum()
        elif over_hidden:
            terms = s @ c + np.logaddexp(0.0, b + s @ w.T).sum(1)
        else:
            terms = s @ b + np.logaddexp(0.0, c + s @ w).sum(1)
        total = np.logaddexp(total, _logsumexp(terms))
    if rbm.visible == "gaussian":
        total += n_vis * _HALF_LOG_2PI
    return float(total)


def _logsumexp(x):
    m = np.max(x)
    return m + np.log(np.sum(np.exp(x - m)))


def log_likelihood(rbm, v, log_z):
    """Mean log-probability log p(v) = -F(v) - log Z of data under an RBM.

    Args:
        rbm: a built `RBM`.
        v: data, shape (batch, visible).
        log_z: the log partition function (`log_partition` or
            `ais_log_partition`).

    Returns:
        The mean log-likelihood in nats per example, a Python float.

    Raises:
        ValueError: if the RBM is not built, or `v` holds NaN/inf, values
            outside [0, 1] for a Bernoulli RBM, or a wrong number of features.

    Example:
        >>> rbm = RBM(4, seed=0)
        >>> rbm.build((None, 6))
        >>> x = np.random.default_rng(0).integers(0, 2, (10, 6)).astype("float32")
        >>> ll = log_likelihood(rbm, x, log_partition(rbm))
    """
    w, b, c = _parameters64(rbm)
    v = rbm.validate_array(v, "v")
    f = keras.ops.convert_to_numpy(free_energy(v.astype("float64"), w, b, c, rbm.visible))
    return float(np.mean(-f) - log_z)


def ais_log_partition(rbm, num_chains=100, num_betas=10000, data=None, seed=0):
    """Estimates log Z by annealed importance sampling (AIS).

    Anneals from a base model with no weights (visible biases `b_A`, taken from
    the marginals of `data` when given, else the RBM's own visible biases) to
    the RBM through the geometric path
    p_beta(v) ∝ p_A(v)^(1-beta) p*(v)^beta, with one Gibbs transition per
    inverse temperature beta, and averages the importance weights:

    .. math::

        \\log Z \\approx \\log Z_A + \\log \\frac{1}{M}\\sum_m w^{(m)},\\quad
        \\log w = \\sum_k \\log p^*_{\\beta_k}(v_{k-1}) - \\log p^*_{\\beta_{k-1}}(v_{k-1})

    Args:
        rbm: a built `RBM`.
        num_chains: independent AIS runs M.
        num_betas: number of inverse temperatures, linearly spaced in [0, 1].
        data: optional training data to set the base-rate model.
        seed: integer seed of the chains.

    Returns:
        The log Z estimate, a Python float.

    Raises:
        ValueError: if `num_chains` or `num_betas` is below 1 or 2.

    Example:
        >>> rbm = RBM(4, seed=0)
        >>> rbm.build((None, 6))
        >>> abs(ais_log_partition(rbm, 50, 500) - log_partition(rbm)) < 0.1
        True

    Reference:
        Salakhutdinov & Murray, "On the quantitative analysis of deep belief
        networks", ICML 2008.
    """
    if not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"`num_chains` must be an integer >= 1. Received: num_chains={num_chains}")
    if not isinstance(num_betas, int) or num_betas < 2:
        raise ValueError(f"`num_betas` must be an integer >= 2. Received: num_betas={num_betas}")
    w, b, c = _parameters64(rbm)
    gaussian = rbm.visible == "gaussian"
    if data is not None:
        data = rbm.validate_array(data, "data").astype("float64")
        base = data.mean(0) if gaussian else logit(data.mean(0))
    else:
        base = b.copy()
    n_vis, n_hid = w.shape
    if gaussian:
        log_z_base = n_vis * _HALF_LOG_2PI + n_hid * math.log(2.0)
    else:
        log_z_base = float(np.logaddexp(0.0, base).sum() + n_hid * math.log(2.0))
    betas = tf.constant(np.linspace(0.0, 1.0, num_betas), tf.float64)
    log_w = _ais_run(
        tf.constant(w), tf.constant(b), tf.constant(c), tf.constant(base), betas,
        tf.constant([int(seed), 0], tf.int64), num_chains, gaussian,
    )
    log_w = log_w.numpy()
    return float(log_z_base + _logsumexp(log_w) - math.log(num_chains))


def logit(p, eps=1e-3):
    """log(p / (1 - p)) of probabilities clipped to [eps, 1 - eps] (NumPy)."""
    p = np.clip(p, eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


@tf.function(reduce_retracing=True)
def _ais_run(w, b, c, base, betas, seed, num_chains, gaussian):
    # A compiled while-loop over temperatures: thousands of tiny steps would be
    # dominated by Python dispatch if run eagerly.
    n_vis = tf.shape(w)[0]

    def log_p_star(v, beta):
        hidden = tf.reduce_sum(tf.math.softplus(beta * (v @ w + c)), -1)
        if gaussian:
            mix = (1.0 - beta) * base + beta * b
            quad = -0.5 * tf.reduce_sum(v * v, -1) + tf.linalg.matvec(v, mix)
            const = -0.5 * ((1.0 - beta) * tf.reduce_sum(base**2) + beta * tf.reduce_sum(b**2))
            return quad + const + hidden
        return tf.linalg.matvec(v, (1.0 - beta) * base + beta * b) + hidden

    def transition(v, beta, step_seed):
        seeds = tf.random.experimental.stateless_split(step_seed, 2)
        ph = tf.sigmoid(beta * (v @ w + c))
        h = tf.cast(tf.random.stateless_uniform(tf.shape(ph), seeds[0], dtype=ph.dtype) < ph,
                    ph.dtype)
        act = (1.0 - beta) * base + beta * (b + h @ tf.transpose(w))
        if gaussian:
            return act + tf.random.stateless_normal(tf.shape(act), seeds[1], dtype=act.dtype)
        u = tf.random.stateless_uniform(tf.shape(act), seeds[1], dtype=act.dtype)
        return tf.cast(u < tf.sigmoid(act), act.dtype)

    seed0, seed_loop = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.stack([num_chains, n_vis])
    if gaussian:
        v = base + tf.random.stateless_normal(shape, seed0, dtype=tf.float64)
    else:
        u = tf.random.stateless_uniform(shape, seed0, dtype=tf.float64)
        v = tf.cast(u < tf.sigmoid(base), tf.float64)
    log_w = tf.zeros([num_chains], tf.float64)

    def body(i, v, log_w):
        log_w += log_p_star(v, betas[i]) - log_p_star(v, betas[i - 1])
        v = transition(v, betas[i], tf.random.experimental.stateless_fold_in(seed_loop, i))
        return i + 1, v, log_w

    _, _, log_w = tf.while_loop(
        lambda i, v, log_w: i < tf.shape(betas)[0], body, (tf.constant(1), v, log_w)
    )
    return log_w

"""Low-rank factorization of Dense/Conv layers and a PCA reduction layer.

`low_rank` replaces a layer's kernel `W` (a convolution kernel is read as the
matrix of shape `(kernel_h * kernel_w * in_channels, filters)`) by the product
of two thinner factors from its truncated SVD, `W ~ (U S^1/2)(S^1/2 V^T)`,
when that saves parameters. By Eckart-Young the rank-r truncation is the best
rank-r approximation, with Frobenius error `sqrt(sum_{i>r} s_i^2)`.

`PCA` is a preprocessing layer fitted with `adapt` that projects inputs on
their leading principal components, as scikit-learn's `PCA.transform` does.

Reference:
    Eckart & Young, "The approximation of one matrix by another of lower
    rank", Psychometrika 1936. Denton et al., "Exploiting Linear Structure
    Within Convolutional Networks for Efficient Evaluation", NeurIPS 2014.
"""

import numbers

import keras
import numpy as np
from keras import ops

from tfcompress import data as data_lib
from tfcompress import layers_registry, surgery
from tfcompress._serialization import register


def _is_factorizable(layer):
    spec = layers_registry.lookup(layer)
    if spec is not None and spec.factorize:
        return True
    return isinstance(layer, keras.layers.EinsumDense) and _einsum_axes(layer) is not None


def _einsum_axes(layer):
    """An EinsumDense that is a matrix product over its input's last axes, split up.

    ``"abc,cde->abde"`` (attention's query/key/value) gives ``("abc", "ab", "c",
    "de", "abde")``: input, kept, contracted and produced axes, output. Any
    other equation (ellipses, kernel axes shared with the output) gives None.
    """
    parts = layer.equation.replace(" ", "").replace("->", ",").split(",")
    if len(parts) != 3 or "." in layer.equation:
        return None
    inputs, kernel, outputs = parts
    contracted = "".join(c for c in kernel if c in inputs and c not in outputs)
    produced = "".join(c for c in kernel if c not in inputs)
    kept = inputs[: len(inputs) - len(contracted)]
    if not (contracted and produced and kernel == contracted + produced):
        return None
    if not inputs.endswith(contracted) or outputs != kept + produced:
        return None
    return inputs, kept, contracted, produced, outputs


def _kernel_matrix(layer):
    kernel = layer.kernel.numpy().astype("float64")
    if isinstance(layer, keras.layers.EinsumDense):
        contracted = _einsum_axes(layer)[2]
        return kernel.reshape(int(np.prod(kernel.shape[: len(contracted)])), -1)
    return kernel.reshape(-1, kernel.shape[-1])


def _bias_size(layer):
    bias = getattr(layer, "bias", None)
    return 0 if bias is None else int(np.prod(bias.shape))


def energy_rank(singular_values, energy):
    """Smallest rank whose share of the squared singular values reaches `energy`.

    Args:
        singular_values: 1-D array, in decreasing order.
        energy: share in (0, 1].

    Returns:
        An int in `[1, len(singular_values)]`.

    Example:
        >>> energy_rank(np.array([3.0, 1.0]), 0.9)
        1
    """
    squares = np.asarray(singular_values, dtype="float64") ** 2
    share = np.cumsum(squares) / squares.sum()
    return int(min(np.searchsorted(share, energy - 1e-12) + 1, len(squares)))


def truncated_svd(matrix, rank):
    """The two factors of the rank-`rank` truncated SVD of `matrix`.

    Args:
        matrix: 2-D array of shape (m, n).
        rank: number of singular values kept, in [1, min(m, n)].

    Returns:
        `(first, second, singular_values)`: `first = U_r S_r^1/2` of shape
        (m, rank), `second = S_r^1/2 V_r^T` of shape (rank, n) and all the
        singular values, so that `first @ second` is the best rank-`rank`
        approximation of `matrix`.
    """
    u, s, vt = np.linalg.svd(np.asarray(matrix, dtype="float64"), full_matrices=False)
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank], s


class LowRankReport(list):
    """Rows (dicts) of a low-rank plan, one per Dense/Conv layer; prints as a table.

    Keys: `layer`, `type`, `shape` (the kernel as a matrix), `rank`,
    `full_rank`, `params_before`, `params_after`, `error` (relative
    Frobenius reconstruction error of the kernel), `factorized`, `reason`.
    """

    def __str__(self):
        wide = max([23, *(len(row["layer"]) for row in self)]) + 1
        kind = max([7, *(len(row["type"]) for row in self)]) + 1
        header = (
            f"{'layer':<{wide}}{'type':<{kind}}{'matrix':>12}{'rank':>6}{'of':>5}"
            f"{'params':>10}{'->':>4}{'after':>9}{'rel err':>9}  note"
        )
        lines = [header]
        for row in self:
            shape = "x".join(str(d) for d in row["shape"])
            lines.append(
                f"{row['layer']:<{wide}}{row['type']:<{kind}}{shape:>12}{row['rank']:>6}"
                f"{row['full_rank']:>5}{row['params_before']:>10}{'':>4}"
                f"{row['params_after']:>9}{row['error']:>9.4f}  {row['reason']}"
            )
        before = sum(row["params_before"] for row in self)
        after = sum(row["params_after"] for row in self)
        lines.append(f"total parameters of these layers: {before} -> {after}")
        return "\n".join(lines)


def _check_energy(energy):
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not 0 < energy <= 1:
        raise ValueError(f"`energy` must be a number in (0, 1]. Received: energy={energy}")


def _check_rank(rank, layer_name=None, full_rank=None):
    where = f" for layer '{layer_name}'" if layer_name else ""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"`rank`{where} must be an integer >= 1. Received: rank={rank}")
    if full_rank is not None and rank >= full_rank:
        raise ValueError(
            f"`rank`{where} must be smaller than min(kernel dims) = {full_rank}. "
            f"Received: rank={rank}"
        )


def _all_factorizable(model, select=None):
    return [
        layer
        for layer in surgery.all_layers(model)
        if _is_factorizable(layer) and layer.built and (select is None or select(layer))
    ]


def _labels(model):
    """`{id(layer): label}`: the layer's name, after those of the layers holding it
    that are no models (``"mha0/query"``: the names inside built-in and custom layers
    repeat)."""
    labels = {}
    for layer, chain in surgery.walk_with_ancestors(model):
        owners = [a.name for a in chain if not isinstance(a, keras.Model)]
        labels[id(layer)] = "/".join([*owners, layer.name])
    return labels


def low_rank_report(model, rank=None, energy=0.9, *, layers=None, exclude=None):
    """What `low_rank` would do to each Dense/Conv layer of `model`, without doing it.

    Args:
        model: a built Keras model.
        rank: `None` (choose by `energy`), an int (the same rank for every
            layer where it is below min(kernel dims)), or a dict
            `{layer name: rank}` (only those layers are considered). A layer
            inside another layer is named by its label, ``"mha0/query"``, or
            its own name (then every layer of that name).
        energy: share of the squared singular values to keep, in (0, 1];
            used when `rank` is None.
        layers: optional names, classes or predicates of the layers to
            consider (default all); see `tfc.surgery.Selection`.
        exclude: names, classes or predicates of layers to leave whole.

    Returns:
        A `LowRankReport` (a list of dict rows that prints as a table).

    Raises:
        ValueError: `rank` < 1, a dict rank >= min(kernel dims) or naming no
            Dense/Conv layer, an int rank too large for every layer, or
            `energy` outside (0, 1].
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(
            f"`model` must be a built Keras model (call it on data or give it an Input). "
            f"Received: model={model}"
        )
    select = surgery.Selection(model, layers, exclude)
    layers_registry.warn_overridden(surgery.all_layers(model), "low_rank")
    layers = _all_factorizable(model, select)
    labels = _labels(model)
    if rank is None:
        _check_energy(energy)
    elif isinstance(rank, dict):
        chosen = {}
        for name, value in rank.items():
            named = [layer for layer in layers if name in (layer.name, labels[id(layer)])]
            if not named:
                raise ValueError(
                    f"`rank` names '{name}', which is no Dense/Conv/EinsumDense layer of the "
                    f"model (those are {sorted(labels[id(x)] for x in layers)}). "
                    f"Received: rank={rank}"
                )
            for layer in named:
                _check_rank(value, name, min(_kernel_matrix(layer).shape))
                chosen[id(layer)] = (layer, value)
        layers, rank = [layer for layer, _ in chosen.values()], {
            labels[i]: value for i, (_, value) in chosen.items()
        }
    else:
        _check_rank(rank)
        full_ranks = [min(_kernel_matrix(layer).shape) for layer in layers]
        if layers and rank >= max(full_ranks):
            raise ValueError(
                f"`rank` must be smaller than min(kernel dims) of at least one layer "
                f"(largest is {max(full_ranks)}). Received: rank={rank}"
            )
    return LowRankReport(_plan_layer(layer, labels[id(layer)], rank, energy) for layer in layers)


def _plan_layer(layer, label, rank, energy):
    matrix = _kernel_matrix(layer)
    m, n = matrix.shape
    s = np.linalg.svd(matrix, compute_uv=False)
    full_rank = min(m, n)
    if isinstance(rank, dict):
        r = int(rank[label])
    elif rank is not None:
        r = int(rank)
    else:
        r = energy_rank(s, energy)
    bias = _bias_size(layer)
    row = {
        "layer": label,
        "type": type(layer).__name__,
        "shape": (m, n),
        "full_rank": full_rank,
        "params_before": m * n + bias,
    }
    if r >= full_rank or r * (m + n) >= m * n:
        reason = "rank too high" if r >= full_rank else "no parameter saving"
        row.update(rank=full_rank, params_after=m * n + bias, error=0.0, factorized=False)
        row["reason"] = f"kept ({reason} at rank {r})"
        return row
    total = np.sqrt(np.sum(s**2))
    error = float(np.sqrt(np.sum(s[r:] ** 2)) / total) if total > 0 else 0.0
    row.update(rank=r, params_after=r * (m + n) + bias, error=error, factorized=True)
    row["reason"] = "factorized"
    return row


def _factor_layers(layer, rank):
    """Two layers whose composition applies the rank-`rank` approximation of `layer`."""
    config = layer.get_config()
    name = config["name"]
    first_config = dict(
        config,
        name=f"{name}_u",
        use_bias=False,
        activation="linear",
        bias_regularizer=None,
        activity_regularizer=None,
    )
    second_config = dict(config, name=f"{name}_v", kernel_regularizer=None)
    if isinstance(layer, keras.layers.EinsumDense):
        inputs, kept, contracted, produced, outputs = _einsum_axes(layer)
        r = next(c for c in "zyxwvutsrqponmlkjihgfedcba" if c not in inputs + outputs)
        shape = config["output_shape"]
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        first_config.update(
            equation=f"{inputs},{contracted}{r}->{kept}{r}",
            output_shape=(*shape[: len(kept) - 1], rank),
            bias_axes=None,
        )
        del first_config["use_bias"]  # EinsumDense has bias_axes instead
        second_config["equation"] = f"{kept}{r},{r}{produced}->{outputs}"
    elif isinstance(layer, keras.layers.Dense):
        first_config["units"] = rank
    else:
        first_config["filters"] = rank
        ndim = len(config["kernel_size"])
        second_config.update(
            kernel_size=(1,) * ndim, strides=(1,) * ndim, padding="valid", dilation_rate=(1,) * ndim
        )
    return type(layer).from_config(first_config), type(layer).from_config(second_config)


def _factor_pair(layer, rank):
    """The two built layers (`<name>_u`, `<name>_v`) holding the rank-`rank` factors."""
    if not _is_factorizable(layer):
        raise ValueError(
            "Only Dense, Conv1D/2D/3D and matrix-product EinsumDense layers can be factorized; "
            f"layer '{layer.name}' is a {type(layer).__name__}. Received: layer={layer}"
        )
    if getattr(layer, "groups", 1) != 1:
        raise ValueError(
            f"Grouped convolution '{layer.name}' cannot be factorized. "
            f"Received: groups={layer.groups}"
        )
    matrix = _kernel_matrix(layer)
    _check_rank(rank, layer.name, min(matrix.shape))
    first, second = _factor_layers(layer, rank)
    u, v, _ = truncated_svd(matrix, rank)
    input_shape = layer.get_build_config()["input_shape"]
    first.build(input_shape)
    second.build(first.compute_output_shape(input_shape))
    first.kernel.assign(u.reshape(first.kernel.shape).astype(first.kernel.dtype))
    second.kernel.assign(v.reshape(second.kernel.shape).astype(second.kernel.dtype))
    if getattr(layer, "bias", None) is not None:
        second.bias.assign(layer.bias)
    return first, second


def factorize_layer(layer, rank):
    """A two-layer `keras.Sequential` (named like `layer`) equal to `layer` at rank `rank`.

    Args:
        layer: a built Dense, Conv1D, Conv2D or Conv3D layer (groups=1).
        rank: rank kept, in [1, min(kernel dims)).

    Returns:
        A built `keras.Sequential` of a thin layer `<name>_u` (no bias, no
        activation) and `<name>_v` (Dense, or a 1x1 convolution, holding the
        bias and activation).

    Raises:
        ValueError: for another layer type, grouped convolutions, or a bad rank.
    """
    first, second = _factor_pair(layer, rank)
    seq = keras.Sequential([first, second], name=layer.name)
    seq.build(layer.get_build_config()["input_shape"])
    return seq


@register
class LowRankModel(surgery.SwappedModel):
    """A subclassed model whose Dense/Conv attributes were split by `low_rank`.

    Made by `low_rank` for subclassed models: the user's `call` runs
    unchanged on a copy whose factorized attributes now hold two-layer
    `keras.Sequential`s. The config stores the copy's own config and the rank
    of each attribute path, so a `.keras` file reloads with the same layers
    split (their SVD is recomputed on the fresh weights, then overwritten by
    the saved ones).

    Args:
        model: a built subclassed model; its attributes are replaced in place.
        ranks: `{attribute path: rank}` (`"dense"`, `"blocks.0"`,
            `"heads.out"`, `"encoder/dense"` inside a custom layer).
        **kwargs: base `Model` arguments.

    Raises:
        ValueError: if `model` is not a built Keras model or a rank is bad.

    Example:
        >>> small = low_rank(my_subclassed_model, rank=8)  # doctest: +SKIP
        >>> isinstance(small, LowRankModel)  # doctest: +SKIP
        True
    """

    def __init__(self, model, ranks, **kwargs):
        super().__init__(model, **kwargs)
        self.ranks = dict(ranks)
        self.paths = list(self.ranks)
        self._swap_paths(
            model, self.paths, lambda path, layer: factorize_layer(layer, self.ranks[path])
        )

    def get_config(self):
        return {**super().get_config(), "ranks": self.ranks}


@register
class LowRankLayer(surgery.SwappedLayer):
    """A layer of a Functional model whose Dense/Conv/EinsumDense sublayers were factorized.

    Made by `low_rank` for the layers that hold their weights in sublayers: a
    `MultiHeadAttention` (its query/key/value/output EinsumDense), keras.io's
    `TokenAndPositionEmbedding` or a ViT `PatchEncoder`. Each factorized
    sublayer becomes a two-layer `keras.Sequential` (see `factorize_layer`);
    the layer's own `call` runs unchanged on it. Saves and reloads as `.keras`.

    Args:
        layer: the layer (used, not copied).
        ranks: dict mapping attribute paths inside `layer` to ranks.
        **kwargs: base `Layer` arguments.
    """

    def __init__(self, layer, ranks, **kwargs):
        kwargs.pop("paths", None)  # the keys of ranks
        self.ranks = dict(ranks)
        super().__init__(layer, list(self.ranks), **kwargs)

    def replacement(self, path, layer):
        return factorize_layer(layer, self.ranks[path])

    def get_config(self):
        return {**super().get_config(), "ranks": self.ranks}


def _low_rank_graph(model, plan):
    """`model` rebuilt with each planned layer as its two factors, inline, and each
    layer holding planned sublayers (attention, custom layers) as a `LowRankLayer`."""
    labels = _labels(model)
    plan = {i: plan[label] for i, label in labels.items() if label in plan}

    def planned(layer):
        return _is_factorizable(layer) and id(layer) in plan

    def holds_planned(layer):
        nested = not surgery.is_graph_model(layer) and not _is_factorizable(layer)
        return nested and bool(surgery.layer_paths(layer, planned))

    def make(copy, layer):
        if planned(layer):
            return _factor_pair(layer, plan[id(layer)])
        paths = surgery.layer_paths(layer, planned)
        return LowRankLayer(copy, {path: plan[id(sub)] for path, sub in paths.items()})

    return surgery.replace_layers(model, lambda layer: planned(layer) or holds_planned(layer), make)


def _low_rank_subclassed(model, plan):
    copy, original_of = surgery.copy_with_originals(model)
    labels = _labels(model)
    plan = {i: plan[label] for i, label in labels.items() if label in plan}

    def planned(layer):
        original = original_of.get(id(layer))
        return _is_factorizable(layer) and original is not None and id(original) in plan

    paths = surgery.layer_paths(copy, planned)
    held = {id(original_of[id(layer)]) for layer in paths.values()}
    surgery.raise_unreachable(model, [
        layer for layer in _all_factorizable(model) if id(layer) in plan and id(layer) not in held
    ])
    ranks = {path: plan[id(original_of[id(layer)])] for path, layer in paths.items()}
    return LowRankModel(copy, ranks, name=f"low_rank_{model.name}")


def low_rank(model, rank=None, energy=0.9, *, layers=None, exclude=None):
    """A new model in which Dense/Conv layers are split into two thinner layers.

    Each chosen layer `<name>` becomes a layer `<name>_u` with `rank`
    outputs and no bias, followed by `<name>_v`, a Dense (or a 1x1
    convolution) with the original units, bias and activation, both
    initialised from the truncated SVD; a layer is only replaced when that
    saves parameters. The result fine-tunes with `fit`, saves as `.keras`
    and exports to TFLite.

    Sequential and Functional models (nested ones too) are rebuilt with the
    two layers inline, so pruning and QAT see plain Dense/Conv layers. A
    subclassed model is copied from its config (so it needs a working
    `get_config`) and each factorized attribute (also in lists, dicts and
    custom layers) becomes a two-layer `keras.Sequential`; the copy comes
    back inside a `LowRankModel`, which saves and reloads as `.keras`.

    Args:
        model: a built Keras model (never modified).
        rank: `None` to choose each rank by `energy`; an int for every layer
            where it is below min(kernel dims); or `{layer name: rank}` to
            factorize only the named layers.
        energy: share of squared singular values to keep, in (0, 1].
        layers: optional names, classes or predicates of the layers to
            factorize (default all).
        exclude: names, classes or predicates of layers to keep whole.

    Returns:
        A new Keras model (a `LowRankModel` for a subclassed model).

    Raises:
        ValueError: on a bad `rank` or `energy` (see `low_rank_report`), or
            a subclassed model that cannot be copied or whose layer cannot be
            replaced (named).

    Example:
        >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64)])
        >>> small = low_rank(model, rank=8)
        >>> small.count_params() < model.count_params()
        True

    Reference:
        Denton et al. 2014; Eckart & Young 1936.
    """
    report = low_rank_report(model, rank, energy, layers=layers, exclude=exclude)
    plan = {row["layer"]: row["rank"] for row in report if row["factorized"]}
    if not surgery.is_graph_model(model):
        return _low_rank_subclassed(model, plan)
    return _low_rank_graph(model, plan)


@register
class PCA(keras.layers.Layer):
    """Projects inputs on their leading principal components (fitted with `adapt`).

    `adapt(x)` stores the mean and the leading right singular vectors of the
    centred data; the layer then computes `(x - mean) @ components`, divided
    by the square roots of the explained variances when `whiten=True`. This
    equals scikit-learn's `PCA(n_components, whiten).transform(x)` up to the
    sign of each component.

    Args:
        n_components: int >= 1 (number of components), or float in (0, 1]
            (smallest number whose explained variance reaches that share).
        whiten: scale each component to unit variance.
        **kwargs: base layer arguments.

    Raises:
        ValueError: `n_components` not a positive int or a float in (0, 1];
            at `adapt`, empty or non-finite data, more components than
            features or samples; at call, if `adapt` was never called or the
            inputs have another number of features.

    Example:
        >>> pca = PCA(n_components=0.95)
        >>> pca.adapt(np.random.rand(100, 8).astype("float32"))
        >>> model = keras.Sequential([keras.Input((8,)), pca, keras.layers.Dense(2)])

    Reference:
        Pearson 1901; scikit-learn `sklearn.decomposition.PCA`.
    """

    def __init__(self, n_components, whiten=False, **kwargs):
        is_int = isinstance(n_components, (int, np.integer)) and not isinstance(n_components, bool)
        is_share = isinstance(n_components, (float, np.floating)) and 0 < n_components <= 1
        if not (is_int and n_components >= 1) and not is_share:
            raise ValueError(
                "`n_components` must be an int >= 1 or a float in (0, 1]. "
                f"Received: n_components={n_components!r}"
            )
        super().__init__(**kwargs)
        # Plain Python numbers: NumPy scalars do not serialize in `get_config`.
        self.n_components = int(n_components) if is_int else float(n_components)
        self.whiten = bool(whiten)
        self.n_components_ = None

    def build(self, input_shape):
        if self.n_components_ is None:
            raise ValueError(
                f"PCA layer '{self.name}' must be fitted with `adapt(data)` before use. "
                f"Received: input_shape={input_shape}"
            )
        features = input_shape[-1]
        k = self.n_components_
        self.mean = self.add_weight(shape=(features,), initializer="zeros", trainable=False,
                                    name="mean")
        self.components = self.add_weight(shape=(features, k), initializer="zeros",
                                          trainable=False, name="components")
        self.explained_variance = self.add_weight(shape=(k,), initializer="ones",
                                                  trainable=False, name="explained_variance")

    def adapt(self, data, batch_size=None, steps=None):
        """Fits the mean and components on `data` (array, tensor or tf.data.Dataset).

        Args:
            data: samples of shape (N, features); a dataset yields batches (a
                tuple's first element is taken).
            batch_size: unused; kept for Keras preprocessing-layer parity.
            steps: number of dataset batches to read (all when None).

        Raises:
            ValueError: data empty, not 2-D or not finite, more components
                than features or samples, or `whiten=True` with a kept
                component of zero variance.
        """
        x = _collect(data, steps)
        if x.ndim != 2:
            raise ValueError(f"PCA needs 2-D data (N, features). Received: data.shape={x.shape}")
        n_samples, n_features = x.shape
        if n_samples == 0:
            raise ValueError(
                f"`data` must hold at least one sample. Received: data.shape={x.shape}"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError(
                "`data` must not contain NaN or inf. Received: data with "
                f"{int(x.size - np.isfinite(x).sum())} non-finite values"
            )
        if isinstance(self.n_components, (int, np.integer)):
            if self.n_components > min(n_samples, n_features):
                raise ValueError(
                    f"`n_components` must be at most min(n_samples, n_features) = "
                    f"min({n_samples}, {n_features}). Received: n_components={self.n_components}"
                )
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        variance = s**2 / max(n_samples - 1, 1)
        if isinstance(self.n_components, float):
            share = np.cumsum(variance) / variance.sum()
            k = int(min(np.searchsorted(share, self.n_components, side="right") + 1, len(s)))
        else:
            k = int(self.n_components)
        f32 = np.finfo(np.float32)
        flat = variance[:k] <= f32.eps * max(variance[0], f32.tiny)
        if self.whiten and flat.any():
            raise ValueError(
                f"`whiten=True` would divide by zero: {int(flat.sum())} of the {k} kept "
                "components have no variance in `data`; keep fewer components. "
                f"Received: n_components={self.n_components}"
            )
        if self.built and (self.n_components_ != k or self.mean.shape[0] != n_features):
            raise ValueError(
                f"PCA layer '{self.name}' is already built for another shape; create a new "
                f"layer. Received: data.shape={x.shape}"
            )
        self.n_components_ = k
        if not self.built:
            self.build((None, n_features))
        self.mean.assign(mean.astype(self.mean.dtype))
        self.components.assign(vt[:k].T.astype(self.components.dtype))
        self.explained_variance.assign(variance[:k].astype(self.explained_variance.dtype))

    def call(self, inputs):
        features = self.mean.shape[0]
        if inputs.shape[-1] is not None and inputs.shape[-1] != features:
            raise ValueError(
                f"PCA layer '{self.name}' was adapted on {features} features; `inputs` must "
                f"have as many. Received: inputs.shape={tuple(inputs.shape)}"
            )
        projected = ops.matmul(ops.subtract(inputs, self.mean), self.components)
        if self.whiten:
            projected = projected / ops.sqrt(self.explained_variance)
        return projected

    def compute_output_shape(self, input_shape):
        if self.n_components_ is None:
            raise ValueError(
                f"PCA layer '{self.name}' must be fitted with `adapt(data)` before use. "
                f"Received: input_shape={input_shape}"
            )
        return tuple(input_shape[:-1]) + (self.n_components_,)

    def get_config(self):
        config = {"n_components": self.n_components, "whiten": self.whiten}
        base_config = super().get_config()
        return {**base_config, **config}

    def get_build_config(self):
        config = super().get_build_config()
        if config is not None:
            config["n_components_"] = self.n_components_
        return config

    def build_from_config(self, config):
        self.n_components_ = config.get("n_components_")
        super().build_from_config(config)


# A preprocessing projection: every technique leaves it as it is.
layers_registry.register_layer(PCA)


def _collect(data, steps):
    if data_lib.is_stream(data):
        return data_lib.as_arrays(data, "data", steps=steps)[0].astype("float64")
    return np.asarray(ops.convert_to_numpy(data), dtype="float64")

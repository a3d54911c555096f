"""One table of the layer types tfcompress knows, shared by every technique.

For each layer class it records which weights are kernels (and their output
axis), and what each technique may do with the layer: prune its kernels,
cluster them, fake-quantize them, factorize the layer, remove its units.
Pruning, structured pruning, QAT, clustering and low-rank all ask this table;
none keeps a table of its own.

The subclass rule, the same for every technique: a subclass of a registered
class is treated like its parent as long as it does not override `call`. A
subclass with its own `call` computes something else, so every technique
leaves it alone (and says so) until it is registered with `register_layer`,
either `like=` a built-in class whose maths it keeps, or with its kernels.
"""

import dataclasses
import warnings

import keras

from tfcompress import _compat
from tfcompress.surgery.walk import walk_with_ancestors

# What structured pruning does with a layer's channels (its last axis):
PRODUCES = "produces"  # output units can be removed (config key `unit_key`)
DEPTHWISE = "depthwise"  # per-channel: removing an input channel removes its output
PER_CHANNEL = "per_channel"  # per-channel weights (BatchNorm): sliced with the channels
PASSES = "passes"  # channel-wise function without weights (activation, pooling, ...)
MERGES = "merges"  # element-wise merge of several inputs: they share channels
CONCATENATES = "concatenates"  # concatenation along the channel axis


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A kernel weight of a layer.

    Attributes:
        name: attribute of the layer that holds the variable (`"kernel"`).
        out_axis: axis of the output channels (per-channel clustering and
            quantization, unit removal); negative counts from the end.
        depthwise: the kernel is `(..., in_channels, depth_multiplier)`, so its
            channels are the product of the last two axes.
    """

    name: str
    out_axis: int = -1
    depthwise: bool = False


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What tfcompress may do with one layer class.

    Attributes:
        kernels: the layer's kernels (`Kernel`s).
        prune: names of the kernels magnitude pruning masks.
        cluster: names of the kernels clustering shares values of.
        quantize: QAT knows the layer's maths (see `tfc.quantization`).
        factorize: low-rank factorization can split it into two layers.
        channels: what structured pruning does with its channel axis (one of
            the module constants), or None when it blocks unit removal.
        unit_key: the config key holding the number of output units
            (`"units"`, `"filters"`) when `channels == PRODUCES`.
    """

    kernels: tuple = ()
    prune: tuple = ()
    cluster: tuple = ()
    quantize: bool = False
    factorize: bool = False
    channels: str = None
    unit_key: str = None

    def kernel(self, name):
        return next(k for k in self.kernels if k.name == name)


def _weighted(kernels=("kernel",), prune=None, cluster=None, **kwargs):
    kernels = tuple(k if isinstance(k, Kernel) else Kernel(k) for k in kernels)
    names = tuple(k.name for k in kernels)
    return LayerSpec(
        kernels=kernels,
        prune=names if prune is None else tuple(prune),
        cluster=names if cluster is None else tuple(cluster),
        **kwargs,
    )


def _builtin_table():
    L = keras.layers
    dense = _weighted(quantize=True, factorize=True, channels=PRODUCES, unit_key="units")
    conv = _weighted(quantize=True, factorize=True, channels=PRODUCES, unit_key="filters")
    depthwise = _weighted(
        (Kernel("kernel", depthwise=True),), quantize=True, channels=DEPTHWISE
    )
    separable = _weighted(
        (Kernel("depthwise_kernel", depthwise=True), Kernel("pointwise_kernel")),
        prune=("pointwise_kernel",),
        quantize=True,
    )
    transposed = _weighted((Kernel("kernel", out_axis=-2),))
    recurrent = _weighted(("kernel", "recurrent_kernel"))
    passes = LayerSpec(channels=PASSES)
    table = {
        L.Dense: dense,
        L.EinsumDense: _weighted(),
        L.Conv1D: conv,
        L.Conv2D: conv,
        L.Conv3D: _weighted(factorize=True, channels=PRODUCES, unit_key="filters"),
        L.Conv1DTranspose: transposed,
        L.Conv2DTranspose: transposed,
        L.Conv3DTranspose: _weighted((Kernel("kernel", out_axis=-2),), cluster=()),
        L.DepthwiseConv1D: depthwise,
        L.DepthwiseConv2D: depthwise,
        L.SeparableConv1D: separable,
        L.SeparableConv2D: separable,
        L.Embedding: _weighted(("embeddings",)),
        L.LSTMCell: recurrent,
        L.GRUCell: recurrent,
        L.SimpleRNNCell: recurrent,
        L.BatchNormalization: LayerSpec(channels=PER_CHANNEL),
        # Few parameters, numerically sensitive: known, left in float.
        L.LayerNormalization: LayerSpec(),
        L.GroupNormalization: LayerSpec(),
        L.UnitNormalization: LayerSpec(),
        L.Normalization: LayerSpec(),
        L.Rescaling: LayerSpec(),
        L.Add: LayerSpec(channels=MERGES),
        L.Subtract: LayerSpec(channels=MERGES),
        L.Multiply: LayerSpec(channels=MERGES),
        L.Average: LayerSpec(channels=MERGES),
        L.Maximum: LayerSpec(channels=MERGES),
        L.Minimum: LayerSpec(channels=MERGES),
        L.Concatenate: LayerSpec(channels=CONCATENATES),
    }
    for cls in (
        L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Softmax, L.PReLU,
        L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
        L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization,
        L.Identity,
        L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
        L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
        L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D,
        L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
        L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
        L.Cropping1D, L.Cropping2D, L.Cropping3D,
        L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
    ):  # fmt: skip
        table[cls] = passes
    if hasattr(L, "ReversibleEmbedding"):  # an Embedding whose reverse=True call is a
        table[L.ReversibleEmbedding] = table[L.Embedding]  # tied projection (QAT refuses it)
    return table


_TABLE = _builtin_table()


def register_layer(
    cls,
    *,
    like=None,
    kernels=None,
    prune=None,
    cluster=None,
    quantize=None,
    factorize=False,
    channels=None,
    unit_key=None,
):
    """Tells every tfcompress technique how to treat a custom layer class.

    Either `like=` a registered class whose maths `cls` keeps (e.g. a
    `keras.layers.Dense` subclass whose `call` only adds logging), or the
    names of its kernel weights. Pruning masks, clustering shares and QAT
    fake-quantizes those kernels while running the layer's own `call`
    (quantize=True also gives its output an int8 range). With neither, the
    class is known to hold nothing to compress: every technique leaves it as
    it is without a warning.

    Args:
        cls: a `keras.layers.Layer` subclass.
        like: a class already registered; `cls` gets its entry (and the
            other arguments override fields of it).
        kernels: attribute names of the layer's kernels (or `Kernel`s, to
            give an output axis other than the last).
        prune: names of the kernels to prune (default: all kernels).
        cluster: names of the kernels to cluster (default: all kernels).
        quantize: fake-quantize the kernels in QAT (default: True for a
            custom layer with kernels; as `like` otherwise).
        factorize: low-rank can split it (only with `like=` a factorizable
            built-in class).
        channels: structured-pruning rule (`layers_registry.PASSES`, ...).
        unit_key: config key of its units, for `channels=PRODUCES`.

    Returns:
        The `LayerSpec` now registered for `cls`.

    Raises:
        ValueError: `cls` is not a Layer subclass, `like` is not registered,
            a kernel name is empty, or `prune`/`cluster` name a non-kernel.

    Example:
        >>> class Scale(keras.layers.Layer):
        ...     def build(self, shape):
        ...         self.w = self.add_weight(shape=shape[1:])
        ...     def call(self, x):
        ...         return x * self.w
        >>> spec = register_layer(Scale, kernels=["w"])
        >>> spec.prune, spec.cluster, spec.quantize
        (('w',), ('w',), True)
    """
    if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise ValueError(f"`cls` must be a keras Layer subclass. Received: cls={cls}")
    if like is not None:
        base = _TABLE.get(like) if isinstance(like, type) else None
        if base is None:
            raise ValueError(
                "`like` must be a layer class tfcompress knows "
                f"(e.g. keras.layers.Dense). Received: like={like}"
            )
        if kernels is not None:
            base = dataclasses.replace(base, **_weighted(kernels).__dict__)
    elif kernels is None:
        base = LayerSpec()
    else:
        if isinstance(kernels, str) or not all(
            isinstance(k, Kernel) or (isinstance(k, str) and k) for k in kernels
        ):
            raise ValueError(
                "`kernels` must be a list of attribute names (or Kernel). "
                f"Received: kernels={kernels!r}"
            )
        base = dataclasses.replace(_weighted(kernels), quantize=True)
    changes = {
        key: tuple(value) if key in ("prune", "cluster") else value
        for key, value in dict(
            prune=prune, cluster=cluster, quantize=quantize, channels=channels, unit_key=unit_key
        ).items()
        if value is not None
    }
    if factorize:
        changes["factorize"] = True
    spec = dataclasses.replace(base, **changes)
    names = {k.name for k in spec.kernels}
    for field in ("prune", "cluster"):
        unknown = set(getattr(spec, field)) - names
        if unknown:
            raise ValueError(
                f"`{field}` names weights that are not kernels: {sorted(unknown)}. "
                f"Received: {field}={getattr(spec, field)}"
            )
    _TABLE[cls] = spec
    return spec


def _register_keras_hub():
    """keras_hub's `PositionEmbedding`, which reads rows of its `position_embeddings`
    table (its token embedding is Keras' `ReversibleEmbedding`, in the table above).
    Registered on the first keras_hub layer seen: tfcompress never imports keras_hub."""
    global _KERAS_HUB_PENDING
    _KERAS_HUB_PENDING = False
    try:
        from keras_hub.layers import PositionEmbedding
    except ImportError:  # another keras_hub version: its layers stay unknown
        return
    if PositionEmbedding not in _TABLE:
        register_layer(PositionEmbedding, kernels=["position_embeddings"])


_KERAS_HUB_PENDING = True


def registered_class(layer):
    """The registered class whose entry applies to `layer`, or None.

    The closest registered class in the layer's MRO applies unless the
    layer's class overrides `call` below it (the subclass rule).
    """
    if _KERAS_HUB_PENDING and type(layer).__module__.startswith("keras_hub."):
        _register_keras_hub()
    for cls in type(layer).__mro__:
        if cls in _TABLE:
            return cls if type(layer).call is cls.call else None
    return None


def lookup(layer):
    """The `LayerSpec` of a layer, or None for a layer tfcompress does not know."""
    cls = registered_class(layer)
    return None if cls is None else _TABLE[cls]


def overrides_call(layer):
    """A subclass of a registered class that overrides `call` (left alone by the rule)."""
    return registered_class(layer) is None and any(c in _TABLE for c in type(layer).__mro__)


def warn_overridden(layers, technique):
    """Warns about subclasses of known layers that every technique leaves alone."""
    classes = sorted({type(layer).__name__ for layer in layers if overrides_call(layer)})
    if not classes:
        return
    warnings.warn(
        f"{technique} leaves layers of {classes} unchanged: they subclass a Keras layer but "
        "override call(), so tfcompress cannot know what they compute. Register them with "
        "tfc.register_layer(cls, like=<parent class>) if call() keeps the parent's maths, "
        "or tfc.register_layer(cls, kernels=[...]).",
        stacklevel=3,
    )


def variable(layer, name):
    """The `keras.Variable` a layer holds under attribute `name`, or None.

    LoRA-enabled layers return a tensor from the `kernel` property and keep the
    variable as `_kernel`.
    """
    value = getattr(layer, name, None)
    if not isinstance(value, keras.Variable):
        value = _compat.lora_base_variable(layer, name)
    return value if isinstance(value, keras.Variable) else None


def kernel_variables(layer, field):
    """`[(Kernel, variable)]` of `layer` itself that technique `field` works on.

    `field` is `"prune"` or `"cluster"`. A layer that defines
    `get_prunable_weights()` (the tfmot protocol) gives its own pruning list.
    """
    spec = lookup(layer)
    if spec is None:
        return []
    out = []
    for name in getattr(spec, field):
        v = variable(layer, name)
        if v is not None:
            out.append((spec.kernel(name), v))
    return out


def labelled_kernels(layer, field, accept=None):
    """`[(label, Kernel, variable)]` of `layer` and every layer inside it, in a fixed order.

    `field` is as in `kernel_variables`; `accept(sublayer)` (default: all)
    chooses whose kernels count. A kernel of `layer` itself is labelled by its
    name (`"kernel"`), one of a layer inside it by the path of sublayer names
    (`"query/kernel"`, `"forward_lstm/lstm_cell/kernel"`).
    """
    accept = accept or (lambda sub: True)
    found = []
    if accept(layer):
        found += [(k.name, k, v) for k, v in kernel_variables(layer, field)]
    for sub, ancestors in walk_with_ancestors(layer):
        if accept(sub):
            path = "/".join(a.name for a in (*ancestors, sub))
            found += [(f"{path}/{k.name}", k, v) for k, v in kernel_variables(sub, field)]
    return found

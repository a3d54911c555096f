"""Per-layer quantization settings: opt-out and custom scheme."""

import numbers

from tfcompress._serialization import register

_MODES = ("int8", "float")
_GRANULARITIES = (None, "per_channel", "per_tensor")


@register
class QuantizeConfig:
    """How one layer is quantized during QAT.

    Pass instances to `quantize_model(model, layer_configs={name: config})`.
    The defaults follow TFLite's int8 scheme: symmetric int8 weights, per output
    channel for Conv/DepthwiseConv and per tensor for Dense; asymmetric int8
    activations whose range is a moving average of batch min/max.

    Args:
        mode: `"int8"` to quantize the layer, `"float"` to leave it in float
            (opt-out; no warning is given for it).
        num_bits: bits per value; TFLite integer kernels need 8.
        weight_granularity: `None` (the default for the layer kind),
            `"per_channel"` or `"per_tensor"`. A per-channel Dense runs as a 1x1
            convolution (the TFLite converter rejects per-channel
            FULLY_CONNECTED kernels from fake-quant graphs), so its file has
            CONV_2D and RESHAPE ops instead of FULLY_CONNECTED.
        ema_decay: weight of the old range in the moving average of activation
            ranges, in `[0, 1)`. The first training batch sets the range.
        preserve_sparsity: keep the kernel's exact zeros (pruned weights) at
            zero through QAT.
        preserve_clusters: train a clustered kernel (from
            `tfc.clustering.strip_clustering`) as trainable centroids indexed
            by fixed integer indices, so that it keeps its number of distinct
            values per tensor/output channel (cluster-preserving QAT). `None`
            (the default) follows `quantize_model(preserve_clusters=...)`.

    Raises:
        ValueError: for a mode other than `"int8"`/`"float"`, `num_bits != 8`, an
            unknown granularity, `ema_decay` outside `[0, 1)`, a non-bool
            `preserve_sparsity` or a `preserve_clusters` other than
            `None`/`True`/`False`.

    Example:
        >>> cfg = QuantizeConfig(mode="float")
        >>> QuantizeConfig.from_config(cfg.get_config()).mode
        'float'
    """

    def __init__(
        self,
        mode="int8",
        num_bits=8,
        weight_granularity=None,
        ema_decay=0.99,
        preserve_sparsity=True,
        preserve_clusters=None,
    ):
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode}")
        if num_bits != 8 or isinstance(num_bits, bool):
            raise ValueError(
                "Only 8-bit quantization converts to TFLite integer kernels. "
                f"Received: num_bits={num_bits}"
            )
        if weight_granularity not in _GRANULARITIES:
            raise ValueError(
                f"`weight_granularity` must be one of {_GRANULARITIES}. "
                f"Received: weight_granularity={weight_granularity}"
            )
        if not is_decay(ema_decay):
            raise ValueError(f"`ema_decay` must be in [0, 1). Received: ema_decay={ema_decay}")
        if preserve_sparsity not in (True, False):
            raise ValueError(
                "`preserve_sparsity` must be True or False. "
                f"Received: preserve_sparsity={preserve_sparsity}"
            )
        if preserve_clusters not in (None, True, False):
            raise ValueError(
                "`preserve_clusters` must be None, True or False. "
                f"Received: preserve_clusters={preserve_clusters}"
            )
        self.mode = mode
        self.num_bits = num_bits
        self.weight_granularity = weight_granularity
        self.ema_decay = float(ema_decay)
        self.preserve_sparsity = bool(preserve_sparsity)
        self.preserve_clusters = None if preserve_clusters is None else bool(preserve_clusters)

    def get_config(self):
        return {
            "mode": self.mode,
            "num_bits": self.num_bits,
            "weight_granularity": self.weight_granularity,
            "ema_decay": self.ema_decay,
            "preserve_sparsity": self.preserve_sparsity,
            "preserve_clusters": self.preserve_clusters,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, QuantizeConfig) and self.get_config() == other.get_config()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"QuantizeConfig({args})"


def is_decay(value):
    """Whether `value` is a real number in ``[0, 1)`` (NumPy scalars included)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= value < 1.0

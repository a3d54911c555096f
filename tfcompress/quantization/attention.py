"""QAT of transformer layers: MultiHeadAttention, LayerNormalization, Embedding.

Each layer computes the ops its TFLite file runs, with a fake-quant range on
every tensor the converter stores in int8:

- attention: FULLY_CONNECTED projections (the query's ``1/sqrt(key_dim)``
  folded into its kernel and bias, so no MUL is left), RESHAPE/TRANSPOSE to
  heads, BATCH_MATMUL scores, SOFTMAX on its fixed 1/256 grid, BATCH_MATMUL
  context, FULLY_CONNECTED output;
- layer norm (as `tfc.export` traces it): MEAN, SUB, MUL (square), MEAN, ADD
  (epsilon), RSQRT, MUL (gamma), MUL, ADD (beta);
- embedding: GATHER from an int8 table, whose output keeps the table's scale.

Kernels and tables are int8 per tensor, symmetric.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tfcompress import _tracing
from tfcompress._serialization import register
from tfcompress.quantization import quantizers
from tfcompress.quantization.layers import RangedLayer, is_on_int8_grid, mark_quantized
from tfcompress.quantization.registry import (
    ATTENTION_EXTRAS,
    attention_projection,
    flat_matmul,
    is_embedding,
    quantizable_attention,
    quantizable_layer_norm,
)

_SOFTMAX = quantizers.FIXED_OUTPUT_RANGES["softmax"]


def _projections(layer):
    return layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense


class _Ranged(RangedLayer):
    """A quantized transformer layer: its roles' ranges, and inputs ranged on request."""

    ROLES = ()

    def build(self, *args, **kwargs):
        roles = list(getattr(self, "roles", self.ROLES))
        self.build_ranges(roles + (["input", "input_value"] if self.quantize_inputs else []))
        self.built = True

    def _q(self, role, x, training, update=True):
        return self.ranges[role](x, training=bool(training) and update)

    def _input(self, x, training, role="input"):
        if self.quantize_inputs and not is_on_int8_grid(x):
            return self._q(role, x, training)
        return x


@register
class QuantizedAttention(_Ranged):
    """Runs a `MultiHeadAttention` layer as int8 FULLY_CONNECTED, BATCH_MATMUL and SOFTMAX.

    The wrapped layer keeps its float variables (training updates them). Masks
    (`attention_mask`, `use_causal_mask`, masked inputs) are not supported:
    such layers stay float. Attention dropout applies in training as in Keras.

    Args:
        layer: the `MultiHeadAttention` layer (used, not copied);
            `quantizable_attention(layer)` must hold.
        quantize_config: a `QuantizeConfig`; `None` uses the defaults.
        quantize_inputs: give the query and value inputs a range unless they
            come straight from another quantized layer (subclassed models).
        **kwargs: base `Layer` arguments.

    Example:
        >>> mha = keras.layers.MultiHeadAttention(2, 4)
        >>> x = ops.ones((1, 3, 8))
        >>> _ = mha(x, x)
        >>> q = QuantizedAttention(mha, quantize_inputs=True)
        >>> tuple(q(x, x, training=True).shape)
        (1, 3, 8)
    """

    ROLES = ("query", "key", "value", "scores", "context", "output")

    def __init__(self, layer, quantize_config=None, quantize_inputs=False, **kwargs):
        if not isinstance(layer, keras.layers.Layer) or not quantizable_attention(layer):
            raise ValueError(
                "QuantizedAttention needs a built keras.layers.MultiHeadAttention over the "
                f"steps of (batch, steps, features) inputs. Received: layer={layer}"
            )
        super().__init__(layer, quantize_config, quantize_inputs, **kwargs)
        self.dropout = keras.layers.Dropout(layer.dropout) if layer.dropout else None
        # A projection factorized by `tfc.factorization.low_rank` is two FULLY_CONNECTED
        # ops, with a range on the tensor between them.
        self.projections = {
            role: attention_projection(dense)
            for role, dense in zip(self.ROLES[:3] + self.ROLES[-1:], _projections(layer))
        }
        self.roles = self.ROLES + tuple(
            f"{role}_factor" for role, parts in self.projections.items() if len(parts) > 1
        )

    def _project(self, role, x, training, factor=1.0):
        """A projection as FULLY_CONNECTED ops on the last axis of `x`, each kernel int8."""
        parts = self.projections[role]
        for i, dense in enumerate(parts):
            last = i == len(parts) - 1
            shape = tuple(dense.kernel.shape)
            # Attention contracts the first kernel axis (the output projection: all but the last).
            rows = shape[0] if role != "output" or i else int(math.prod(shape[:-1]))
            kernel = ops.reshape(dense.kernel * (factor if last else 1.0), (rows, -1))
            x = flat_matmul(x, quantizers.quantize_weight(kernel))
            if dense.bias is not None:
                x = x + ops.reshape(dense.bias * factor, (-1,))
            x = self._q(role if last else f"{role}_factor", x, training)
        return x

    def _heads(self, role, x, training, factor=1.0):
        """A projection to heads, ``(batch, heads, steps, dim)``."""
        heads, dim = self.projections[role][-1].kernel.shape[-2:]
        y = ops.reshape(self._project(role, x, training, factor), (-1, x.shape[1], heads, dim))
        return ops.transpose(y, (0, 2, 1, 3))

    def call(self, query, value, key=None, training=None, **kwargs):
        extras = sorted(k for k, v in kwargs.items() if k in ATTENTION_EXTRAS and v)
        if extras or set(kwargs) - set(ATTENTION_EXTRAS):
            raise ValueError(
                f"The quantized attention layer {self.layer.name!r} takes no masks or "
                "attention scores. Leave it float (`exclude=` in `quantize_model`). "
                f"Received: {sorted(kwargs)}"
            )
        layer = self.layer
        query = self._input(query, training)
        value = self._input(value, training, "input_value") if value is not query else query
        key = value if key is None else self._input(key, training, "input_value")
        scale = 1.0 / math.sqrt(float(layer.key_dim))
        q = self._heads("query", query, training, scale)
        k = self._heads("key", key, training)
        v = self._heads("value", value, training)
        scores = self._q("scores", ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))), training)
        probs = quantizers.fake_quant(ops.softmax(scores, axis=-1), *_SOFTMAX)
        if self.dropout is not None:
            probs = self.dropout(probs, training=training)
        context = self._q("context", ops.matmul(probs, v), training)
        context = ops.transpose(context, (0, 2, 1, 3))
        context = ops.reshape(context, (-1, context.shape[1], layer.num_heads * layer.value_dim))
        return mark_quantized(self._project("output", context, training))

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        return self.layer.compute_output_shape(query_shape, value_shape or query_shape, key_shape)


@register
class QuantizedLayerNorm(_Ranged):
    """Runs a `LayerNormalization` (last axis) as int8 MEAN, SUB, MUL, ADD and RSQRT.

    The ops and their order are those `tfc.export.to_tflite` traces (no NEG):
    ``(x - mean) * (gamma * rsqrt(mean((x - mean)^2) + eps)) + beta``, each
    result on its own range. Gamma and beta keep training.

    Args:
        layer: the `LayerNormalization` layer (used, not copied);
            `quantizable_layer_norm(layer)` must hold.
        quantize_config: a `QuantizeConfig`; `None` uses the defaults.
        quantize_inputs: give the input a range unless it comes straight from
            another quantized layer (subclassed models).
        **kwargs: base `Layer` arguments.
    """

    ROLES = ("mean", "centered", "squared", "variance", "shifted", "inv", "scale",
             "normalized", "output")  # fmt: skip

    def __init__(self, layer, quantize_config=None, quantize_inputs=False, **kwargs):
        if not isinstance(layer, keras.layers.Layer) or not quantizable_layer_norm(layer):
            raise ValueError(
                "QuantizedLayerNorm needs a keras.layers.LayerNormalization over one axis "
                f"without rms_scaling. Received: layer={layer}"
            )
        super().__init__(layer, quantize_config, quantize_inputs, **kwargs)

    def call(self, inputs, training=None):
        layer = self.layer
        if not quantizable_layer_norm(layer, len(inputs.shape)):
            raise ValueError(
                f"The quantized layer norm {layer.name!r} normalizes the last axis only. "
                f"Received: axis={layer.axis} for inputs of shape {tuple(inputs.shape)}"
            )
        x = self._input(inputs, training)
        mean = self._q("mean", ops.mean(x, axis=-1, keepdims=True), training)
        centered = self._q("centered", x - mean, training)
        squared = self._q("squared", centered * centered, training)
        variance = self._q("variance", ops.mean(squared, axis=-1, keepdims=True), training)
        shifted = self._q("shifted", variance + layer.epsilon, training)
        inv = self._q("inv", ops.rsqrt(shifted), training)
        if layer.gamma is not None:
            inv = self._q("scale", inv * layer.gamma, training)
        y = self._q("normalized", centered * inv, training)
        if layer.beta is not None and not _zero_while_exporting(layer.beta):
            y = self._q("output", y + layer.beta, training)
        return mark_quantized(y)


def _zero_while_exporting(variable):
    """Whether `to_tflite` is tracing and `variable` is all zeros.

    The converter folds the ADD of an all-zero beta away, which leaves the
    "normalized" and "output" ranges back to back, nearly equal, and the
    converter then fails on them ("same scale constraint"). The file keeps the
    normalized result's grid instead (at most a step from the QAT model's).
    """
    if not _tracing.exporting():
        return False
    with tf.init_scope():  # the value now, outside the graph being traced
        return not np.any(ops.convert_to_numpy(variable))


@register
class QuantizedEmbedding(_Ranged):
    """Runs an `Embedding` as a GATHER from an int8 table (per tensor, symmetric).

    TFLite's GATHER keeps the table's scale on its output, so the output needs
    no range of its own. Masks (`mask_zero`) pass through unchanged.

    Args:
        layer: the `Embedding` layer (used, not copied).
        quantize_config: a `QuantizeConfig`; `None` uses the defaults.
        quantize_inputs: unused (the input is integer ids); kept for a uniform signature.
        **kwargs: base `Layer` arguments.
    """

    def __init__(self, layer, quantize_config=None, quantize_inputs=False, **kwargs):
        if not isinstance(layer, keras.layers.Layer) or not is_embedding(layer):
            raise ValueError(
                "QuantizedEmbedding needs a keras.layers.Embedding (or a subclass keeping its "
                f"maths). Received: layer={layer}"
            )
        super().__init__(layer, quantize_config, False, **kwargs)

    def call(self, inputs, training=None, reverse=False):
        if reverse:  # keras_hub's ReversibleEmbedding, used as a tied output projection
            raise ValueError(
                f"The quantized embedding {self.layer.name!r} gathers rows only: leave it float "
                "(`exclude=` in `quantize_model`) to project onto its table. Received: reverse=True"
            )
        table = quantizers.quantize_weight(self.layer.embeddings)
        ids = inputs if "int" in str(inputs.dtype) else ops.cast(inputs, "int32")
        return mark_quantized(ops.take(table, ids, axis=0))

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(inputs, mask)

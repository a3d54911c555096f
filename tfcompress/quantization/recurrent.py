"""QAT of recurrent layers: LSTM, GRU and SimpleRNN unrolled on int8 grids.

`tfc.export.to_tflite` traces recurrent layers unrolled over their time
steps, so each step of the file is FULLY_CONNECTED, ADD, SUB, MUL, SPLIT,
LOGISTIC and TANH ops. `QuantizedRecurrent` computes the same steps with a
fake-quant range on every tensor the converter will store in int8, shared
by all steps (one scale per tensor of the cell, as in the file): the input
and recurrent projections, the gate sums, the cell state and its products,
the hidden state. Sigmoid and tanh outputs sit on the fixed grids TFLite's
int8 LOGISTIC (1/256) and TANH (1/128) kernels require. Kernels are int8
per tensor, symmetric, like every FULLY_CONNECTED weight.
"""

import keras
from keras import ops

from tfcompress._serialization import register
from tfcompress.quantization import quantizers, registry
from tfcompress.quantization.layers import RangedLayer, is_on_int8_grid, mark_quantized

_SIGMOID = quantizers.FIXED_OUTPUT_RANGES["sigmoid"]
_TANH = quantizers.FIXED_OUTPUT_RANGES["tanh"]

# The learned ranges each cell type needs, by role (the kinds are registry.RECURRENT).
_RANGES = {
    "LSTM": ("input_projection", "recurrent_projection", "gates", "forget_cell",
             "input_cell", "cell", "output"),
    "GRU": ("input_projection", "recurrent_projection", "update_reset", "reset_recurrent",
            "candidate_sum", "difference", "update_difference", "output"),
    "SimpleRNN": ("input_projection", "recurrent_projection", "sum"),
}  # fmt: skip


@register
class QuantizedRecurrent(RangedLayer):
    """Runs an LSTM, GRU or SimpleRNN (or a Bidirectional one) unrolled on int8 grids.

    The wrapped layer keeps its float variables (training updates them); its
    kernels are fake-quantized per tensor in every step (with
    `quantize_config.preserve_sparsity`, their zeros are kept by masks). Dropout and masks are
    not applied (masked layers stay float). A `Bidirectional` layer runs both
    directions with ranges of their own and merges them as TFLite does: a
    CONCATENATION (whose inputs share its range: both directions' hidden
    states do) or an ADD for `merge_mode="sum"`, onto a range of its own.

    Args:
        layer: the recurrent layer (used, not copied);
            `registry.quantizable_recurrent(layer)` must hold.
        quantize_config: a `QuantizeConfig` (its `ema_decay` sets how fast the
            ranges move); `None` uses the defaults.
        quantize_inputs: give the input sequence a range unless it comes
            straight from another quantized layer (subclassed models, where
            the producer is unknown).
        **kwargs: base `Layer` arguments.

    Raises:
        ValueError: if `registry.quantizable_recurrent` refuses the layer, or
            (when called) it is called with a mask.

    Example:
        >>> lstm = keras.layers.LSTM(4)
        >>> lstm.build((None, 3, 2))
        >>> q = QuantizedRecurrent(lstm)
        >>> tuple(q(ops.ones((2, 3, 2)), training=True).shape)
        (2, 4)
    """

    def __init__(self, layer, quantize_config=None, quantize_inputs=False, **kwargs):
        if not isinstance(layer, keras.layers.Layer) or not registry.quantizable_recurrent(layer):
            raise ValueError(
                "QuantizedRecurrent needs a built LSTM, GRU (reset_after=True) or SimpleRNN "
                "(alone or in a Bidirectional merging by concat or sum) with tanh/sigmoid "
                f"activations that returns no state and is not stateful. Received: layer={layer}"
            )
        super().__init__(layer, quantize_config, quantize_inputs, **kwargs)
        rnns = registry.recurrent_directions(layer)
        prefixes = ("forward_", "backward_") if len(rnns) > 1 else ("",)
        self.directions = list(zip(rnns, prefixes))

    def build(self, input_shape=None):
        roles = [
            prefix + role for rnn, prefix in self.directions for role in _RANGES[type(rnn).__name__]
        ]
        # TFLite's CONCATENATION (and the PACK of a sequence) keep one scale for their
        # inputs and output: a concatenated Bidirectional's hidden states share a range.
        self.aliases = {}
        if self.quantize_inputs:
            roles.append("input")
        if len(self.directions) > 1:
            roles.append("merged")
            if self.layer.merge_mode == "concat":
                self.aliases = {"forward_output": "merged", "backward_output": "merged"}
        self.build_ranges([role for role in roles if role not in self.aliases])
        # With preserve_sparsity, the kernels' zeros (pruned weights) stay zero.
        self.masks = {}
        if self.quantize_config.preserve_sparsity:
            for rnn, prefix in self.directions:
                for kernel in (rnn.cell.kernel, rnn.cell.recurrent_kernel):
                    name = f"{prefix}{kernel.path.split('/')[-1]}_mask"
                    self.masks[id(kernel)] = self.add_weight(
                        name=name,
                        shape=tuple(kernel.shape),
                        initializer=lambda shape, dtype, k=kernel: ops.cast(
                            ops.not_equal(k, 0.0), dtype
                        ),
                        trainable=False,
                    )
        self.built = True

    def _kernel(self, variable):
        mask = self.masks.get(id(variable))
        return quantizers.quantize_weight(variable if mask is None else variable * mask)

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            raise ValueError(
                f"The quantized recurrent layer {self.layer.name!r} computes every step: it "
                "cannot skip masked steps. Leave it float (`exclude=` in `quantize_model`). "
                "Received: a mask"
            )
        if self.quantize_inputs and not is_on_int8_grid(inputs):
            inputs = self.ranges["input"](inputs, training=training)
        outputs = [self._direction(rnn, p, inputs, training) for rnn, p in self.directions]
        if len(outputs) == 1:
            return mark_quantized(outputs[0])
        forward, backward = outputs
        if self.layer.return_sequences:
            backward = ops.flip(backward, axis=1)  # Bidirectional re-aligns the backward steps
        if self.layer.merge_mode == "concat":
            merged = ops.concatenate([forward, backward], axis=-1)
        else:
            merged = forward + backward
        return mark_quantized(self.ranges["merged"](merged, training=training))

    def _direction(self, rnn, prefix, inputs, training):
        """One recurrent layer's outputs, in Keras' order (reversed when `go_backwards`)."""
        cell = rnn.cell

        def q(role, x, update=True):
            role = self.aliases.get(prefix + role, prefix + role)
            return self.ranges[role](x, training=bool(training) and update)

        kernel, recurrent = self._kernel(cell.kernel), self._kernel(cell.recurrent_kernel)
        steps = ops.unstack(inputs, axis=1)
        if rnn.go_backwards:
            steps = steps[::-1]
        # The zero state, on one fixed grid for every layer and direction: the converter
        # merges identical zero tensors into one, which must then have one scale.
        zeros = quantizers.fake_quant(
            ops.zeros((ops.shape(inputs)[0], cell.units), dtype=inputs.dtype), *_TANH
        )
        step = {"LSTM": _lstm, "GRU": _gru, "SimpleRNN": _simple}[type(rnn).__name__]
        state, outputs = None, []
        for x in steps:
            h, state = step(cell, q, x, state, zeros, kernel, recurrent)
            outputs.append(h)
        return ops.stack(outputs, axis=1) if rnn.return_sequences else outputs[-1]



def _projections(q, x, h, kernel, recurrent, input_bias, recurrent_bias, first):
    projected = ops.matmul(x, kernel)
    if input_bias is not None:
        projected = projected + input_bias
    carried = ops.matmul(h, recurrent)
    if recurrent_bias is not None:
        carried = carried + recurrent_bias
    # The first step carries the zero state: its (constant) projection says nothing
    # of the range the later steps need.
    return q("input_projection", projected), q("recurrent_projection", carried, not first)


def _sigmoid(x):
    return quantizers.fake_quant(ops.sigmoid(x), *_SIGMOID)


def _tanh(x):
    return quantizers.fake_quant(ops.tanh(x), *_TANH)


def _lstm(cell, q, x, state, zeros, kernel, recurrent):
    h, c = (zeros, None) if state is None else state
    bias = cell.bias if cell.use_bias else None
    projected, carried = _projections(q, x, h, kernel, recurrent, bias, None, first=c is None)
    i, f, g, o = ops.split(q("gates", projected + carried), 4, axis=-1)
    i, f, o, g = _sigmoid(i), _sigmoid(f), _sigmoid(o), _tanh(g)
    first = c is None
    # The first step forgets the zero state: f * 0 (every gate is used, or the
    # converter leaves the gates' SPLIT with a dead output, in float).
    forget_cell = q("forget_cell", f * (zeros if first else c), update=not first)
    c = q("cell", forget_cell + q("input_cell", i * g))
    h = q("output", o * _tanh(c))
    return h, (h, c)


def _gru(cell, q, x, state, zeros, kernel, recurrent):
    h = zeros if state is None else state
    units = cell.units
    input_bias, recurrent_bias = (cell.bias[0], cell.bias[1]) if cell.use_bias else (None, None)
    projected, carried = _projections(
        q, x, h, kernel, recurrent, input_bias, recurrent_bias, state is None
    )
    x_zr, x_h = ops.split(projected, [2 * units], axis=-1)
    h_zr, h_h = ops.split(carried, [2 * units], axis=-1)
    # Split before the sigmoids: a SPLIT of a LOGISTIC's output was left float at times.
    z, r = (_sigmoid(v) for v in ops.split(q("update_reset", x_zr + h_zr), 2, axis=-1))
    candidate = _tanh(q("candidate_sum", x_h + q("reset_recurrent", r * h_h)))
    # h = z * h + (1 - z) * candidate, as SUB, MUL and ADD ops.
    h = q("output", candidate + q("update_difference", z * q("difference", h - candidate)))
    return h, h


def _simple(cell, q, x, state, zeros, kernel, recurrent):
    h = zeros if state is None else state
    bias = cell.bias if cell.use_bias else None
    projected, carried = _projections(q, x, h, kernel, recurrent, bias, None, state is None)
    h = _tanh(q("sum", projected + carried))
    return h, h

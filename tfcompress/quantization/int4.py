"""Int4 weight QAT: training on the grid `to_tflite(..., quantization="int4")` stores.

The int4 file (AI Edge Quantizer's `dynamic_wi4_afp32`) keeps activations
float and stores the kernels of its FULLY_CONNECTED and CONV_2D ops as
4-bit integers, symmetric, one scale per output channel:
``s = max|w_c| / 7`` and ``q = clip(rint(w / s), -8, 7)``. At run time the
kernels compute on int8 copies of their float inputs, quantized per batch row.

`quantize_weights(model)` wraps every layer that becomes such an op (Dense,
Conv1D, Conv2D, also inside custom layers and attention blocks) in
`Int4Weights`, which runs the layer with its kernels rounded to that grid and
passes the gradient straight through to the float kernels. Nothing else
changes, so the model trains with plain `fit`, and exporting it gives the
converter kernels that are already on the grid: the int4 file holds exactly
the weights the Keras model used. The rounding is written with plain ops on
the kernel (no fake-quant op), so the converter folds it into the constant.
"""

import keras
from keras import ops

from tfcompress import layers_registry, surgery
from tfcompress._serialization import register

BITS = 4
# Largest integer on the grid: the scale maps max|w| to it.
_QMAX = 2 ** (BITS - 1) - 1
_QMIN = -(2 ** (BITS - 1))
_MIN_SCALE = 1e-9  # the quantizer's floor, so an all-zero channel stays zero

# The layers whose kernels become FULLY_CONNECTED or CONV_2D weights (the ops
# the AI Edge Quantizer stores in int4). Depthwise, transposed and separable
# convolutions, and EinsumDense (BATCH_MATMUL), stay float in the file.
_INT4_CLASSES = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)


def on_int4_grid(w, out_axis=-1):
    """Rounds `w` to the symmetric int4 grid with one scale per `out_axis` entry.

    Args:
        w: a kernel tensor.
        out_axis: its output-channel axis.

    Returns:
        A float tensor of `w`'s shape with ``s * clip(round(w / s), -8, 7)``,
        ``s = max|w| / 7`` over everything but `out_axis`; its gradient with
        respect to `w` is the identity (straight through).

    Example:
        >>> w = ops.convert_to_tensor([[0.7, -0.2], [0.05, 1.4]])
        >>> [[round(float(v), 2) for v in row] for row in on_int4_grid(w)]
        [[0.7, -0.2], [0.0, 1.4]]
    """
    w = ops.convert_to_tensor(w)
    axis = out_axis % len(w.shape)
    others = tuple(i for i in range(len(w.shape)) if i != axis)
    bound = ops.max(ops.abs(ops.stop_gradient(w)), axis=others, keepdims=True)
    scale = ops.maximum(bound / _QMAX, _MIN_SCALE)
    # round() is round-half-to-even, like NumPy's rint that the quantizer uses.
    grid = ops.clip(ops.round(w / scale), _QMIN, _QMAX) * scale
    return w + ops.stop_gradient(grid - w)


def _is_int4_layer(layer):
    cls = layers_registry.registered_class(layer)
    return cls is not None and issubclass(cls, _INT4_CLASSES)


def int4_kernels(layer):
    """`[(label, Kernel, variable)]` that `Int4Weights(layer)` rounds, in a fixed order.

    The kernels of `layer` and of the layers inside it that export as
    FULLY_CONNECTED or CONV_2D; labelled `"kernel"` or by the path of
    sublayer names (`"intermediate_dense/kernel"`).
    """
    return layers_registry.labelled_kernels(layer, "cluster", _is_int4_layer)


@register
class Int4Weights(keras.layers.Wrapper):
    """Runs a layer with its FULLY_CONNECTED/CONV_2D kernels on the int4 grid.

    Each kernel `w` is replaced in the forward pass by `on_int4_grid(w)` (one
    scale per output channel), the value the int4 TFLite file stores; the
    gradient reaches `w` straight through. Works on a Dense/Conv1D/Conv2D and on
    any layer holding them (a custom block, `MultiHeadAttention` whose
    projections are EinsumDense are left as they are).

    Args:
        layer: a built layer with at least one such kernel.
        **kwargs: base layer arguments.

    Raises:
        ValueError: if `layer` is not a built layer with a kernel stored in int4.

    Example:
        >>> dense = keras.layers.Dense(3)
        >>> dense.build((None, 4))
        >>> wrapped = Int4Weights(dense)
        >>> sorted(wrapped.int4_values())
        ['kernel']
    """

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"`layer` must be a Keras layer. Received: layer={layer}")
        kwargs.setdefault("name", f"int4_{layer.name}")
        super().__init__(layer, **kwargs)

    def build(self, input_shape=None):
        if not self.layer.built or not int4_kernels(self.layer):
            if input_shape is not None:
                surgery.symbolic_build(self.layer, input_shape)
        super().build(input_shape)
        self._kernels = int4_kernels(self.layer)
        if not self._kernels:
            raise ValueError(
                f"Layer '{self.layer.name}' of type {type(self.layer).__name__} has no kernel "
                "the int4 file stores in int4 (Dense, Conv1D, Conv2D). "
                f"Received: layer={self.layer}"
            )

    def int4_values(self):
        """`{label: NumPy array}`: each rounded kernel, as the int4 file will hold it."""
        return {
            label: ops.convert_to_numpy(on_int4_grid(v, k.out_axis))
            for label, k, v in self._kernels
        }

    def call(self, inputs, *args, training=None, **kwargs):
        mapping = [(v, on_int4_grid(v, k.out_axis)) for _, k, v in self._kernels]
        return surgery.call_with_values(
            self.layer, mapping, inputs, *args, training=training, **kwargs
        )

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)


@register
class Int4Model(surgery.SwappedModel):
    """A subclassed model whose int4 layers are `Int4Weights` wrappers (from
    `quantize_model(model, weight_bits=4)`).

    Args:
        model: a built subclassed model; its attributes are replaced in place.
        paths: attribute paths of the layers to wrap.
        **kwargs: base `Model` arguments.
    """

    def __init__(self, model, paths, **kwargs):
        super().__init__(model, **kwargs)
        self.paths = list(paths)
        self._swap_paths(model, self.paths, lambda path, layer: _wrapped(layer))

    def get_config(self):
        return {**super().get_config(), "paths": self.paths}


def _wrapped(layer):
    wrapper = Int4Weights(layer)
    wrapper.build((layer.get_build_config() or {}).get("input_shape"))
    return wrapper


def float_layers(model):
    """The Dense/Conv1D/Conv2D layers of an int4 QAT model left out of `Int4Weights`:
    its int4 file keeps them float, as they trained."""
    return [
        layer for layer in surgery.all_layers(model, stop=lambda x: isinstance(x, Int4Weights))
        if _is_int4_layer(layer) and layers_registry.kernel_variables(layer, "cluster")
    ]


def is_int4_quantized(model):
    """Whether `model` holds `Int4Weights` wrappers."""
    return isinstance(model, Int4Model) or any(
        isinstance(layer, Int4Weights) for layer in surgery.all_layers(model)
    )


def quantize_weights(model, select):
    """A copy of `model` whose selected int4 layers train on the int4 grid.

    Args:
        model: a built Keras model, not modified.
        select: a `surgery.Selection` (or any predicate on layers).

    Raises:
        ValueError: if no selected layer has a kernel the int4 file stores in int4.
    """
    def wants(layer):
        return select(layer) and bool(int4_kernels(layer))

    if surgery.is_graph_model(model):
        if not any(wants(layer) for layer in surgery.graph_layers(model)):
            _raise_nothing(model)
        return surgery.replace_layers(model, wants, lambda copy, _: _wrapped(copy))
    copy, original_of = surgery.copy_with_originals(model)
    paths = surgery.layer_paths(copy, lambda layer: wants(original_of[id(layer)]))
    if not paths:
        _raise_nothing(model)
    return Int4Model(copy, list(paths), name=f"int4_{model.name}")


def _raise_nothing(model):
    raise ValueError(
        "`model` has no selected layer whose kernel the int4 file stores in int4 (Dense, "
        f"Conv1D, Conv2D, or layers holding them). Received: model={model.name}"
    )

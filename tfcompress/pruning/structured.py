"""Structured pruning: remove whole neurons and filters, giving a smaller dense model.

Zeros alone do not make a TFLite model faster; fewer units do. `prune_units`
ranks the output units of Dense and Conv layers, the hidden units of
LSTM/GRU/SimpleRNN layers and the heads of MultiHeadAttention layers by the
norm of their incoming weights, removes the weakest, and slices every tensor
and layer those channels flow through.

The hard part is knowing which channels must go together. A residual `Add`
makes its two inputs share channels (both producers must lose the same
units), an SE block multiplies a feature map by per-channel gates, a
depthwise conv maps channel i to channel i, Concatenate stacks channels with
offsets, Flatten repeats them over spatial positions. So the model's graph,
Keras op nodes included (`x * ops.relu6(x + 3.0) / 6.0`), is walked once and
every channel of every tensor gets a *slot*; slots that must be removed
together are merged in a union-find (the dependency-graph idea of
torch-pruning). A channel class can be removed when none of its slots is
*blocked*: reaches a model output, an unknown layer or op, a nested model, or
a non-last-axis operation.
"""

import dataclasses
import numbers

import keras
import numpy as np

from tfcompress import _compat, layers_registry, surgery
from tfcompress.layers_registry import (
    CONCATENATES,
    DEPTHWISE,
    MERGES,
    PASSES,
    PER_CHANNEL,
    PRODUCES,
)
from tfcompress.surgery import as_functional, copy_layer, copy_model, is_graph_model, rebuild_graph

_CRITERIA = ("l1", "l2")
_RESHAPES = "reshapes"  # Flatten, Reshape, ops.reshape: a last axis of k x the channels

# Keras ops (by class name) computed element by element, channel i from channel i.
_UNARY_OPS = frozenset(
    """Abs Absolute Cast Ceil Celu Clip Cos Elu Erf Exp Expm1 Floor Gelu HardShrink HardSigmoid
    HardSilu HardTanh LeakyRelu Log Log1p LogSigmoid Negative Reciprocal Relu Relu6 Round Selu
    Sigmoid Sign Silu Sin SoftShrink Softplus Softsign Sqrt Square Squareplus StopGradient Tanh
    TanhShrink Trunc""".split()
)
# Keras ops combining their operands element by element (with broadcasting).
_BINARY_OPS = frozenset(
    "Add Subtract Multiply Divide TrueDivide Maximum Minimum Power Fmax Fmin".split()
)
_ELEMENTWISE_OPS = _UNARY_OPS | _BINARY_OPS
# Activations mixing the channels of a position: removing one changes the others.
_CROSS_CHANNEL_ACTIVATIONS = frozenset({"softmax", "log_softmax", "sparsemax", "glu"})


class _Slots:
    """Union-find over channel slots; a class is blocked if any of its slots is."""

    def __init__(self):
        self._parent = []
        self._blocked = []

    def new(self, n, blocked=False):
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        self._blocked.extend([blocked] * n)
        return list(range(start, start + n))

    def find(self, slot):
        parent = self._parent
        while parent[slot] != slot:
            parent[slot] = parent[parent[slot]]
            slot = parent[slot]
        return slot

    def tie(self, slots_a, slots_b):
        """The i-th channels of two tensors are removed together."""
        for a, b in zip(slots_a, slots_b):
            a, b = self.find(a), self.find(b)
            if a != b:
                self._parent[b] = a
                self._blocked[a] = self._blocked[a] or self._blocked[b]

    def block(self, slots):
        for slot in slots:
            self._blocked[self.find(slot)] = True

    def blocked(self, slot):
        return self._blocked[self.find(slot)]


@dataclasses.dataclass
class _Producer:
    """A Dense/Conv/recurrent layer whose output units can be removed.

    Attributes:
        layer: the layer.
        slots: the slot of each output unit.
        scores: the norm of each unit's incoming weights (its importance).
        spans: `(start, stop)` ranges of `slots` that must each keep as many
            units (the forward and backward halves of a `Bidirectional` output).
    """

    layer: keras.layers.Layer
    slots: list
    scores: np.ndarray
    spans: tuple = None

    def __post_init__(self):
        if self.spans is None:
            self.spans = ((0, len(self.slots)),)


@dataclasses.dataclass
class _Reader:
    """A layer whose weights follow the channels of its input.

    Attributes:
        layer: the layer.
        role: `PRODUCES` (kernel input axis -2 sliced), `DEPTHWISE` (kernel
            axis -2 and bias), `PER_CHANNEL` (every weight along the last
            axis: BatchNormalization, PReLU), `_RESHAPES` (its target shape).
            A Keras op (`ops.reshape`) can be a `layer` here.
        slots: the slot of each channel of its input.
    """

    layer: object
    role: str
    slots: list


@dataclasses.dataclass
class _Group:
    """Producers whose units are tied (through merges, SE gates, ...): one decision.

    Attributes:
        producers: the `_Producer`s.
        classes: the removable channel classes (union-find roots), in unit order.
        fraction: the fraction of `classes` to remove.
    """

    producers: list
    classes: list
    fraction: float = 0.0


@dataclasses.dataclass
class _Cut:
    """What one layer of the new model loses.

    Attributes:
        role: as `_Reader.role` (a producer that reads nothing sliced is `PRODUCES`).
        width_in: the number of input channels before the cut.
        keep_in: sorted indices of the input channels kept, or None for all.
        keep_out: sorted indices of the output units kept (producers), or None.
    """

    role: str
    width_in: int = None
    keep_in: np.ndarray = None
    keep_out: np.ndarray = None


def _last_dim(tensor):
    shape = tensor.shape
    return shape[-1] if len(shape) else 0


def _is_scalar(value):
    """A non-tensor call argument that cannot hold a value per channel."""
    try:
        return np.size(value) <= 1
    except Exception:  # noqa: BLE001 - an object numpy cannot size: treat as channel data
        return False


class _ChannelGraph:
    """The channel slots of every tensor of a Functional model, and who reads them.

    Walks the nodes in topological order. `channels[id(tensor)]` is the list of
    slots of the tensor's last axis (None when that axis is unknown).
    """

    def __init__(self, model, criterion):
        self.criterion = criterion
        self.slots = _Slots()
        self.channels = {}
        self.producers = {}  # id(layer) -> _Producer
        self.readers = {}  # id(layer) -> _Reader
        for node in _compat.graph_nodes(model):
            self._visit(node)
        for tensor in model.outputs:
            self.slots.block(self.channels.get(id(tensor)) or [])

    # -- the walk -----------------------------------------------------------------

    def _visit(self, node):
        op = node.operation
        args, kwargs = _compat.node_arguments(node)
        leaves = keras.tree.flatten((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, keras.KerasTensor)]
        others = [x for x in leaves if not isinstance(x, keras.KerasTensor)]
        if getattr(node, "is_input", False) or not tensors:
            self._opaque(node, [])
        elif _recurrent_parts(op) and _sequence_only(args, kwargs):
            self._produce_recurrent(node, op, args[0])  # a mask (from Masking) has no channels
        elif _removable_heads(op):
            self._attention(node, op, tensors)
        elif isinstance(op, keras.layers.Layer):
            self._visit_layer(node, op, tensors)
        else:
            self._visit_op(node, op, tensors, others)

    def _visit_op(self, node, op, tensors, others):
        name = type(op).__name__
        if name in _ELEMENTWISE_OPS and not (
            all(map(_is_scalar, others)) and _scalar_attributes(op)
        ):
            self._opaque(node, tensors)  # a constant with a value per channel
        elif name in _UNARY_OPS and len(tensors) == 1:
            self._pass(node, tensors[0])
        elif name in _BINARY_OPS:
            self._elementwise(node, tensors)
        elif name == "Concatenate":
            self._concatenate(node, tensors, node.operation.axis)
        elif name == "Reshape" and len(tensors) == 1 and hasattr(op, "newshape"):
            self._reshape(node, op, tensors[0])
        else:
            self._opaque(node, tensors)

    def _visit_layer(self, node, layer, tensors):
        kind = _layer_kind(layer, len(tensors[0].shape))
        single = len(tensors) == 1
        if kind == PRODUCES and single:
            self._produce(node, layer, tensors[0])
        elif kind == DEPTHWISE and single:
            self._read(layer, DEPTHWISE, tensors[0])
            self._pass(node, tensors[0])
        elif kind == PER_CHANNEL and single:
            self._read(layer, PER_CHANNEL, tensors[0])
            self._pass(node, tensors[0])
        elif kind == PASSES and single:
            if layer.weights:  # PReLU: a weight per channel
                self._read(layer, PER_CHANNEL, tensors[0])
            self._pass(node, tensors[0])
        elif kind == MERGES:
            self._elementwise(node, tensors)
        elif kind == CONCATENATES:
            self._concatenate(node, tensors, layer.axis)
        elif kind == _RESHAPES and single:
            self._reshape(node, layer, tensors[0])
        else:
            self._opaque(node, tensors)

    # -- channel rules ------------------------------------------------------------

    def _fresh(self, tensor, blocked):
        width = _last_dim(tensor)
        return None if width is None else self.slots.new(width, blocked)

    def _set(self, node, slots):
        """The node's output carries `slots`, unless its shape says otherwise (then they stay)."""
        outputs = node.outputs
        if len(outputs) != 1 or slots is None or _last_dim(outputs[0]) != len(slots):
            self.slots.block(slots or [])
            self._opaque(node, [])
            return
        self.channels[id(outputs[0])] = slots

    def _opaque(self, node, tensors):
        """Something whose channel mapping is unknown: its inputs stay whole."""
        for tensor in tensors:
            self.slots.block(self.channels.get(id(tensor)) or [])
        for tensor in node.outputs:
            self.channels[id(tensor)] = self._fresh(tensor, blocked=True)

    def _pass(self, node, tensor):
        self._set(node, self.channels.get(id(tensor)))

    def _elementwise(self, node, tensors):
        """Operands of the same width share channels; a width-1 operand broadcasts."""
        inputs = [self.channels.get(id(t)) for t in tensors]
        if any(slots is None for slots in inputs):
            self._opaque(node, tensors)
            return
        width = max(len(slots) for slots in inputs)
        wide = [slots for slots in inputs if len(slots) == width]
        narrow = [slots for slots in inputs if len(slots) != width]
        if any(len(slots) > 1 for slots in narrow):
            self._opaque(node, tensors)
            return
        for slots in narrow:  # a gate shared by all channels stays
            self.slots.block(slots)
        for slots in wide[1:]:
            self.slots.tie(wide[0], slots)
        self._set(node, wide[0])

    def _concatenate(self, node, tensors, axis):
        inputs = [self.channels.get(id(t)) for t in tensors]
        rank = len(tensors[0].shape)
        if axis not in (-1, rank - 1) or any(slots is None for slots in inputs):
            self._opaque(node, tensors)
            return
        self._set(node, [slot for slots in inputs for slot in slots])

    def _reshape(self, node, operation, tensor):
        """A row-major reshape whose last axis is k times the channels keeps channel j % C.

        Flatten after a conv is one; the target shape then shrinks with the channels.
        """
        slots = self.channels.get(id(tensor))
        width = _last_dim(node.outputs[0]) if len(node.outputs) == 1 else None
        if not slots or not width or width % len(slots):
            self._opaque(node, [tensor])
            return
        self._read(operation, _RESHAPES, tensor)
        self._set(node, slots * (width // len(slots)))

    def _read(self, layer, role, tensor):
        """Records that `layer`'s weights follow its input channels (tied across calls)."""
        slots = self.channels.get(id(tensor))
        seen = self.readers.get(id(layer))
        if seen is None:
            self.readers[id(layer)] = _Reader(layer, role, slots)
        elif seen.slots is None or slots is None or len(seen.slots) != len(slots):
            self.slots.block((seen.slots or []) + (slots or []))
        else:
            self.slots.tie(seen.slots, slots)

    def _produce(self, node, layer, tensor):
        kernel = layers_registry.variable(layer, "kernel")
        if kernel is None or len(kernel.shape) < 2:
            self._opaque(node, [tensor])
            return
        inputs = self.channels.get(id(tensor))
        if inputs is not None and len(inputs) != kernel.shape[-2]:
            self.slots.block(inputs)
        else:
            self._read(layer, PRODUCES, tensor)
        if id(layer) not in self.producers:
            values = kernel.numpy()
            self.producers[id(layer)] = _Producer(
                layer, self.slots.new(values.shape[-1]), _scores(values, self.criterion)
            )
        self._set(node, self.producers[id(layer)].slots)

    def _produce_recurrent(self, node, layer, tensor):
        """An LSTM/GRU/SimpleRNN (or a Bidirectional one): its hidden units are its channels.

        A unit is a column of every gate in the kernel, the recurrent kernel
        and the bias, and a row of the recurrent kernel; they go together.
        """
        parts = _recurrent_parts(layer)
        inputs = self.channels.get(id(tensor))
        if inputs is not None and len(inputs) != parts[0].cell.kernel.shape[0]:
            self.slots.block(inputs)
        else:
            self._read(layer, PRODUCES, tensor)
        if id(layer) not in self.producers:
            scores = [_recurrent_scores(part.cell, self.criterion) for part in parts]
            if _concatenates_parts(layer):
                sizes = np.cumsum([0] + [len(s) for s in scores])
                spans = tuple(zip(sizes[:-1], sizes[1:]))
                scores = np.concatenate(scores)
            else:  # a Bidirectional summing its halves: unit i of both goes together
                spans, scores = None, np.sum(scores, axis=0)
            self.producers[id(layer)] = _Producer(
                layer, self.slots.new(len(scores)), scores, spans
            )
        self._set(node, self.producers[id(layer)].slots)

    def _attention(self, node, layer, tensors):
        """A MultiHeadAttention: whole heads can go; its channels in and out stay."""
        self._opaque(node, tensors)
        if id(layer) not in self.producers:
            scores = _head_scores(layer, self.criterion)
            self.producers[id(layer)] = _Producer(layer, self.slots.new(len(scores)), scores)


_RECURRENT = (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN)


def _removable_heads(layer):
    """A plain, built `MultiHeadAttention` (no gate): its heads can be removed."""
    return (
        type(layer) is keras.layers.MultiHeadAttention
        and layer.built
        and not getattr(layer, "use_gate", False)
    )


def _head_projections(layer):
    return (layer.query_dense, layer.key_dense, layer.value_dense)


def _head_scores(layer, criterion):
    """The norm of each head's query, key and value kernels (its incoming weights)."""
    per_head = [
        np.moveaxis(dense.kernel.numpy(), 1, 0).reshape(layer.num_heads, -1)
        for dense in _head_projections(layer)
    ]  # each (heads, dim x head size)
    return _scores(np.concatenate(per_head, axis=1).T, criterion)


def _sliced_heads(layer, keep):
    """The attention's weights with heads `keep` only (query/key/value heads, output rows)."""
    values = []
    for dense in _head_projections(layer):
        for variable in dense.weights:  # kernel (dim, heads, size), bias (heads, size)
            axis = 1 if variable is dense.kernel else 0
            values.append(np.take(variable.numpy(), keep, axis=axis))
    output = layer.output_dense
    for variable in output.weights:  # kernel (heads, size, out), bias (out,)
        value = variable.numpy()
        values.append(np.take(value, keep, axis=0) if variable is output.kernel else value)
    return values


def _recurrent_parts(layer):
    """The LSTM/GRU/SimpleRNN layers behind `layer`'s output units, or None.

    An LSTM, GRU or SimpleRNN gives itself; a `Bidirectional` one its forward
    and backward layers. None for anything else, and for stateful layers or
    layers returning their states (more than one output).
    """
    if not isinstance(layer, keras.layers.Layer):
        return None
    if isinstance(layer, keras.layers.Bidirectional):
        if layer.merge_mode not in ("concat", "sum", "ave", "mul"):
            return None
        parts = [layer.forward_layer, layer.backward_layer]
    else:
        parts = [layer]
    if not all(
        type(part) in _RECURRENT and not part.return_state and not part.stateful
        and part.cell.built for part in parts
    ):
        return None
    return parts


def _sequence_only(args, kwargs):
    """A recurrent layer called on one sequence, perhaps with its mask: no initial state."""
    return (
        len(args) == 1 and isinstance(args[0], keras.KerasTensor)
        and set(kwargs) <= {"mask", "training"}
    )


def _concatenates_parts(layer):
    return not isinstance(layer, keras.layers.Bidirectional) or layer.merge_mode == "concat"


def _recurrent_scores(cell, criterion):
    """The norm of each hidden unit's weights over every gate (input and recurrent)."""
    stacked = np.concatenate([cell.kernel.numpy(), cell.recurrent_kernel.numpy()])
    return _scores(stacked.reshape(len(stacked), -1, cell.units), criterion)  # (rows, gates, units)


def _gate_columns(cell, keep):
    """The kernel columns of hidden units `keep`, in every gate."""
    gates = cell.kernel.shape[-1] // cell.units
    return np.concatenate([g * cell.units + keep for g in range(gates)])


def _part_keeps(layer, parts, keep_out):
    """The units each recurrent part keeps (all where `keep_out` is None)."""
    units = [part.cell.units for part in parts]
    if keep_out is None:
        return [np.arange(u) for u in units]
    if not _concatenates_parts(layer):
        return [keep_out for _ in parts]
    starts = np.cumsum([0] + units)
    return [keep_out[(keep_out >= a) & (keep_out < b)] - a for a, b in zip(starts, starts[1:])]


def _recurrent_config(layer, parts, cut):
    config = layer.get_config()
    keeps = _part_keeps(layer, parts, cut.keep_out)
    if not isinstance(layer, keras.layers.Bidirectional):
        config["units"] = len(keeps[0])
        return config
    for key, keep in zip(("layer", "backward_layer"), keeps):
        config[key]["config"]["units"] = len(keep)
        config[key].pop("build_config", None)  # built again at the new widths
    return config


def _sliced_recurrent(layer, parts, cut):
    values = []
    for part, keep in zip(parts, _part_keeps(layer, parts, cut.keep_out)):
        cell = part.cell
        columns = _gate_columns(cell, keep)
        for variable in cell.weights:
            value = variable.numpy()
            if variable is cell.kernel and cut.keep_in is not None:
                value = np.take(value, cut.keep_in, axis=0)
            elif variable is cell.recurrent_kernel:
                value = np.take(value, keep, axis=0)
            values.append(np.take(value, columns, axis=-1))
    return values


def _scalar_attributes(op):
    """An op object holding no per-channel constant (ops.clip keeps its bounds)."""
    return all(
        _is_scalar(value)
        for key, value in vars(op).items()
        if not key.startswith("_") and not callable(value)
    )


def _layer_kind(layer, rank):
    """The channel rule of a layer: a registry rule, `_RESHAPES`, or None (it blocks)."""
    if is_graph_model(layer) or getattr(layer, "data_format", None) == "channels_first":
        return None
    if isinstance(layer, (keras.layers.Flatten, keras.layers.Reshape)):
        return _RESHAPES
    if isinstance(layer, keras.layers.Rescaling):
        return PASSES if _is_scalar(layer.scale) and _is_scalar(layer.offset) else None
    spec = layers_registry.lookup(layer)
    kind = spec.channels if spec is not None else None
    if kind == PRODUCES and not _removable_units(layer):
        return None
    if kind == DEPTHWISE and getattr(layer, "depth_multiplier", 1) != 1:
        return None
    if kind == PER_CHANNEL and getattr(layer, "axis", -1) not in (-1, rank - 1):
        return None
    if kind == PASSES and _mixes_channels(layer):
        return None
    return kind


def _removable_units(layer):
    """A Dense/Conv whose kernel is a plain float variable with units on the last axis."""
    return (
        getattr(layer, "groups", 1) == 1
        and not getattr(layer, "lora_enabled", False)
        and not getattr(layer, "quantization_mode", None)
    )


def _mixes_channels(layer):
    activation = getattr(layer, "activation", None)
    return (
        isinstance(layer, keras.layers.Softmax)
        or getattr(activation, "__name__", None) in _CROSS_CHANNEL_ACTIVATIONS
        or getattr(layer, "noise_shape", None) is not None  # Dropout: may name the width
    )


def _scores(kernel, criterion):
    """The L1 or L2 norm of each output unit's incoming weights."""
    columns = kernel.reshape(-1, kernel.shape[-1])
    return np.abs(columns).sum(0) if criterion == "l1" else np.sqrt((columns**2).sum(0))


# -- planning -------------------------------------------------------------------------


def _groups(graph):
    """Producers sharing a removable channel class, merged into `_Group`s."""
    slots = graph.slots
    owner = {}  # class root -> index of the group that holds it
    groups = []
    for producer in graph.producers.values():
        roots = [slots.find(s) for s in producer.slots if not slots.blocked(s)]
        if not roots:
            continue
        group = _Group([], [])
        for index in sorted({owner[r] for r in roots if r in owner}):
            group.producers += groups[index].producers  # groups this producer ties together
            group.classes += groups[index].classes
            groups[index] = None
        known = set(group.classes)
        group.producers.append(producer)
        group.classes += [r for r in dict.fromkeys(roots) if r not in known]
        groups.append(group)
        for r in group.classes:
            owner[r] = len(groups) - 1
    return [g for g in groups if g is not None]


def _check_fraction(name, value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value}")


def _set_fractions(model, groups, fraction):
    """Validates `fraction` and gives each group its fraction."""
    if not isinstance(fraction, dict):
        _check_fraction("fraction", fraction)
        if not groups:
            raise ValueError(
                "No layer of the model can lose units (every Dense/Conv/recurrent unit reaches a "
                f"model output or an unsupported layer or op). Received: model={model.name}"
            )
        for group in groups:
            group.fraction = fraction
        return
    _check_fraction_dict(model, groups, fraction)
    for group in groups:
        names = [p.layer.name for p in group.producers]
        given = {name: fraction[name] for name in names if name in fraction}
        if len(set(given.values())) > 1:
            raise ValueError(
                f"Layers {sorted(given)} must lose the same units (their outputs meet in an "
                "element-wise merge or op), so they take one fraction. "
                f"Received: fraction={fraction}"
            )
        group.fraction = next(iter(given.values()), 0.0)  # tied layers follow a named one


def _check_fraction_dict(model, groups, fraction):
    names = {layer.name for layer in model.layers}
    prunable = {p.layer.name for g in groups for p in g.producers}
    for key, value in fraction.items():
        if key not in names:
            raise ValueError(
                f"Unknown layer name {key!r} in `fraction`. Layers: {sorted(names)}. "
                f"Received: fraction={fraction}"
            )
        if key not in prunable:
            raise ValueError(
                f"Layer {key!r} cannot lose units: it is not a Dense/Conv layer, or all its "
                "units reach a model output or an unsupported layer or op. Prunable: "
                f"{sorted(prunable)}. Received: fraction={fraction}"
            )
        _check_fraction(f"fraction[{key!r}]", value)


def _removed_classes(graph, groups):
    """The channel classes removed: the weakest of each group by summed importance."""
    slots = graph.slots
    removed = set()
    for group in groups:
        n = len(group.classes)
        drop = min(int(round(group.fraction * n)), n - 1)
        if drop <= 0:
            continue
        index = {root: i for i, root in enumerate(group.classes)}
        scores = np.zeros(n)
        for producer in group.producers:
            for slot, score in zip(producer.slots, producer.scores):
                i = index.get(slots.find(slot))
                if i is not None:
                    scores[i] += score
        order = np.argsort(-scores, kind="stable")
        removed.update(group.classes[i] for i in order[n - drop :])
        for producer in group.producers:  # every layer keeps a unit
            roots = [slots.find(s) for s in producer.slots]
            if all(r in removed for r in roots):
                removed.discard(roots[int(np.argmax(producer.scores))])
            if len(producer.spans) > 1:
                _balance(producer, slots, removed)
    return removed


def _balance(producer, slots, removed):
    """Makes each span of `producer` keep as many units: its strongest ones.

    Keras infers a concatenating `Bidirectional`'s width as twice its forward
    layer's, so both halves must keep the same number of units.
    """
    spans = [[slots.find(s) for s in producer.slots[a:b]] for a, b in producer.spans]
    kept = sum(r not in removed for roots in spans for r in roots)
    each = max(1, kept // len(spans))
    for (start, stop), roots in zip(producer.spans, spans):
        order = np.argsort(-producer.scores[start:stop], kind="stable")
        removed.difference_update(roots[i] for i in order[:each])
        removed.update(roots[i] for i in order[each:])


def _kept(graph, slots, removed):
    """Indices of `slots` that survive, or None when all do."""
    if slots is None:
        return None
    keep = [i for i, s in enumerate(slots) if graph.slots.find(s) not in removed]
    return None if len(keep) == len(slots) else np.asarray(keep)


def _cuts(graph, removed):
    """`{id(layer): _Cut}` for every layer whose weights or units change."""
    cuts = {}
    for key, reader in graph.readers.items():
        keep = _kept(graph, reader.slots, removed)
        if keep is not None:
            cuts[key] = _Cut(reader.role, len(reader.slots), keep_in=keep)
    for key, producer in graph.producers.items():
        keep = _kept(graph, producer.slots, removed)
        if keep is not None:
            cuts[key] = dataclasses.replace(cuts.get(key, _Cut(PRODUCES)), keep_out=keep)
    return cuts


# -- rebuilding ------------------------------------------------------------------------


def _new_config(layer, cut):
    config = layer.get_config()
    if cut.keep_out is not None:
        config[layers_registry.lookup(layer).unit_key] = len(cut.keep_out)
    if cut.role == _RESHAPES and "target_shape" in config:
        config["target_shape"] = _new_shape(config["target_shape"], cut)
    return config


def _new_shape(shape, cut):
    """A reshape target whose last axis (k x the channels, or -1) follows the cut."""
    shape = list(shape)
    if shape[-1] != -1:
        shape[-1] = shape[-1] // cut.width_in * len(cut.keep_in)
    return tuple(shape)


def _sliced_weights(layer, cut):
    """The layer's weights with the removed input channels and output units taken out."""
    kernel = layers_registry.variable(layer, "kernel") if cut.role != PER_CHANNEL else None
    width_out = kernel.shape[-1] if kernel is not None else None
    values = []
    for variable, value in zip(layer.weights, layer.get_weights()):
        if variable is kernel:
            if cut.keep_in is not None:
                value = np.take(value, cut.keep_in, axis=-2)
            if cut.keep_out is not None:
                value = np.take(value, cut.keep_out, axis=-1)
        elif cut.role == PRODUCES:
            if cut.keep_out is not None and value.ndim and value.shape[-1] == width_out:
                value = np.take(value, cut.keep_out, axis=-1)
        elif cut.keep_in is not None and value.ndim and value.shape[-1] == cut.width_in:
            value = np.take(value, cut.keep_in, axis=-1)  # bias, BatchNorm, PReLU vectors
        values.append(value)
    return values


def _rebuild(model, cuts):
    """The model re-run node by node with cut layers made smaller."""
    new_layers = {}

    def new_layer(layer, args, kwargs):
        cut = cuts.get(id(layer))
        if cut is None:
            if is_graph_model(layer):
                return copy_model(layer), None
            return copy_layer(layer, call=(args, kwargs)), None
        parts = _recurrent_parts(layer)
        if parts:
            config = _recurrent_config(layer, parts, cut)
            values = _sliced_recurrent(layer, parts, cut)
        elif _removable_heads(layer):
            config = {**layer.get_config(), "num_heads": len(cut.keep_out)}
            values = _sliced_heads(layer, cut.keep_out)
        else:
            config, values = _new_config(layer, cut), _sliced_weights(layer, cut)
        new = layer.__class__.from_config(config)
        outputs = new(*args, **kwargs)  # builds it at the new width
        new.set_weights(values)
        return new, outputs

    def call(operation, args, kwargs):
        if not isinstance(operation, keras.layers.Layer):
            cut = cuts.get(id(operation))
            if cut is not None:  # ops.reshape to a width that held the removed channels
                return keras.ops.reshape(args[0], _new_shape(operation.newshape, cut))
            return operation(*args, **kwargs)  # a Keras op: no per-channel state
        outputs = None
        if id(operation) not in new_layers:
            new_layers[id(operation)], outputs = new_layer(operation, args, kwargs)
        return outputs if outputs is not None else new_layers[id(operation)](*args, **kwargs)

    functional = rebuild_graph(model, call)
    if not isinstance(model, keras.Sequential):
        return functional
    spec = model.inputs[0]
    return keras.Sequential(
        [keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=spec.name)]
        + [new_layers[id(layer)] for layer in model.layers],
        name=model.name,
    )


def prune_units(model, fraction=0.5, criterion="l1", *, layers=None, exclude=None):
    """Removes the weakest units: Dense neurons, Conv filters, recurrent units, attention heads.

    The model's graph, Keras op nodes included, is read as channel
    dependencies: element-wise merges and ops (`Add` of a residual block,
    `x * ops.relu6(x + 3.0) / 6.0` hard-swish, the `Multiply` of an SE gate,
    broadcast from `(N, 1, 1, C)`) make their inputs lose the same channels;
    DepthwiseConv (depth multiplier 1), BatchNormalization, PReLU and
    channel-wise layers (activations, pooling, dropout, padding, scalar
    Rescaling) follow their input; Concatenate on the last axis, Flatten and
    Reshapes whose last axis is a multiple of the channels map them by index.
    An LSTM, GRU or SimpleRNN (alone or in a `Bidirectional`) loses a hidden
    unit in every gate at once: its kernel and recurrent-kernel columns, its
    recurrent-kernel row and its biases; the two halves of a concatenating
    `Bidirectional` each keep as many units (their strongest), a summing one
    loses the same units in both. Layers returning their states keep their units.
    Tied units form a group ranked by the summed L1/L2 norm of the units'
    incoming weights; the group loses `fraction` of them and every reader is
    sliced to match. Channels reaching a model output, a layer or op this
    does not know (LayerNormalization, Softmax, non-last-axis ops, a constant
    with a value per channel), or a nested model are left whole. A custom
    layer whose variables all sit in its sublayers (keras_hub's
    `TransformerEncoder`) is called inline: its `call` runs on the graph's
    symbolic tensors, so its sublayers become layers of the result, named
    `{layer}_{sublayer}` (also in a `fraction` dict), and lose units like any
    other (one whose `call` needs real tensors stays whole, its channels
    left as they are). The result is a new, smaller, plain Keras model with
    the surviving weights copied; fine-tune it with `compile` and `fit`.

    Args:
        model: A built Sequential or Functional model.
        fraction: Fraction in [0, 1) of units to remove from every prunable
            layer, or `{layer name: fraction}` for some layers only (layers
            tied to a named one follow it; tied layers named with different
            fractions are an error).
        criterion: "l1" or "l2" norm of a unit's incoming weights.
        layers: optional names, classes or predicates of the layers that may
            lose units (default all).
        exclude: names, classes or predicates of layers that keep their
            units. Tied layers lose units together or not at all: a group with
            a layer left out by `layers`/`exclude` keeps all its units.

    Returns:
        A new `keras.Model` of the same kind (Sequential or Functional; a
        Functional one where a custom layer was inlined) with fewer units.
        Layers inside nested sub-models keep theirs.

    Raises:
        ValueError: a subclassed or unbuilt model, a fraction outside [0, 1),
            an unknown or unprunable layer name in the dict, tied layers given
            different fractions, a bad `criterion`, or a model with no
            prunable layer.

    Example:
        >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, activation="relu"),
        ...                       keras.layers.Dense(2)])
        >>> prune_units(m, 0.5).layers[0].units
        3
    """
    if not surgery.is_graph_model(model):
        raise ValueError(
            "`prune_units` rebuilds the layer graph, so it needs a Sequential or Functional "
            f"model. Received: model={type(model).__name__}"
        )
    if not model.built:
        raise ValueError(f"The model must be built. Received: model={model.name}")
    if criterion not in _CRITERIA:
        raise ValueError(f"`criterion` must be one of {_CRITERIA}. Received: criterion={criterion}")
    select = surgery.Selection(model, layers, exclude)
    model, origins = surgery.inline_layers(model, lambda layer: _inlinable(layer) and select(layer))
    graph = _ChannelGraph(as_functional(model), criterion)
    groups = _groups(graph)
    _set_fractions(model, groups, fraction)
    for group in groups:
        if not all(select(origins.get(id(p.layer), p.layer)) for p in group.producers):
            group.fraction = 0.0
    return _rebuild(model, _cuts(graph, _removed_classes(graph, groups)))


def _inlinable(layer):
    """A custom layer (not Keras' or tfcompress', not registered) whose variables all
    sit in its sublayers: `prune_units` runs its `call` inline to see inside."""
    package = type(layer).__module__.split(".")[0]
    return (
        package not in ("keras", "tfcompress")
        and not isinstance(layer, keras.Model)
        and layers_registry.lookup(layer) is None
        and not layers_registry.overrides_call(layer)
        and not surgery.own_variables(layer)
    )

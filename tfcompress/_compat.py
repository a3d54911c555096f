"""Every private Keras/TensorFlow access of tfcompress, and nothing else.

Keras 3 has no public API for some things model surgery needs (a layer's
direct sublayers, a Functional model's nodes, the layer tracker). Each access
lives here, behind a small function, so a Keras upgrade that moves something
breaks one module, and `tests/test_compat.py` names the missing symbol.

`REQUIRED` lists every private symbol this module relies on, as
`(description, check)` pairs that `tests/test_compat.py` runs.
"""

import contextlib
import warnings

import keras
import tensorflow as tf

# ---------------------------------------------------------------------------
# Layers and models (model surgery)
# ---------------------------------------------------------------------------


def functional_class():
    """Keras' `Functional` class (not exported publicly by Keras 3)."""
    from keras.src.models.functional import Functional

    return Functional


def convnext_layer_scale():
    """The `LayerScale` class of keras.applications' ConvNeXt (``x * gamma``; not exported)."""
    from keras.src.applications.convnext import LayerScale

    return LayerScale


def is_functional(model):
    """True for a Functional model (also the Functional base of a Sequential)."""
    return isinstance(model, functional_class())


def child_layers(layer):
    """The direct sublayers a layer (or model) tracks, in tracking order."""
    return list(layer._layers)


def own_variables(layer):
    """Variables created by `layer` itself, not by its sublayers."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def load_variables_from_store(variables, store):
    """Assigns `variables` from a `load_own_variables` store in Keras' own layout
    (variable i under key "i")."""
    for i, variable in enumerate(variables):
        variable.assign(store[str(i)])


def flatten_layers(model):
    """Every layer inside `model`, recursively, each once (not `model` itself)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def tracks_layer(owner, layer):
    """Whether `owner`'s tracker holds `layer` among its layers."""
    return owner._tracker.is_in_store("layers", layer)


def replace_tracked_layer(owner, old, new):
    """Makes `owner` track `new` where it tracked `old` (same position)."""
    if tracks_layer(owner, old):
        owner._tracker.replace_tracked_value("layers", old, new)


def graph_nodes(model):
    """The call nodes of a Functional model, inputs first (topological order).

    Each node has `.operation` (a layer or a Keras op such as `ops.add`),
    `.input_tensors`, `.outputs`, `.arguments` and `.is_input`.
    """
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def node_arguments(node):
    """`(args, kwargs)` of a node, with KerasTensors in place."""
    return node.arguments.args, node.arguments.kwargs


def inbound_nodes(layer):
    return list(layer._inbound_nodes)


def outbound_nodes(layer):
    return list(layer._outbound_nodes)


def keras_history(tensor):
    """`(operation, node_index, tensor_index)` that produced a KerasTensor, or None."""
    return getattr(tensor, "_keras_history", None)


# ---------------------------------------------------------------------------
# Call context
# ---------------------------------------------------------------------------


def _global_state():
    from keras.src.backend.common import global_state

    return global_state


def current_call_entry_layer():
    """The outermost layer or model of the Keras call in progress, or None.

    Keras keeps it in its call context ("current_call_ctx"); there is no public
    accessor, so None also means "unknown" (no call, or another Keras layout).
    """
    try:
        global_state = _global_state()
    except ImportError:  # pragma: no cover - other Keras layouts
        return None
    ctx = global_state.get_global_attribute("current_call_ctx")
    return getattr(ctx, "entry_layer", None)


def _check_call_entry_layer():
    seen = []

    class _Probe(keras.layers.Layer):
        def call(self, x):
            seen.append(current_call_entry_layer())
            return x

    probe = _Probe()
    probe(keras.ops.zeros((1, 1)))
    if seen != [probe]:
        raise AssertionError(f"current_call_ctx.entry_layer is not the called layer: {seen}")


# ---------------------------------------------------------------------------
# Export (mixed-precision tracing, the TFLite converter and its schema)
# ---------------------------------------------------------------------------

_PER_CHANNEL_DENSE_FLAG = "_experimental_disable_per_channel_quantization_for_dense_layers"
_PER_CHANNEL_FLAG = "_experimental_disable_per_channel"


def dtype_policy(layer):
    """The dtype policy object `layer` holds (a shared `DTypePolicyMap` as it is)."""
    return layer._dtype_policy


def set_dtype_policy(layer, policy):
    """Makes `layer` hold `policy`, for a temporary swap and its undo.

    The public setter `layer.dtype_policy = ...` writes into a shared
    `DTypePolicyMap` and quantizes a built layer given a quantized policy;
    a swap must do neither.
    """
    layer._dtype_policy = policy


def set_per_tensor_quantization(converter):
    """Makes a `tf.lite.TFLiteConverter` quantize every kernel with one scale (convolutions
    too); only a private converter flag offers it."""
    setattr(converter, _PER_CHANNEL_FLAG, True)


def set_per_channel_dense_quantization(converter, enabled):
    """Whether a `tf.lite.TFLiteConverter` quantizes Dense kernels per output unit.

    Only a private converter flag offers the choice. Where a TensorFlow lacks
    it, the converter keeps its default (per channel) and a warning says so.
    """
    if hasattr(converter, _PER_CHANNEL_DENSE_FLAG):
        setattr(converter, _PER_CHANNEL_DENSE_FLAG, not enabled)
    elif not enabled:
        warnings.warn(
            f"This TensorFlow's TFLiteConverter has no `{_PER_CHANNEL_DENSE_FLAG}`: Dense "
            "kernels are quantized per channel.",
            stacklevel=2,
        )


def calibrate_then_quantize(converter, fix):
    """Full-integer conversion with a correction of the calibrated ranges.

    Runs the converter's calibration only (a private flag), lets
    `fix(model, schema)` edit the calibrated flatbuffer (`ModelT`) in place,
    then quantizes it with the converter's own MLIR quantizer and settings.
    """
    import flatbuffers
    from tensorflow.lite.python import convert as tflite_convert

    converter._experimental_calibrate_only = True
    schema = tflite_schema()
    model = schema.ModelT.InitFromPackedBuf(bytes(converter.convert()), 0)
    fix(model, schema)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(tflite_convert.mlir_quantize(
        bytes(builder.Output()),
        disable_per_channel=getattr(converter, _PER_CHANNEL_FLAG, False),
        input_data_type=converter.inference_input_type or tf.float32,
        output_data_type=converter.inference_output_type or tf.float32,
        disable_per_channel_for_dense_layers=getattr(converter, _PER_CHANNEL_DENSE_FLAG, False),
    ))


def builtin_code(model, op):
    """The builtin operator code of `op` in a TFLite `ModelT` (files of old
    converters keep codes under 127 in the deprecated field)."""
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def tflite_schema():
    """The TFLite flatbuffer schema module (`schema_py_generated`).

    From ai-edge-litert (a declared dependency), else TensorFlow's private copy.
    """
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:  # pragma: no cover - ai-edge-litert is a declared dependency
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


# ---------------------------------------------------------------------------
# Distribution (tf.distribute, Keras' TensorFlow trainer under several workers)
# ---------------------------------------------------------------------------


def mirrored_strategy(devices, cross_device_ops=None, *, collective_key_base):
    """A `tf.distribute.MirroredStrategy` whose collective keys start at `collective_key_base`.

    `MirroredStrategy._collective_key_base` is TensorFlow's own offset of the
    (group, instance) keys, read when a strategy is created; it is set for this
    one creation and restored.
    """
    cls = tf.distribute.MirroredStrategy
    saved = cls._collective_key_base
    cls._collective_key_base = collective_key_base
    try:
        return cls(devices, cross_device_ops=cross_device_ops)
    finally:
        cls._collective_key_base = saved


def _keras_trainer():
    from keras.src.backend.tensorflow import trainer

    return trainer


def fix_keras_multi_worker():
    """Corrects Keras' TensorFlow trainer for `MultiWorkerMirroredStrategy`, where needed.

    Keras 3.15 `fit` fails with two or more workers (tensorflow/tensorflow#72388):
    `TensorFlowTrainer._maybe_symbolic_build` reduces the whole first
    distributed batch in one `strategy.reduce` call (TensorFlow rejects a nested
    value) and `reduce_per_replica` averages the scalar logs over workers with
    `axis=0` ("Invalid reduction dimension 0"). The fix makes the build read one
    local replica's batch (only shapes and dtypes are used) and averages scalars
    with `axis=None`; single-worker strategies take Keras' own paths.

    The gate, checked at every call and for each of the two functions on its
    own: it is replaced only when (1) `keras.src.backend.tensorflow.trainer`
    and the private names the fix uses (`TensorFlowTrainer._maybe_symbolic_build`,
    `reduce_per_replica`, `_collective_all_reduce_multi_worker`) exist, (2) it
    is not the fix already, and (3) a probe of the installed function on
    stand-in objects (no TensorFlow op runs, so the strategy can still be
    created afterwards) still shows the bug: the build hands the distributed
    batch to `strategy.reduce`, or the reduction averages a scalar with
    `axis=0`. A Keras that fixed or reshaped a function is left as it is.

    Returns:
        The names of the functions replaced by this call (empty when none needed it).
    """
    try:
        trainer = _keras_trainer()
        cls = trainer.TensorFlowTrainer
        build, reduce = cls._maybe_symbolic_build, trainer.reduce_per_replica
        is_multi_worker = trainer._collective_all_reduce_multi_worker
    except (ImportError, AttributeError):  # another Keras layout: the fix does not apply
        return []
    fixed = []
    if not getattr(build, "_tfcompress_fix", False) and _build_reduces_batch(build):
        cls._maybe_symbolic_build = _local_batch_build(build)
        fixed.append("TensorFlowTrainer._maybe_symbolic_build")
    if not getattr(reduce, "_tfcompress_fix", False) and _reduces_scalars_on_axis_0(trainer):
        trainer.reduce_per_replica = _scalar_safe_reduce(reduce, is_multi_worker)
        fixed.append("reduce_per_replica")
    return fixed


class _StandInStrategy:
    """Records the `reduce` calls Keras' trainer makes (the probes of the fix)."""

    def __init__(self):
        self.reduce_axes = []

    def reduce(self, reduce_op, value, axis=None):
        self.reduce_axes.append(axis)
        return value

    def scope(self):
        return contextlib.nullcontext()


def _build_reduces_batch(build):
    """Whether Keras' pre-fit build hands a distributed batch to `strategy.reduce`."""
    strategy = _StandInStrategy()

    class _Replicas(tf.distribute.DistributedValues):
        pass

    class _Trainer:
        _distribute_strategy = distribute_strategy = strategy

        def _symbolic_build(self, data_batch=None):
            pass

    try:
        build(_Trainer(), iterator=[(0, 0, iter([(_Replicas(), _Replicas())]))])
    except Exception:  # another trainer protocol, which the fix does not know either
        return False
    return bool(strategy.reduce_axes)


def _reduces_scalars_on_axis_0(trainer):
    """Whether Keras' `reduce_per_replica` averages a scalar over workers with `axis=0`.

    Keras looks `_collective_all_reduce_multi_worker` up in its module at call
    time; for one call it also answers True for the stand-in strategy (and only
    for it, so a real call meanwhile is unaffected).
    """
    strategy = _StandInStrategy()
    is_multi_worker = trainer._collective_all_reduce_multi_worker
    trainer._collective_all_reduce_multi_worker = lambda s: s is strategy or is_multi_worker(s)
    try:
        trainer.reduce_per_replica(0.0, strategy, "mean")
    except Exception:  # another reduction protocol, which the fix does not know either
        return False
    finally:
        trainer._collective_all_reduce_multi_worker = is_multi_worker
    return strategy.reduce_axes == [0]


def _local_values(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)
    return (value,)


def _local_batch_build(original):
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: _local_values(strategy, v)[0], next(batches)
                )
                break
            iterator = None
        return original(self, iterator=iterator, data_batch=data_batch)

    _maybe_symbolic_build._tfcompress_fix = True
    return _maybe_symbolic_build


def _scalar_safe_reduce(original, is_multi_worker):
    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not is_multi_worker(strategy):
            return original(values, strategy, reduction)

        def _reduce(value):
            if _local_values(strategy, value)[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original(value, strategy, reduction)

        return tf.nest.map_structure(_reduce, values)

    reduce_per_replica._tfcompress_fix = True
    return reduce_per_replica


def variable_strategy(variable):
    """The `tf.distribute` strategy a Keras variable was created under, or None."""
    return getattr(getattr(variable, "value", None), "_distribute_strategy", None)


def lora_base_variable(layer, name):
    """The variable behind a LoRA-enabled layer's `name` property (`_kernel`), or None."""
    return getattr(layer, "_" + name, None)


def _require(description, check):
    return description, check


REQUIRED = [
    _require("keras.src.models.functional.Functional", functional_class),
    _require("keras.src.applications.convnext.LayerScale", convnext_layer_scale),
    _require("Layer._layers", lambda: keras.layers.Dense(1)._layers),
    _require("Layer._trainable_variables", lambda: keras.layers.Dense(1)._trainable_variables),
    _require(
        "Layer._non_trainable_variables", lambda: keras.layers.Dense(1)._non_trainable_variables
    ),
    _require("Layer._tracker", lambda: keras.layers.Dense(1)._tracker.is_in_store),
    _require("Layer._flatten_layers", lambda: keras.layers.Dense(1)._flatten_layers),
    _require("Operation._inbound_nodes", lambda: keras.layers.Dense(1)._inbound_nodes),
    _require("Operation._outbound_nodes", lambda: keras.layers.Dense(1)._outbound_nodes),
    _require(
        "keras.src.backend.common.global_state (current_call_ctx.entry_layer)",
        _check_call_entry_layer,
    ),
    _require("Layer._dtype_policy", lambda: keras.layers.Dense(1)._dtype_policy),
    _require(
        f"tf.lite.TFLiteConverter.{_PER_CHANNEL_DENSE_FLAG}",
        lambda: getattr(tf.lite.TFLiteConverter([], None), _PER_CHANNEL_DENSE_FLAG),
    ),
    _require(
        f"tf.lite.TFLiteConverter.{_PER_CHANNEL_FLAG}",
        lambda: getattr(tf.lite.TFLiteConverter([], None), _PER_CHANNEL_FLAG),
    ),
    _require(
        "tf.distribute.MirroredStrategy._collective_key_base",
        lambda: tf.distribute.MirroredStrategy._collective_key_base,
    ),
    _require(
        "keras.src.backend.tensorflow.trainer.TensorFlowTrainer._maybe_symbolic_build",
        lambda: _keras_trainer().TensorFlowTrainer._maybe_symbolic_build,
    ),
    _require(
        "keras.src.backend.tensorflow.trainer.reduce_per_replica",
        lambda: _keras_trainer().reduce_per_replica,
    ),
    _require(
        "keras.src.backend.tensorflow.trainer._collective_all_reduce_multi_worker",
        lambda: _keras_trainer()._collective_all_reduce_multi_worker,
    ),
    _require(
        "TensorFlowTrainer._distribute_strategy",
        lambda: keras.Sequential()._distribute_strategy,
    ),
]

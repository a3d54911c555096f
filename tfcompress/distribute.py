"""Distribution strategies for tfcompress training.

Every tfcompress training path (RBM/DBN contrastive divergence, pruning,
quantization-aware training, clustering, distillation) is plain Keras `fit`,
so it runs unchanged inside a `tf.distribute` strategy scope: build and
compile the model inside `strategy.scope()`, then call `fit` as usual with the
*global* batch size.

Single machine::

    strategy = tfc.distribute.strategy()          # all local GPUs, else default
    with strategy.scope():
        model = build_model()
        model.compile(...)
    model.fit(x, y, batch_size=64 * strategy.num_replicas_in_sync)

Several machines (``MultiWorkerMirroredStrategy``): start the same script once
per worker, each with a ``TF_CONFIG`` environment variable that lists every
worker's ``host:port`` and names this worker's index (worker 0 is the chief)::

    # worker i of n, before TensorFlow runs any op:
    os.environ["TF_CONFIG"] = tfc.distribute.tf_config(
        ["10.0.0.1:12345", "10.0.0.2:12345"], index=i)
    strategy = tfc.distribute.multi_worker_strategy()   # MultiWorkerMirroredStrategy
    with strategy.scope():
        model = build_model()
        model.compile(...)
    model.fit(x, y, batch_size=global_batch, epochs=...)  # each worker feeds its shard
    if tfc.distribute.is_chief():
        model.save("model.keras")                        # only the chief writes

Notes on the recipe: ``multi_worker_strategy`` is
``tf.distribute.MultiWorkerMirroredStrategy`` plus a fix without which Keras
3.15 ``fit`` fails on two or more workers (applied only while the installed
Keras still needs it); the strategy must be created at
program start, before any other TensorFlow op; all workers must run the same steps (same data size,
batch size and epochs), otherwise the collective all-reduce waits forever; with
NumPy input Keras shards the data between workers automatically; variables are
kept identical by all-reducing gradients, so every worker ends with the same
weights. ``tests/test_multiworker.py`` runs this recipe with two local worker
processes and ``examples/multiworker.py`` is a runnable copy of it.
"""

import itertools
import json
import os

import tensorflow as tf

from tfcompress import _compat


def strategy(devices=None):
    """Picks a `tf.distribute` strategy for local training.

    Args:
        devices: `None` to use every local GPU, or a list of device names
            (e.g. `["/gpu:0", "/gpu:1"]` or the two logical CPUs
            `["/cpu:0", "/cpu:1"]`) for a `MirroredStrategy` over exactly those.

    Returns:
        A `tf.distribute.MirroredStrategy` over two or more local GPUs (or over
        `devices` when given), otherwise the default strategy, under which a
        single GPU or the CPU is used as usual. Over CPU devices the strategy
        reduces gradients onto one device. Each strategy made here has its
        own collective keys, so several can live in one process (plain
        `tf.distribute.MirroredStrategy` objects collide there).

    Raises:
        ValueError: if `devices` is not a non-empty list of distinct device
            names known to TensorFlow in this process.

    Example:
        >>> import tfcompress as tfc
        >>> s = tfc.distribute.strategy()
        >>> s.num_replicas_in_sync >= 1
        True
    """
    if devices is None:
        gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
        if len(gpus) >= 2:
            return _mirrored(gpus)
        return tf.distribute.get_strategy()
    if isinstance(devices, str) or not isinstance(devices, (list, tuple)) or not devices:
        raise ValueError(
            "`devices` must be None or a non-empty list of device names. "
            f"Received: devices={devices!r}"
        )
    known = {_canonical(device.name): device.name for device in tf.config.list_logical_devices()}
    resolved = []
    for device in devices:
        try:
            canonical = _canonical(device) if isinstance(device, str) else None
        except ValueError:  # not a device spec at all, e.g. "cpu0"
            canonical = None
        if canonical not in known:
            raise ValueError(
                f"Unknown device {device!r}; this process has {sorted(known.values())}. "
                f"Received: devices={devices!r}"
            )
        resolved.append(known[canonical])
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"`devices` must be distinct. Received: devices={devices!r}")
    cross_device_ops = None
    if all(_canonical(name)[0] == "CPU" for name in resolved):
        # Reducing onto one device is the cheapest all-reduce between logical CPUs.
        cross_device_ops = tf.distribute.ReductionToOneDevice()
    return _mirrored(resolved, cross_device_ops)


_key_bases = itertools.count(1)


def _mirrored(devices, cross_device_ops=None):
    # Every MirroredStrategy numbers its collective group keys from 1, so a second
    # strategy in the same process reuses the first one's (group, instance) keys, and
    # TensorFlow aborts all collectives of the process ("Collective instance 100 expected
    # type 0 and data_type 1 but got type 2", or "Shape mismatch in the collective
    # instance"). Each strategy made here gets a key range of its own.
    return _compat.mirrored_strategy(
        devices, cross_device_ops, collective_key_base=next(_key_bases) * 10_000
    )


def multi_worker_strategy(**kwargs):
    """A `tf.distribute.MultiWorkerMirroredStrategy` under which Keras `fit` works.

    Keras 3.15's TensorFlow trainer fails with two or more workers
    (tensorflow/tensorflow#72388): before `fit` it reduces the whole first
    `(x, y)` batch in one `strategy.reduce` call, which TensorFlow rejects for a
    nested value ("Attempt to convert a value (PerReplica...)"), and after each
    step it averages the scalar logs with `axis=0` ("Invalid reduction
    dimension 0 for input with 0 dimensions"). This function creates the
    strategy and, where the installed Keras still behaves so (checked at each
    call, see `tfcompress._compat.fix_keras_multi_worker`), corrects both places
    in Keras' trainer for this process: the pre-fit build reads one local
    replica's batch (only shapes and dtypes are used) and scalar logs are
    averaged over workers with `axis=None`. Nothing changes for single-worker
    strategies. Call it at program start, before TensorFlow runs any op, with
    `TF_CONFIG` set (see `tf_config`).

    Args:
        **kwargs: passed to `tf.distribute.MultiWorkerMirroredStrategy`
            (e.g. `communication_options`).

    Returns:
        The `tf.distribute.MultiWorkerMirroredStrategy`.
    """
    _compat.fix_keras_multi_worker()
    return tf.distribute.MultiWorkerMirroredStrategy(**kwargs)


def tf_config(workers, index):
    """The `TF_CONFIG` JSON string for worker `index` of a multi-worker cluster.

    Args:
        workers: list of `"host:port"` addresses, one per worker, in the same
            order on every worker; worker 0 is the chief.
        index: this worker's position in `workers`.

    Returns:
        A JSON string to put in `os.environ["TF_CONFIG"]` before creating
        `tf.distribute.MultiWorkerMirroredStrategy`.

    Raises:
        ValueError: if `workers` is empty or holds a malformed address, or
            `index` is not a valid position in it.

    Example:
        >>> import tfcompress as tfc
        >>> import json
        >>> config = json.loads(tfc.distribute.tf_config(["host0:2222", "host1:2222"], 1))
        >>> config["cluster"], config["task"]
        ({'worker': ['host0:2222', 'host1:2222']}, {'type': 'worker', 'index': 1})
    """
    if isinstance(workers, str) or not isinstance(workers, (list, tuple)) or not workers:
        raise ValueError(
            f"`workers` must be a non-empty list of 'host:port'. Received: workers={workers!r}"
        )
    for address in workers:
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"Each worker must be 'host:port'. Received: workers={workers!r}"
            )
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(workers):
        raise ValueError(
            f"`index` must be an int in [0, {len(workers)}). Received: index={index!r}"
        )
    return json.dumps(
        {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}}
    )


def is_chief():
    """Whether this process is the chief of a multi-worker cluster.

    The chief is the task of type `"chief"` when the cluster has one, otherwise
    worker 0; a process without `TF_CONFIG` is its own chief.

    Returns:
        `True` for the chief (or a single process), `False` for other workers.
    """
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task")
    if not task:
        return True
    if "chief" in config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def _canonical(name):
    spec = tf.DeviceSpec.from_string(name)
    return (spec.device_type or "").upper(), spec.device_index or 0

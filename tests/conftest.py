"""Shared test set-up: two logical CPUs, bundled digits, reference subprocesses.

The CPU is split into two logical devices before TensorFlow initialises, so
every MirroredStrategy test runs on a plain 2-core CI machine.
"""

import collections
import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
CPU_DEVICES = ["/cpu:0", "/cpu:1"]

import tfcompress as tfc  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Names and graphs reset; no forced gc.collect(), which cost 0.2 s a test (3 minutes of
    # the suite): Python's own collector still runs.
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def digits():
    """((x_train, y_train), (x_test, y_test)) flat (N, 64) float32 digits."""
    return tfc.datasets.load_digits()


@pytest.fixture(scope="session")
def digits_image():
    """Digits shaped (N, 8, 8, 1) for CNNs."""
    return tfc.datasets.load_digits(shape="image")


@pytest.fixture
def mirrored():
    """A MirroredStrategy over the two logical CPUs."""
    return tfc.distribute.strategy(CPU_DEVICES)


def run_reference(code, timeout=300):
    """Runs `code` in a fresh Python process and returns the JSON it prints last.

    Used for tensorflow-model-optimization references: importing tfmot flips
    the process to legacy Keras, so it must never be imported in the test
    process itself.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"reference subprocess failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def small_mlp(input_dim=64, hidden=(32,), classes=10, seed=0):
    """A small Sequential MLP returning logits."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((input_dim,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(keras.layers.Dense(classes))
    return keras.Sequential(layers)


def compile_classifier(model, lr=1e-3, steps_per_execution=1):
    """Adam, sparse cross-entropy on logits and accuracy: the tests' usual compile.

    `steps_per_execution=15` pays on long float fits (a third less time for 20 epochs of
    the digits), not on the few steps of a QAT fine-tune (a longer trace).
    """
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    return model


def trained_on_digit_rows(model, epochs, lr):
    """`model` fitted on the digits read row by row (8 steps of 8 features).

    Returns `(model, (x, y), (x_test, y_test))`.
    """
    (x, y), test = tfc.datasets.load_digits(shape="sequence")
    compile_classifier(model, lr, steps_per_execution=15)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model, (x, y), test


def feature_models():
    """A teacher and a student whose hidden layers `t_hidden` / `s_hidden` can be matched."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(24, activation="relu", name="t_hidden")(inputs)
    teacher = keras.Model(inputs, keras.layers.Dense(10)(h))
    inputs = keras.Input((64,))
    h = keras.layers.Dense(6, activation="relu", name="s_hidden")(inputs)
    student = keras.Model(inputs, keras.layers.Dense(10)(h))
    return teacher, student


def pytest_addoption(parser):
    parser.addoption(
        "--zoo",
        action="store_true",
        help="also run the full keras.applications zoo matrix (tests marked zoo_full)",
    )


def pytest_collection_modifyitems(config, items):
    kept, deselected = [], []
    for item in items:
        full = item.get_closest_marker("zoo_full") and not config.getoption("--zoo")
        (deselected if full else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    # `-n 2` hands out whole modules (`--dist loadscope` in pytest.ini: a module's fixtures
    # are built once), in this order: the zoo, then the modules with the most slow tests, so
    # that the last ones to run are short and neither worker waits long for the other.
    slow = collections.Counter(
        item.module.__name__ for item in kept if item.get_closest_marker("slow")
    )
    items[:] = sorted(
        kept,
        key=lambda item: (item.get_closest_marker("zoo") is None, -slow[item.module.__name__]),
    )


def cli_exit_code(argv):
    """`tfcompress.cli.main`'s exit code, whether returned or raised (argparse exits)."""
    from tfcompress import cli

    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code

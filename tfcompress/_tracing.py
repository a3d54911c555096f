"""Tracing state shared between export, calibration and the layers they run.

While `export.to_tflite` traces a model, layers must build only the
inference graph: no training-only losses, metric updates or random ops.
"""

import contextlib
import threading

_state = threading.local()


def exporting():
    """True while `to_tflite` traces the model."""
    return getattr(_state, "exporting", False)


@contextlib.contextmanager
def export_trace():
    previous = exporting()
    _state.exporting = True
    try:
        yield
    finally:
        _state.exporting = previous


def recorder():
    """The function that `tfc.quantization.calibrate` gives each activation range's
    input to while it runs the model, or None."""
    return getattr(_state, "recorder", None)


@contextlib.contextmanager
def recording(function):
    previous = recorder()
    _state.recorder = function
    try:
        yield
    finally:
        _state.recorder = previous

"""Tracing state shared between export and layers that train differently.

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

"""tfcompress: Keras-3-native model compression for TensorFlow and TFLite.

Importing the package registers every serializable tfcompress object with
Keras, so saved `.keras` files reload with no `custom_objects` and no scopes.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from tfcompress import (  # noqa: E402
    clustering,
    data,
    datasets,
    dbn,
    distill,
    distribute,
    export,
    factorization,
    layers_registry,
    plots,
    pruning,
    quantization,
    rbm,
    report,
    surgery,
)
from tfcompress.dbn import DBN  # noqa: E402
from tfcompress.distill import Distiller  # noqa: E402
from tfcompress.layers_registry import register_layer  # noqa: E402
from tfcompress.pipeline import CompressionError, compress  # noqa: E402
from tfcompress.rbm import RBM  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DBN",
    "RBM",
    "CompressionError",
    "Distiller",
    "clustering",
    "compress",
    "data",
    "datasets",
    "dbn",
    "distill",
    "distribute",
    "export",
    "factorization",
    "layers_registry",
    "plots",
    "pruning",
    "quantization",
    "rbm",
    "register_layer",
    "report",
    "surgery",
]

"""Restricted Boltzmann machines trained by contrastive divergence in Keras `fit`.

- `layer`: the `RBM` layer (a sigmoid dense layer that adds the CD loss),
- `partition`: free energy, exact and AIS log partition functions, log-likelihood,
- `callbacks`: `FreeEnergyGap`.
"""

from tfcompress.rbm.callbacks import FreeEnergyGap
from tfcompress.rbm.layer import RBM
from tfcompress.rbm.partition import (
    ais_log_partition,
    free_energy,
    log_likelihood,
    log_partition,
)

__all__ = [
    "RBM",
    "FreeEnergyGap",
    "ais_log_partition",
    "free_energy",
    "log_likelihood",
    "log_partition",
]

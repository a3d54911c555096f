"""Magnitude pruning (unstructured, block, m:n) and structured unit pruning.

tfmot-compatible names on Keras 3: change `tfmot.sparsity.keras` to
`tfcompress.pruning`.
"""

from tfcompress.pruning import masks, schedules
from tfcompress.pruning.callbacks import PruningSummaries, UpdatePruningStep
from tfcompress.pruning.prune import (
    PrunedModel,
    get_prunable_weights,
    get_sparsity,
    prune_low_magnitude,
    register_prunable_layer,
    strip_pruning,
)
from tfcompress.pruning.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from tfcompress.pruning.structured import prune_units

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PrunedModel",
    "PruningSchedule",
    "PruningSummaries",
    "UpdatePruningStep",
    "get_prunable_weights",
    "get_sparsity",
    "masks",
    "prune_low_magnitude",
    "prune_units",
    "register_prunable_layer",
    "schedules",
    "strip_pruning",
]

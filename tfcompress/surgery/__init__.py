"""The one model walk under every technique.

- `walk`: what a model is made of: graph or subclassed, its layers at any
  depth, the attribute slots of a subclassed model, layer selection.
- `copy`: fresh layers and models holding the same weights.
- `rebuild`: a new Sequential/Functional model with layers replaced (Keras op
  nodes such as `x + 3.0` and nested models included), or nested models and
  custom layers inlined.
- `swapped`: the bases of models (and custom layers of Functional models)
  whose layer attributes were swapped, saved and reloaded as `.keras`.
"""

from tfcompress.surgery.copy import carry_weights, copy_layer, symbolic_build
from tfcompress.surgery.rebuild import (
    copy_model,
    copy_with_originals,
    inline_graphs,
    inline_layers,
    rebuild_graph,
    replace_layers,
)
from tfcompress.surgery.swapped import SwappedLayer, SwappedModel, call_with_values
from tfcompress.surgery.walk import (
    Selection,
    Slot,
    all_layers,
    as_functional,
    graph_layers,
    is_graph_model,
    layer_paths,
    own_variables,
    raise_unreachable,
    resolve,
    set_slot,
    slots,
    walk_with_ancestors,
)

__all__ = [
    "Selection",
    "Slot",
    "SwappedLayer",
    "SwappedModel",
    "all_layers",
    "as_functional",
    "call_with_values",
    "carry_weights",
    "copy_layer",
    "copy_model",
    "copy_with_originals",
    "graph_layers",
    "inline_graphs",
    "inline_layers",
    "is_graph_model",
    "layer_paths",
    "own_variables",
    "raise_unreachable",
    "rebuild_graph",
    "replace_layers",
    "resolve",
    "set_slot",
    "slots",
    "symbolic_build",
    "walk_with_ancestors",
]

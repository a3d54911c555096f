"""What a model is made of: its kind, its layers at any depth, its slots.

A *graph model* is a Sequential or Functional model: its layers and the Keras
ops between them (`x + 3.0`, `ops.multiply`, slicing) are known, so it can be
rebuilt. Any other model is *subclassed*: its `call` is the user's code, so it
is copied from its config and its layers are swapped in the attributes that
hold them (plain attributes, lists, dicts, and inside custom layers).
"""

import dataclasses
from collections.abc import Iterable

import keras

from tfcompress import _compat


def is_graph_model(model):
    """True for a Sequential or Functional model (a known graph)."""
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and _compat.is_functional(model)
    )


def as_functional(model):
    """A graph model as a Functional model (a Sequential becomes its graph)."""
    if not isinstance(model, keras.Sequential):
        return model
    # A Sequential takes one tensor: a one-item list of inputs would make Keras
    # warn about the input structure at every call.
    return keras.Model(model.inputs[0], model.outputs, name=model.name)


def own_variables(layer):
    """Variables created by `layer` itself, not by its sublayers."""
    return _compat.own_variables(layer)


def all_layers(model, stop=None):
    """Every layer inside `model` at any depth, each once, parents first.

    Args:
        model: a layer or model.
        stop: optional predicate; the sublayers of a layer it accepts are not
            visited (e.g. a technique's own wrappers).
    """
    found, seen, stack = [], set(), _compat.child_layers(model)
    while stack:
        layer = stack.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        found.append(layer)
        if stop is None or not stop(layer):
            stack[:0] = _compat.child_layers(layer)
    return found


def walk_with_ancestors(model):
    """`(layer, ancestors)` for every layer inside `model`, each once, depth first."""
    seen = set()

    def visit(node, chain):
        for child in _compat.child_layers(node):
            if id(child) in seen:
                continue
            seen.add(id(child))
            yield child, chain
            yield from visit(child, chain + (child,))

    yield from visit(model, ())


def graph_layers(model):
    """Layers a graph model calls, looking into nested graph models only."""
    for layer in model.layers:
        if is_graph_model(layer):
            yield from graph_layers(layer)
        else:
            yield layer


def raise_unreachable(model, layers):
    """Raises for layers a technique wanted but could not reach, naming them."""
    missed = [layer.name for layer in layers]
    if missed:
        raise ValueError(
            f"Layers {missed} of model '{model.name}' are nested where they cannot be "
            "replaced (inside a custom layer or a subclassed sub-model of a Functional "
            "model, or not held as an attribute of a subclassed model). Leave them out "
            f"with `exclude=`. Received: model={model}"
        )


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where a subclassed model (or custom layer) holds a layer.

    Attributes:
        path: `"dense"`, `"blocks.0"`, `"heads.out"` (list index or dict key
            after a dot), `"encoder/dense"` (inside the custom layer held in
            `encoder`).
        owner: the layer or model whose attribute it is.
        holder: `owner` itself, or the list/dict in the attribute.
        key: attribute name, list index or dict key.
        layer: the layer held there.
    """

    path: str
    owner: object
    holder: object
    key: object
    layer: object


def slots(owner, prefix=""):
    """The `Slot`s of the layers `owner` holds directly in attributes, lists and dicts."""
    for attr, value in sorted(vars(owner).items()):
        # `_layers`/`_tracker` are Keras' own lists; TensorFlow's trackable bookkeeping
        # keeps containers of aliases under `_self_*` names (a layer held in such an
        # attribute, keras_hub's `_self_attention_layer`, is the user's own).
        if attr in ("_layers", "_tracker") or attr.startswith("__"):
            continue
        if isinstance(value, keras.layers.Layer):
            yield Slot(f"{prefix}{attr}", owner, owner, attr, value)
        elif isinstance(value, (list, tuple, dict)) and not attr.startswith("_self_"):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in list(items):
                if isinstance(item, keras.layers.Layer):
                    yield Slot(f"{prefix}{attr}.{key}", owner, value, key, item)


def layer_paths(model, wants, stop=None):
    """`{attribute path: layer}` of the layers `wants` accepts in a subclassed model.

    Looks into lists, dicts and custom layers (path `block/inner`); a layer
    reachable by two attributes is listed once; the sublayers of a layer
    `stop` accepts are not visited.
    """
    paths, seen = {}, set()

    def visit(owner, prefix):
        for slot in slots(owner, prefix):
            layer = slot.layer
            if id(layer) in seen:
                continue
            seen.add(id(layer))
            if wants(layer):
                paths[slot.path] = layer
            elif _compat.child_layers(layer) and not (stop and stop(layer)):
                visit(layer, slot.path + "/")

    visit(model, "")
    return paths


def resolve(model, path):
    """The `Slot` at an attribute path made by `layer_paths`."""
    owner = model
    *parents, last = path.split("/")
    for part in parents:
        owner = resolve(owner, part).layer
    attr, _, key = last.partition(".")
    if not key:
        return Slot(path, owner, owner, attr, getattr(owner, attr))
    holder = getattr(owner, attr)
    key = int(key) if isinstance(holder, (list, tuple)) else key
    return Slot(path, owner, holder, key, holder[key])


def set_slot(slot, new):
    """Puts `new` where `slot.layer` was (the owner then tracks `new` instead)."""
    _compat.replace_tracked_layer(slot.owner, slot.layer, new)
    if slot.holder is slot.owner:
        object.__setattr__(slot.owner, slot.key, new)
    elif isinstance(slot.holder, dict):
        dict.__setitem__(slot.holder, slot.key, new)
    else:
        list.__setitem__(slot.holder, slot.key, new)


def _matches(layer, spec):
    if isinstance(spec, str):
        return layer.name == spec
    if isinstance(spec, type):
        return isinstance(layer, spec)
    return bool(spec(layer))


def _selectors(name, value):
    if value is None:
        return []
    if isinstance(value, (str, type)) or callable(value) or not isinstance(value, Iterable):
        items = [value]  # one selector, or a bad value reported below
    else:
        items = list(value)
    for item in items:
        if not (isinstance(item, (str, type)) or callable(item)):
            raise ValueError(
                f"`{name}` must hold layer names, layer classes or callables. "
                f"Received: {name}={value}"
            )
    return items


class Selection:
    """The layers a technique's `layers=` and `exclude=` arguments choose.

    Each argument holds layer names, layer classes or predicates. A layer is
    chosen when it, or a layer containing it, matches `layers` (all layers
    when `layers` is None) and neither it nor a container matches `exclude`.

    Raises:
        ValueError: a selector that is not a name, class or callable, or a
            name that is no layer of the model (both naming the argument).
    """

    def __init__(self, model, layers=None, exclude=None):
        self.wanted = _selectors("layers", layers)
        self.unwanted = _selectors("exclude", exclude)
        names = {layer.name for layer in all_layers(model)}
        for arg, items in (("layers", self.wanted), ("exclude", self.unwanted)):
            unknown = [s for s in items if isinstance(s, str) and s not in names]
            if unknown:
                raise ValueError(
                    f"Unknown layer names in `{arg}`: {unknown}. Layers found: "
                    f"{sorted(names)}. Received: {arg}={items}"
                )
        self.ancestors = {id(layer): chain for layer, chain in walk_with_ancestors(model)}

    def __call__(self, layer, ancestors=None):
        if ancestors is None:
            ancestors = self.ancestors.get(id(layer), ())
        lineage = tuple(ancestors) + (layer,)
        if self.wanted and not any(_matches(x, s) for x in lineage for s in self.wanted):
            return False
        return not any(_matches(x, s) for x in lineage for s in self.unwanted)

    @property
    def everything(self):
        return not self.wanted and not self.unwanted

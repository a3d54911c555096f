"""The package's import structure, read statically with `ast` (no package code runs).

Every module of `tfcompress` is checked for:

- import cycles between tfcompress modules, counting imports inside functions
  (a lazy import only hides a cycle);
- use of another tfcompress module's private names, imported
  (`from tfcompress.x import _y`) or reached as an attribute (`x._y`);
- Keras/TensorFlow internals outside `tfcompress/_compat.py`: `keras.src` and
  `tensorflow[...].python` in imports, attribute chains and strings, and
  private attributes that Keras objects have (`layer._layers`,
  `getattr(model, "_build_shapes_dict")`).

Private Keras attribute names are learnt from a few Keras and TensorFlow
objects made here; a module may use such a name for attributes it defines
itself (`self._model = ...` in one of its classes).
"""

import ast
import functools
import pathlib
import re

import keras
import pytest
import tensorflow as tf

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "tfcompress"
COMPAT = f"{PACKAGE}._compat"
INTERNAL = re.compile(r"\b(keras\.src|tensorflow(\.\w+)*\.python)\b")
ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}


def _find_modules():
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _find_modules()


def _is_private(name):
    return name.startswith("_") and not name.endswith("__")


@functools.cache
def _tree(module):
    path = MODULES[module]
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _imports(module, tree):
    """(node, base, name, asname) for every import in `tree` (module `module`), in functions too.

    `import a.b as c` gives `(node, "a.b", None, "c")`; `from a import b as c`
    gives `(node, "a", "b", "c")`, relative imports made absolute.
    """
    is_package = module in MODULES and MODULES[module].name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node, alias.name, None, alias.asname
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                yield node, base, alias.name, alias.asname


def _bindings(module, tree):
    """{local name: dotted module or object it stands for}, from the imports in `tree`."""
    bound = {}
    for _, base, name, asname in _imports(module, tree):
        if name is None:
            bound[asname or base.split(".")[0]] = base if asname else base.split(".")[0]
        elif name != "*":
            bound[asname or name] = f"{base}.{name}"
    return bound


def _dotted(node, bound):
    """`keras.src.ops` for `keras.src.ops` (import aliases resolved), else None."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, bound)
        return None if base is None else f"{base}.{node.attr}"
    return None


@functools.cache
def _graph():
    """{module: {imported tfcompress module: line of the first such import}}."""
    edges = {}
    for module in MODULES:
        for node, base, name, _ in _imports(module, _tree(module)):
            target = f"{base}.{name}" if name and f"{base}.{name}" in MODULES else base
            if target in MODULES and target != module:
                edges.setdefault(module, {}).setdefault(target, node.lineno)
    return edges


@functools.cache
def _cycles():
    """{module: one import cycle through it, as text}, from the strongly connected components."""
    edges, index, low, stack, on_stack, components = _graph(), {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(MODULES):
        if v not in index:
            connect(v)
    found = {}
    for component in components:
        if len(component) < 2:
            continue
        for start in sorted(component):
            found[start] = _describe_cycle(start, component, edges)
    return found


def _describe_cycle(start, component, edges):
    """The shortest import path from `start` back to it, inside its component."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for target in sorted(edges.get(path[-1], {})):
            if target == start:
                steps = [f"{a} (line {edges[a][b]})" for a, b in zip(path, path[1:] + [start])]
                return " -> ".join(steps + [start])
            if target in component and target not in seen:
                seen.add(target)
                paths.append(path + [target])
    return start


def _private_uses(module, tree):
    """Private names of other tfcompress modules that `tree` (module `module`) uses."""
    found = []
    for node, base, name, _ in _imports(module, tree):
        if (
            name is not None
            and _is_private(name)
            and base in MODULES
            and base != module
            and f"{base}.{name}" not in MODULES
        ):
            found.append(f"line {node.lineno}: from {base} import {name}")
    bound = _bindings(module, tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = _dotted(node.value, bound)
            if owner in MODULES and owner != module and f"{owner}.{node.attr}" not in MODULES:
                found.append(f"line {node.lineno}: {owner}.{node.attr}")
    return found


@functools.cache
def _keras_private_names():
    """Private attribute names of common Keras and TensorFlow objects."""
    inputs = keras.Input((3,))
    functional = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    functional.compile("sgd", "mse")
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    objects = [
        dense,
        functional,
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
        keras.layers.LSTMCell(2),
        keras.Variable(1.0),
        keras.optimizers.SGD(),
        keras.callbacks.Callback(),
        keras.DTypePolicy("float32"),
        inputs,
        tf.lite.TFLiteConverter([], None),
        tf.distribute.MirroredStrategy,
    ]
    names = set()
    for obj in objects:
        names.update(n for n in dir(obj) if _is_private(n))
        names.update(n for n in getattr(obj, "__dict__", {}) if _is_private(n))
    return frozenset(names)


def _own_attributes(tree):
    """Attribute names that the classes in `tree` define (`self.x = ...`, class body)."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    own.add(item.name)
                for target in getattr(item, "targets", [getattr(item, "target", None)]):
                    if isinstance(target, ast.Name):
                        own.add(target.id)
        targets = getattr(node, "targets", [getattr(node, "target", None)])
        for target in targets if isinstance(node, (ast.Assign, ast.AnnAssign)) else []:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id in ("self", "cls")
            ):
                own.add(target.attr)
    return own


def _docstrings(tree):
    nodes = [tree] + [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                    ast.ClassDef))
    ]
    return {
        id(n.body[0].value)
        for n in nodes
        if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)
    }


def _builds_private_name(node):
    """`getattr(x, "_" + name)` and the like: a private attribute chosen at run time."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ATTRIBUTE_FUNCTIONS
        and len(node.args) >= 2
    ):
        return False
    name = node.args[1]
    first = name.left if isinstance(name, ast.BinOp) else None
    if isinstance(name, ast.JoinedStr) and name.values:
        first = name.values[0]
    return isinstance(first, ast.Constant) and str(first.value).startswith("_")


def _internal_uses(module, tree):
    """Keras/TensorFlow internals that `tree` (module `module`) touches."""
    found = []
    for node, base, name, _ in _imports(module, tree):
        full = base if name is None else f"{base}.{name}"
        if INTERNAL.match(full):
            found.append(f"line {node.lineno}: import of {full}")
    bound = _bindings(module, tree)
    keras_private = _keras_private_names() - _own_attributes(tree)
    docstrings = _docstrings(tree)
    chains = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node, bound)
            if dotted and INTERNAL.match(dotted) and not INTERNAL.match(dotted.rpartition(".")[0]):
                chains.add((node.lineno, dotted))
            if node.attr in keras_private:
                found.append(f"line {node.lineno}: private Keras attribute .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ATTRIBUTE_FUNCTIONS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in keras_private
        ):
            found.append(
                f"line {node.lineno}: private Keras attribute {node.func.id}(..., "
                f"{node.args[1].value!r})"
            )
        elif _builds_private_name(node):
            found.append(f"line {node.lineno}: private attribute built as a string in "
                         f"{node.func.id}(...)")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and INTERNAL.search(node.value)
        ):
            found.append(f"line {node.lineno}: string {node.value!r}")
    found += [f"line {line}: {dotted}" for line, dotted in sorted(chains)]
    return found


CHECKED = sorted(MODULES)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Replaces conftest's per-test Keras reset: these checks only read source files."""
    yield


@pytest.mark.parametrize("module", CHECKED)
def test_no_import_cycle(module):
    cycle = _cycles().get(module)
    assert cycle is None, f"{module} is in an import cycle: {cycle}"


@pytest.mark.parametrize("module", CHECKED)
def test_no_private_names_of_other_modules(module):
    uses = _private_uses(module, _tree(module))
    assert not uses, f"{module} uses private names of other tfcompress modules:\n" + "\n".join(
        uses
    )


@pytest.mark.parametrize("module", [m for m in CHECKED if m != COMPAT])
def test_keras_internals_only_in_compat(module):
    uses = _internal_uses(module, _tree(module))
    assert not uses, (
        f"{module} touches Keras/TensorFlow internals; move them to {COMPAT}:\n" + "\n".join(uses)
    )


def test_the_checks_see_what_they_look_for():
    """The import graph has known edges, and the scans find planted violations."""
    assert "tfcompress.pruning.prune" in _graph()["tfcompress.pruning.callbacks"]
    assert COMPAT in _graph()["tfcompress.export"]
    planted = ast.parse(
        "import keras\n"
        "import tensorflow as tf\n"
        "from keras.src import ops\n"
        "from tfcompress import export\n"
        "from tfcompress.export import _hidden\n"
        "class Own:\n"
        "    def __init__(self):\n"
        "        self._model = None\n"
        "def f(layer, model):\n"
        "    export._secret(layer._layers, tf.python.x, getattr(model, '_tracker'))\n"
        "    return Own()._model, 'keras.src.models', getattr(layer, f'_{model}')\n"
    )
    internal = "\n".join(_internal_uses("tfcompress.planted", planted))
    for expected in ("import of keras.src.ops", "attribute ._layers", "'_tracker'",
                     "line 10: tensorflow.python", "'keras.src.models'",
                     "line 11: private attribute built as a string in getattr"):
        assert expected in internal, (expected, internal)
    assert "_model" not in internal  # an attribute the module's own class defines
    private = _private_uses("tfcompress.planted", planted)
    assert [u.split(": ")[1] for u in private] == [
        "from tfcompress.export import _hidden",
        "tfcompress.export._secret",
    ]

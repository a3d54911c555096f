"""Figures a person would rather look at than read (PNG files, matplotlib).

- `size_accuracy`: file size against test accuracy, one marker per artifact,
  a legend instead of labels on the points, and the Pareto frontier (the
  artifacts no other one beats on both size and accuracy);
- `sparsity`: the fraction of zero weights of each layer, as bars (`bars`,
  which also draws per-layer quantization sensitivity);
- `filters`: an RBM's (or a first Dense layer's) weights into each hidden
  unit, drawn as an image grid.

Each function draws on a bare `matplotlib.figure.Figure` (the caller's pyplot
backend is left alone) and writes `path` through a temporary file and a rename.
"""

import io
import math

import numpy as np

from tfcompress._tempfiles import write_atomic

_MARKERS = "osD^vP*Xhp<>"


def _figure(size):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("Plots need matplotlib: pip install 'tfcompress[plots]'") from e
    return Figure(figsize=size)


def _save(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    write_atomic(path, buffer.getvalue())
    return path


def pareto_frontier(points):
    """Indices of the (size, accuracy) points no other point beats on both, by size."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    frontier, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            frontier.append(i)
            best = points[i][1]
    return frontier


def size_accuracy(rows, path, size_key="gzip_bytes", title="tfcompress: size vs accuracy"):
    """Writes the size-vs-accuracy chart of report `rows` (dicts with `name`,
    `size_key` and `accuracy`) to `path`; rows without accuracy are left out."""
    rows = [r for r in rows if r.get("accuracy") is not None]
    if not rows:
        raise ValueError("The plot needs accuracies: build the report with `x` and `y`.")
    points = [(r[size_key] / 1024, 100 * r["accuracy"]) for r in rows]
    frontier = pareto_frontier(points)
    fig = _figure((9, 5))
    ax = fig.subplots()
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for i in sorted(range(len(rows)), key=lambda i: points[i][0]):
        on_frontier = i in frontier
        ax.scatter(
            *points[i],
            marker=_MARKERS[i % len(_MARKERS)],
            color=colors[i],
            s=70 if on_frontier else 40,
            edgecolors="black" if on_frontier else "none",
            linewidths=1.2,
            label=("* " if on_frontier else "") + rows[i]["name"],
            zorder=3,
        )
    xs, ys = zip(*(points[i] for i in frontier))
    ax.step(xs, ys, where="post", color="gray", linestyle="--", linewidth=1, zorder=2,
            label="Pareto frontier (*: no artifact smaller and more accurate)")
    ax.set_xscale("log")
    ax.set_xlabel("gzip size of the deployable file (KiB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
              ncol=1 if len(rows) <= 26 else 2)
    return _save(fig, path)


def bars(labels, values, path, xlabel, title, percent=False):
    """Writes horizontal bars of `values`, one per label, to `path`."""
    fig = _figure((8, 0.9 + 0.28 * len(labels)))
    ax = fig.subplots()
    shown = [100 * v for v in values] if percent else list(values)
    drawn = ax.barh(range(len(labels)), shown, color="C0")
    ax.bar_label(drawn, labels=[f"{v:.1f}%" if percent else f"{v:.3g}" for v in shown],
                 fontsize=7, padding=2)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 110 if percent else 1.15 * max(max(shown), 1e-12))
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def sparsity(model, path, title=None):
    """Writes bars of the fraction of zero weights in each kernel of `model` to `path`."""
    import keras

    names, values = [], []
    for weight in model.weights:
        if len(weight.shape) < 2:
            continue  # biases, scales, statistics
        value = np.asarray(keras.ops.convert_to_numpy(weight))
        names.append(weight.path if hasattr(weight, "path") else weight.name)
        values.append(float(np.mean(value == 0)))
    if not names:
        raise ValueError(f"`model` has no kernels to plot. Received: model={model.name!r}")
    return bars(names, values, path, "zero weights (%)",
                title or f"{model.name}: sparsity per layer", percent=True)


def filters(kernel, path, image_shape, max_units=64, title="hidden-unit filters"):
    """Writes the weights into each hidden unit (a column of `kernel`, reshaped to
    `image_shape`) as a grid of images to `path`: what each unit responds to.

    Args:
        kernel: array (visible, hidden), e.g. `rbm.kernel`.
        image_shape: (height, width) with height * width == visible.
        max_units: at most this many units (the first ones) are drawn.
    """
    kernel = np.asarray(kernel)
    if kernel.ndim != 2 or math.prod(image_shape) != kernel.shape[0]:
        raise ValueError(
            f"`image_shape` must hold the {kernel.shape[0]} visible units of `kernel`. "
            f"Received: image_shape={tuple(image_shape)}, kernel.shape={kernel.shape}"
        )
    units = min(kernel.shape[1], max_units)
    cols = math.ceil(math.sqrt(units))
    rows = math.ceil(units / cols)
    fig = _figure((1.1 * cols, 1.1 * rows + 0.4))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i < units:
            image = kernel[:, i].reshape(image_shape)
            bound = np.abs(image).max() or 1.0
            ax.imshow(image, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
    fig.subplots_adjust(wspace=0.08, hspace=0.08, top=1 - 0.4 / (1.1 * rows + 0.4))
    fig.suptitle(title + " (red: positive, blue: negative weight)", fontsize=9)
    return _save(fig, path)

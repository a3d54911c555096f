"""Data as users have it: files on disk and the Python forms Keras takes.

`load(path)` reads labelled data from a file or folder:

- `data.npz`: arrays under the keys `x` and `y` (other keys by argument);
- `x.npy,y.npy`: a pair of `.npy` files, comma-separated;
- `data.csv`: one row per sample, a header row of column names, the label in
  the last column (another by argument); tabular models;
- a folder of class subfolders of images (`keras.utils.image_dataset_from_directory`,
  classes in alphabetical order), resized to `image_size`.

`as_arrays(data)` turns what a Keras `fit` takes (an array, an `(x, y)`
tuple, a `tf.data.Dataset` or a generator of batches) into NumPy arrays.
"""

import csv
import os

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def load(path, *, x_key="x", y_key="y", label_column=None, image_size=None,
         color_mode="rgb", what="data"):
    """Reads labelled data `(x, y)` from `path` (see the module docstring for the forms).

    Args:
        path: a `.npz` file, `"x.npy,y.npy"`, a `.csv` file or a folder of
            class subfolders of images.
        x_key, y_key: the `.npz` keys of the inputs and the labels.
        label_column: the CSV column (name or index) holding the label
            (default: the last one).
        image_size: `(height, width)` images are resized to (folders only;
            required for them).
        color_mode: `"rgb"` or `"grayscale"` (folders only).
        what: how messages name the argument (`"--data"`, `"train"`, ...).

    Returns:
        `(x, y)`: float32 inputs and integer (or float) labels, one per sample.

    Raises:
        ValueError: naming `what` and the path, for a missing file, a missing
            key, unequal sample counts, no samples, or an unknown form.
    """
    path = os.fspath(path)
    if "," in path and not os.path.exists(path):
        x_path, y_path = path.split(",", 1)
        x, y = _npy(x_path, what), _npy(y_path, what)
    elif os.path.isdir(path):
        x, y = _image_folder(path, image_size, color_mode, what)
    elif not os.path.isfile(path):
        raise ValueError(f"`{what}`: no file or folder at {path!r}")
    elif path.endswith(".npz"):
        x, y = _npz(path, x_key, y_key, what)
    elif path.endswith(".csv"):
        x, y = _csv(path, label_column, what)
    else:
        raise ValueError(
            f"`{what}` must be a .npz file, 'x.npy,y.npy', a .csv file or a folder of class "
            f"subfolders of images. Received: {path!r}"
        )
    return _checked(x, y, what, path)


def _checked(x, y, what, path):
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0:
        raise ValueError(f"`{what}` holds no samples. Received: {path!r}")
    if len(x) != len(y):
        raise ValueError(
            f"`{what}` must hold one label per sample. Received: {len(x)} inputs and "
            f"{len(y)} labels in {path!r}"
        )
    if x.dtype.kind not in "biuf":
        raise ValueError(f"`{what}` inputs must be numbers. Received: dtype {x.dtype} in {path!r}")
    if y.dtype.kind == "f" and np.all(y == np.round(y)):
        y = y.astype("int64")
    return x.astype("float32"), y


def _npy(path, what):
    if not os.path.isfile(path):
        raise ValueError(f"`{what}`: no file at {path!r}")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"`{what}`: {path!r} is not a .npy array ({e})") from e


def _npz(path, x_key, y_key, what):
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"`{what}`: {path!r} is not a .npz archive ({e})") from e
    with archive:
        missing = [k for k in (x_key, y_key) if k not in archive.files]
        if missing:
            raise ValueError(
                f"`{what}`: {path!r} has no key {missing[0]!r} (it holds {sorted(archive.files)}); "
                "name the keys of the inputs and labels"
            )
        return archive[x_key], archive[y_key]


def _csv(path, label_column, what):
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if len(rows) < 2:
        raise ValueError(f"`{what}`: {path!r} needs a header row and at least one sample")
    header, body = rows[0], rows[1:]
    if label_column is None:
        label = len(header) - 1
    elif str(label_column) in header:
        label = header.index(str(label_column))
    elif str(label_column).lstrip("-").isdigit() and (
        -len(header) <= int(label_column) < len(header)
    ):
        label = int(label_column) % len(header)
    else:
        raise ValueError(
            f"`{what}`: {path!r} has no column {label_column!r} (columns: {header})"
        )
    try:
        values = np.array(body, dtype="float64")
    except ValueError as e:
        raise ValueError(f"`{what}`: {path!r} holds a value that is not a number ({e})") from e
    if values.ndim != 2 or values.shape[1] != len(header):
        raise ValueError(f"`{what}`: every row of {path!r} must have {len(header)} values")
    return np.delete(values, label, axis=1), values[:, label]


def _image_folder(path, image_size, color_mode, what):
    import keras

    if image_size is None:
        raise ValueError(f"`{what}`: a folder of images needs the image size of the model input")
    classes = sorted(
        d for d in os.listdir(path)
        if os.path.isdir(os.path.join(path, d)) and not d.startswith(".")
    )
    if not classes:
        raise ValueError(
            f"`{what}`: the folder {path!r} must hold one subfolder of images per class"
        )
    dataset = keras.utils.image_dataset_from_directory(
        path, labels="inferred", label_mode="int", class_names=classes,
        color_mode=color_mode, image_size=tuple(image_size), batch_size=None, shuffle=False,
        verbose=False,
    )
    xs, ys = [], []
    for image, label in dataset.as_numpy_iterator():
        xs.append(image)
        ys.append(label)
    if not xs:
        raise ValueError(f"`{what}`: the folder {path!r} holds no images ({IMAGE_SUFFIXES})")
    return np.stack(xs), np.asarray(ys)


def as_arrays(data, what="data", limit=None, steps=None):
    """`(x, y)` NumPy arrays from what `fit` takes; `y` is None for unlabelled data.

    Args:
        data: an array, an `(x, y)` tuple, a `tf.data.Dataset` or a generator
            yielding batches (`x` or `(x, y)`).
        what: how messages name the argument.
        limit: stop after this many samples (None: all; a generator must end).
        steps: stop after this many batches (None: all).

    Raises:
        ValueError: for data that yields nothing, or mixes labelled and
            unlabelled batches.
    """
    if isinstance(data, tuple) and len(data) == 2 and not is_stream(data[0]):
        x, y = np.asarray(data[0]), np.asarray(data[1])
        return (x, y) if limit is None else (x[:limit], y[:limit])
    if not is_stream(data):
        x = np.asarray(data)
        return (x if limit is None else x[:limit]), None
    xs, ys, count = [], [], 0
    batches = data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator") else data
    for i, batch in enumerate(batches):
        if steps is not None and i >= steps:
            break
        labelled = isinstance(batch, tuple) and len(batch) >= 2
        xb = np.asarray(batch[0] if isinstance(batch, tuple) else batch)
        xs.append(xb)
        if labelled:
            ys.append(np.asarray(batch[1]))
        count += len(xb)
        if limit is not None and count >= limit:
            break
    if not xs:
        raise ValueError(f"`{what}` yielded no batches. Received: {what}={data!r}")
    if ys and len(ys) != len(xs):
        raise ValueError(f"`{what}` mixes labelled and unlabelled batches")
    x = np.concatenate(xs)[:limit]
    return x, (np.concatenate(ys)[:limit] if ys else None)


def is_stream(data):
    """Whether `data` is read batch by batch (a `tf.data.Dataset`, a generator or iterator)."""
    if hasattr(data, "element_spec"):
        return True
    if isinstance(data, (str, bytes, list, tuple, dict)) or hasattr(data, "shape"):
        return False
    return hasattr(data, "__next__") or hasattr(data, "__iter__")

"""The `tfcompress` commands: demo, export and report, on the public API only.

`tfcompress_cli` (a top-level module, so that `tfcompress --help` and argument
errors never load TensorFlow) parses the command line and checks the files it
names; `run` executes the parsed command. Errors found while reading the
inputs (a file that is not a .npy array, a model Keras cannot load, calibration
data of the wrong shape) or writing the outputs end like argument errors: exit
code 2 and one line on stderr.
"""

import math
import os
import re
import sys

from tfcompress_cli import USAGE_ERROR, os_error_reason, parse_args, quiet, unwritable

# Keras's message when a config names a class or function that is not registered.
_NOT_FOUND = re.compile(r"Could not locate (class|function) '([^']+)'")


class UsageError(Exception):
    """A bad command-line argument, reported as one line with exit code 2."""


def _load_model(path):
    import keras

    import tfcompress  # noqa: F401  (registers tfcompress objects for loading)

    try:
        return keras.saving.load_model(path)
    except Exception as e:  # whatever breaks in a user's file is theirs to fix: one line
        raise UsageError(f"cannot load MODEL {path!r}: {_load_failure(e)}") from e


def _load_failure(error):
    """Why Keras could not load a model, in one line."""
    chain, seen = error, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        missing = _NOT_FOUND.search(str(chain))
        if missing:
            kind, name = missing.groups()
            return (
                f"Keras cannot find the {kind} {name!r} named in its config: it must be "
                "importable and registered with @keras.saving.register_keras_serializable(); "
                "this command imports only tfcompress, so export such a model from Python "
                "(tfcompress.export.to_tflite)"
            )
        chain = chain.__cause__ or chain.__context__
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def _write_failure(path, flag, error, *, make_dirs):
    """Why writing `path` failed, in one line: the up-front check's words where they apply."""
    problem = unwritable(path, flag, make_dirs=make_dirs)
    return problem or f"cannot write {flag} {path!r}: {os_error_reason(error)}"


def _load_array(path, what):
    import numpy as np

    try:
        return np.load(path)
    except (ValueError, OSError) as e:
        raise UsageError(f"{what}: {path!r} is not a .npy array ({e})") from e


def _load_data(path, flag, spec, **keys):
    """`(x, y)` from any form `tfcompress.data.load` reads; image folders take the
    size and channels of the model input `spec` (a `keras.InputSpec`-like shape)."""
    from tfcompress import data

    shape = tuple(spec.shape[1:]) if spec is not None else ()
    image = len(shape) == 3
    return data.load(
        path,
        what=flag,
        image_size=shape[:2] if image else None,
        color_mode="grayscale" if image and shape[-1] == 1 else "rgb",
        **keys,
    )


def _digits(split):
    from tfcompress import datasets

    train, test = datasets.load_digits()
    return train if split == "train" else test


def _digits_for(model, split):
    """Digits images shaped like `model`'s input (a subclassed model has no `inputs`)."""
    from tfcompress import export

    x, y = _digits(split)
    shape = tuple(export.input_spec(model).shape[1:])
    if None in shape or math.prod(shape) != x.shape[1]:
        raise UsageError(f"digits images (64 values) do not fit the model input shape {shape}")
    return x.reshape((len(x),) + shape), y


def _export(args, log):
    from tfcompress import export

    model = _load_model(args.model)
    calibration = None
    if args.calibration == "digits":
        calibration = _digits_for(model, "train")[0][:200]
    elif args.calibration is not None and args.calibration.endswith(".npy"):
        calibration = _load_array(args.calibration, "--calibration")
    elif args.calibration is not None:
        calibration = _load_data(args.calibration, "--calibration", export.input_spec(model))[0]
    log(f"converting {args.model} (quantization={args.quantization or 'none'}) ...")
    blob = export.to_tflite(
        model,
        quantization=args.quantization,
        representative_data=calibration,
        int8_io=args.int8_io,
    )
    try:
        export.write_atomic(args.output, blob)
    except OSError as e:  # checked up front; the file system changed since, or the disk is full
        raise UsageError(_write_failure(args.output, "-o/--output", e, make_dirs=True)) from e
    log(f"wrote {args.output} ({len(blob):,} bytes)")


def _report(args, log):
    from tfcompress import export, report

    items = {
        os.path.basename(path): path if path.endswith(".tflite") else _load_model(path)
        for path in args.models
    }
    x = y = None
    if args.data == "digits":
        x, y = _digits("test")  # flat: the report reshapes them for image models
    elif args.data is not None and args.labels is not None:
        x, y = _load_array(args.data, "--data"), _load_array(args.labels, "--labels")
    elif args.data is not None:
        models = [item for item in items.values() if not isinstance(item, str)]
        spec = export.input_spec(models[0]) if models else None
        x, y = _load_data(args.data, "--data", spec)
    log(f"measuring {len(items)} artifacts ...")
    result = report.compression_report(items, x, y)
    print(result.to_markdown() if args.markdown else result)
    if args.plot:
        try:
            result.plot(args.plot)
        except OSError as e:
            raise UsageError(_write_failure(args.plot, "--plot", e, make_dirs=False)) from e
        log(f"wrote {args.plot}")


def _demo(args, log):
    from tfcompress import demo

    demo.run(args.out, steps=args.steps, log=log)


def _compress(args, log):
    from tfcompress import export, pipeline

    model = _load_model(args.model)
    spec = export.input_spec(model)
    shape = tuple(spec.shape[1:])
    keys = dict(x_key=args.x_key, y_key=args.y_key, label_column=args.label_column)
    train = _load_data(args.data, "--data", spec, **keys)
    test = _load_data(args.eval, "--eval", spec, **keys) if args.eval else None
    for flag, loaded in (("--data", train), ("--eval", test)):
        if loaded is not None and tuple(loaded[0].shape[1:]) != tuple(
            d if d is not None else s for d, s in zip(shape, loaded[0].shape[1:])
        ):
            raise UsageError(
                f"`{flag}` inputs must have shape (N, {', '.join(map(str, shape))}) to fit "
                f"the model. Received: shape {loaded[0].shape}"
            )
    try:
        pipeline.compress(
            model,
            train,
            test,
            prune=args.prune,
            units=args.units,
            cluster=args.cluster,
            qat_epochs=args.qat_epochs,
            quantization=None if args.quantization == "none" else args.quantization,
            max_drop=args.max_drop,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            loss=args.loss,
            learning_rate=args.learning_rate,
            output=args.output,
            verbose=0 if args.quiet else 1,
            log=log,
        )
    except OSError as e:  # checked up front; the file system changed since, or the disk is full
        raise UsageError(_write_failure(args.output, "-o/--output", e, make_dirs=True)) from e


_COMMANDS = {"compress": _compress, "demo": _demo, "export": _export, "report": _report}


def run(args):
    """Runs a command parsed by `tfcompress_cli.parse_args`; returns the exit code."""
    quiet = getattr(args, "quiet", False)

    def log(message):
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    from tfcompress.pipeline import CompressionError

    try:
        _COMMANDS[args.command](args, log)
    except (UsageError, ValueError) as e:
        print(f"tfcompress {args.command}: error: {e}".splitlines()[0], file=sys.stderr)
        return USAGE_ERROR
    except CompressionError as e:
        print(f"tfcompress {args.command}: {e}".splitlines()[0], file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    """The `tfcompress` command on `argv` (default: `sys.argv[1:]`); returns the exit code.

    The console script enters through `tfcompress_cli.main`, which parses before
    TensorFlow loads; this entry serves `python -m tfcompress` and callers that
    have imported tfcompress already.
    """
    args = parse_args(argv)
    with quiet(args.verbose):
        return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

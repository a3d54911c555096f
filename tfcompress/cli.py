"""The `tfcompress` commands: demo, export and report, on the public API only.

`tfcompress_cli` (a top-level module, so that `tfcompress --help` and argument
errors never load TensorFlow) parses the command line and checks the files it
names; `run` executes the parsed command. Errors found while reading the
inputs (a file that is not a .npy array, calibration data of the wrong shape)
end like argument errors: exit code 2 and one line on stderr.
"""

import math
import os
import sys

from tfcompress_cli import USAGE_ERROR, parse_args


class UsageError(Exception):
    """A bad command-line argument, reported as one line with exit code 2."""


def _load_model(path):
    import keras

    import tfcompress  # noqa: F401  (registers tfcompress objects for loading)

    return keras.saving.load_model(path)


def _load_array(path, what):
    import numpy as np

    try:
        return np.load(path)
    except (ValueError, OSError) as e:
        raise UsageError(f"{what}: {path!r} is not a .npy array ({e})") from e


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
    elif args.calibration is not None:
        calibration = _load_array(args.calibration, "--calibration")
    log(f"converting {args.model} (quantization={args.quantization or 'none'}) ...")
    blob = export.to_tflite(
        model,
        args.output,
        quantization=args.quantization,
        representative_data=calibration,
        int8_io=args.int8_io,
    )
    log(f"wrote {args.output} ({len(blob):,} bytes)")


def _report(args, log):
    from tfcompress import report

    items = {
        os.path.basename(path): path if path.endswith(".tflite") else _load_model(path)
        for path in args.models
    }
    x = y = None
    if args.data == "digits":
        x, y = _digits("test")  # flat: the report reshapes them for image models
    elif args.data is not None:
        x, y = _load_array(args.data, "--data"), _load_array(args.labels, "--labels")
    log(f"measuring {len(items)} artifacts ...")
    result = report.compression_report(items, x, y)
    print(result.to_markdown() if args.markdown else result)
    if args.plot:
        result.plot(args.plot)
        log(f"wrote {args.plot}")


def _demo(args, log):
    from tfcompress import demo

    demo.run(args.out, steps=args.steps, log=log)


_COMMANDS = {"demo": _demo, "export": _export, "report": _report}


def run(args):
    """Runs a command parsed by `tfcompress_cli.parse_args`; returns the exit code."""

    def log(message):
        print(message, file=sys.stderr, flush=True)

    try:
        _COMMANDS[args.command](args, log)
    except (UsageError, ValueError) as e:
        print(f"tfcompress {args.command}: error: {e}".splitlines()[0], file=sys.stderr)
        return USAGE_ERROR
    return 0


def main(argv=None):
    """The `tfcompress` command on `argv` (default: `sys.argv[1:]`); returns the exit code.

    The console script enters through `tfcompress_cli.main`, which parses before
    TensorFlow loads; this entry serves `python -m tfcompress` and callers that
    have imported tfcompress already.
    """
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

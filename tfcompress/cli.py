"""The `tfcompress` command: demo, export and report, on the public API only.

Bad arguments (a missing file, an unknown quantization, calibration data of
the wrong shape) end with exit code 2 and one line on stderr.
"""

import argparse
import math
import os
import sys

USAGE_ERROR = 2


class UsageError(Exception):
    """A bad command-line argument, reported as one line with exit code 2."""


def _load_model(path):
    if not os.path.isfile(path):
        raise UsageError(f"no model file at {path!r}")
    if not path.endswith(".keras"):
        raise UsageError(f"MODEL must be a .keras file. Received: {path!r}")
    import keras

    import tfcompress  # noqa: F401  (registers tfcompress objects for loading)

    return keras.saving.load_model(path)


def _load_array(path, what):
    import numpy as np

    if not os.path.isfile(path):
        raise UsageError(f"{what}: no file at {path!r}")
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
    shape = tuple(export._input_spec(model, None).shape[1:])
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

    items = {}
    for path in args.models:
        if path.endswith(".tflite"):
            if not os.path.isfile(path):
                raise UsageError(f"no TFLite file at {path!r}")
            items[os.path.basename(path)] = path
        else:
            items[os.path.basename(path)] = _load_model(path)
    x = y = None
    if args.data == "digits":
        x, y = _digits("test")  # flat: the report reshapes them for image models
    elif args.data is not None:
        if args.labels is None:
            raise UsageError("--data X.npy needs --labels Y.npy")
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tfcompress", description="Compress Keras 3 models and export them to TFLite."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the end-to-end compression demo on digits")
    p.add_argument("--out", default="saved_models", help="artifact folder (default: saved_models)")
    p.add_argument("--steps", nargs="+", default=None, help="only these demo steps")
    p.set_defaults(func=_demo)

    p = sub.add_parser("export", help="convert a .keras model to a .tflite file")
    p.add_argument("model", help="a .keras model file")
    p.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    p.add_argument("--quantization", choices=["dynamic", "float16", "int8"], default=None)
    p.add_argument("--calibration", help="a .npy array of inputs for int8, or 'digits'")
    p.add_argument("--int8-io", action="store_true", help="int8 input and output (with int8)")
    p.set_defaults(func=_export)

    p = sub.add_parser("report", help="compare .keras models and .tflite files")
    p.add_argument("models", nargs="+", help=".keras and .tflite files")
    p.add_argument("--data", help="'digits' (bundled test split) or a .npy array of inputs")
    p.add_argument("--labels", help="a .npy array of integer labels (with --data X.npy)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--plot", help="write a size-vs-accuracy PNG here")
    p.set_defaults(func=_report)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    try:
        args.func(args, log)
    except (UsageError, ValueError) as e:
        print(f"tfcompress {args.command}: error: {e}".splitlines()[0], file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The `tfcompress` console script: parses its arguments before TensorFlow loads.

This module imports the standard library only, so `tfcompress --help` and a bad
argument (an unknown option, a missing file, a file of the wrong kind) answer
at once, with exit code 2 and one line on stderr. Only a command whose
arguments passed imports `tfcompress` (TensorFlow, and the registration of
every serializable class) and runs in `tfcompress.cli`.
"""

import argparse
import os

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser():
    """The parser of the `tfcompress` command and its subcommands."""
    parser = _Parser(
        prog="tfcompress", description="Compress Keras 3 models and export them to TFLite."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the end-to-end compression demo on digits")
    p.add_argument("--out", default="saved_models", help="artifact folder (default: saved_models)")
    p.add_argument("--steps", nargs="+", default=None, help="only these demo steps")

    p = sub.add_parser("export", help="convert a .keras model to a .tflite file")
    p.add_argument("model", help="a .keras model file")
    p.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    p.add_argument("--quantization", choices=["dynamic", "float16", "int8"], default=None)
    p.add_argument("--calibration", help="a .npy array of inputs for int8, or 'digits'")
    p.add_argument("--int8-io", action="store_true", help="int8 input and output (with int8)")

    p = sub.add_parser("report", help="compare .keras models and .tflite files")
    p.add_argument("models", nargs="+", help=".keras and .tflite files")
    p.add_argument("--data", help="'digits' (bundled test split) or a .npy array of inputs")
    p.add_argument("--labels", help="a .npy array of integer labels (with --data X.npy)")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--plot", help="write a size-vs-accuracy PNG here")
    return parser


def _keras_file(path):
    if not os.path.isfile(path):
        return f"no model file at {path!r}"
    if not path.endswith(".keras"):
        return f"MODEL must be a .keras file. Received: {path!r}"
    return None


def _array_file(path, what):
    return None if os.path.isfile(path) else f"{what}: no file at {path!r}"


def _file_problems(args):
    """What is wrong with the files named in `args`, checked without reading them."""
    if args.command == "export":
        yield _keras_file(args.model)
        if not args.output.endswith(".tflite"):
            yield f"-o/--output must end in '.tflite'. Received: {args.output!r}"
        if args.calibration not in (None, "digits"):
            yield _array_file(args.calibration, "--calibration")
    elif args.command == "report":
        for path in args.models:
            if not path.endswith(".tflite"):
                yield _keras_file(path)
            elif not os.path.isfile(path):
                yield f"no TFLite file at {path!r}"
        if args.data not in (None, "digits"):
            if args.labels is None:
                yield "--data X.npy needs --labels Y.npy"
            else:
                yield _array_file(args.data, "--data")
                yield _array_file(args.labels, "--labels")


def parse_args(argv=None):
    """Parses `argv` (default: `sys.argv[1:]`) and checks the files it names.

    Exits with code 2 and one line on stderr on a bad argument, and with code
    0 after `--help`, all before TensorFlow is imported.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = next((p for p in _file_problems(args) if p is not None), None)
    if problem is not None:
        parser.exit(USAGE_ERROR, f"tfcompress {args.command}: error: {problem}\n")
    return args


def main(argv=None):
    """The console script: parses `argv`, then runs the command; returns the exit code."""
    args = parse_args(argv)
    from tfcompress.cli import run  # imports TensorFlow: only for arguments that passed

    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

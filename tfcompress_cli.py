"""The `tfcompress` console script: parses its arguments before TensorFlow loads.

This module imports the standard library only, so `tfcompress --help` and a bad
argument (an unknown option, a missing file, a file of the wrong kind, a model
file that is no .keras archive, an output that cannot be written) answer at
once, with exit code 2 and one line on stderr. Only a command whose arguments
passed imports `tfcompress` (TensorFlow, and the registration of every
serializable class) and runs in `tfcompress.cli`.
"""

import argparse
import importlib.util
import os
import zipfile

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
        return _cannot_load(path, "it is a directory" if os.path.isdir(path) else "no such file")
    if not path.endswith(".keras"):
        return f"MODEL must be a .keras file. Received: {path!r}"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return _cannot_load(path, "not a .keras archive (not a zip file)")
    except OSError as e:
        return _cannot_load(path, os_error_reason(e))
    if "config.json" not in names:
        return _cannot_load(path, "not a .keras archive (the zip file holds no config.json)")
    return None


def _tflite_file(path):
    if not os.path.isfile(path):
        return _cannot_load(path, "it is a directory" if os.path.isdir(path) else "no such file")
    try:
        with open(path, "rb") as f:
            header = f.read(8)
    except OSError as e:
        return _cannot_load(path, os_error_reason(e))
    # A TFLite flatbuffer carries its file identifier after the 4-byte root offset.
    if header[4:8] != b"TFL3":
        return _cannot_load(path, "not a TFLite flatbuffer (no 'TFL3' identifier)")
    return None


def _cannot_load(path, reason):
    return f"cannot load MODEL {path!r}: {reason}"


def os_error_reason(error):
    """An OSError's reason as the tail of a sentence: 'permission denied'."""
    reason = error.strerror or str(error)
    return reason[:1].lower() + reason[1:]


def unwritable(path, flag, *, make_dirs):
    """Why a file cannot be written at `path`, or None.

    Checked before any model loads, so a bad output path costs no conversion;
    the write itself reports what this check cannot foresee.

    Args:
        path: the file to write.
        flag: the option that named it, for the message.
        make_dirs: whether the writer creates missing parent directories.
    """
    if os.path.isdir(path):
        return f"cannot write {flag} {path!r}: it is a directory"
    parent = os.path.dirname(path) or os.curdir
    if not make_dirs and not os.path.exists(parent):
        return f"cannot write {flag} {path!r}: no directory {parent!r}"
    existing = parent
    while not os.path.exists(existing) and existing != os.curdir:
        existing = os.path.dirname(existing) or os.curdir
    if not os.path.exists(existing):
        return None  # the working directory is gone: left to the writer to report
    if not os.path.isdir(existing):
        return f"cannot write {flag} {path!r}: {existing!r} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write {flag} {path!r}: permission denied"
    return None


def _array_file(path, what):
    return None if os.path.isfile(path) else f"{what}: no file at {path!r}"


def _file_problems(args):
    """What is wrong with the files named in `args`, checked without TensorFlow."""
    if args.command == "export":
        yield _keras_file(args.model)
        if not args.output.endswith(".tflite"):
            yield f"-o/--output must end in '.tflite'. Received: {args.output!r}"
        yield unwritable(args.output, "-o/--output", make_dirs=True)
        if args.calibration not in (None, "digits"):
            yield _array_file(args.calibration, "--calibration")
    elif args.command == "report":
        for path in args.models:
            yield _tflite_file(path) if path.endswith(".tflite") else _keras_file(path)
        if args.plot is not None:
            yield _plot_problem(args)
        if args.data not in (None, "digits"):
            if args.labels is None:
                yield "--data X.npy needs --labels Y.npy"
            else:
                yield _array_file(args.data, "--data")
                yield _array_file(args.labels, "--labels")


def _plot_problem(args):
    # The table is printed before the plot is drawn: these would fail after it.
    if args.data is None:
        return f"--plot {args.plot!r} needs --data (the plot shows accuracy)"
    if importlib.util.find_spec("matplotlib") is None:
        return f"--plot {args.plot!r} needs matplotlib: pip install 'tfcompress[plots]'"
    return unwritable(args.plot, "--plot", make_dirs=False)


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

"""The `tfcompress` console script: parses its arguments before TensorFlow loads.

This module imports the standard library only, so `tfcompress --help` and a bad
argument (an unknown option, a missing file, a file of the wrong kind, a model
file that is no .keras archive, an output that cannot be written) answer at
once, with exit code 2 and one line on stderr. Only a command whose arguments
passed imports `tfcompress` (TensorFlow, and the registration of every
serializable class) and runs in `tfcompress.cli`.
"""

import argparse
import contextlib
import importlib.util
import os
import sys
import tempfile
import warnings
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

    common = argparse.ArgumentParser(add_help=False)
    loud = common.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true", help="print results and errors only")
    loud.add_argument(
        "--verbose", action="store_true",
        help="also TensorFlow's, the converter's and LiteRT's own messages and warnings",
    )

    p = sub.add_parser(
        "compress", parents=[common],
        help="compress your .keras model with your data into a checked .tflite file",
        description="Fine-tunes a copy of MODEL through the steps asked for (in this order: "
        "--units, --prune, --cluster, --qat-epochs), exports it with --quantization, checks the "
        "file against the Keras model and writes OUT.tflite with OUT.report.md/.json/.png.",
    )
    p.add_argument("model", help="a compiled .keras model (its loss and optimizer fine-tune it)")
    p.add_argument(
        "--data", required=True, metavar="TRAIN",
        help="training data: a .npz (keys x, y), 'x.npy,y.npy', a .csv (label in the last "
        "column) or a folder of class subfolders of images",
    )
    p.add_argument("--eval", metavar="TEST", help="test data, in the same forms")
    p.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    p.add_argument("--prune", type=float, metavar="SPARSITY", help="magnitude pruning, e.g. 0.8")
    p.add_argument("--units", type=float, metavar="FRACTION", help="remove this share of units")
    p.add_argument("--cluster", type=int, metavar="K", help="K shared values per kernel")
    p.add_argument("--qat-epochs", type=int, default=0, help="quantization-aware training epochs")
    p.add_argument(
        "--quantization", choices=["int8", "int4", "int16x8", "dynamic", "float16", "none"],
        default="int8",
        help="how the file is quantized (default: int8, full integer)",
    )
    p.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="fail (exit 1, no file) if the file loses more test accuracy than this")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per step")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, help="default: the model's optimizer's")
    p.add_argument("--loss", help="fine-tuning loss when the model was saved uncompiled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--x-key", default="x", help=".npz key of the inputs (default: x)")
    p.add_argument("--y-key", default="y", help=".npz key of the labels (default: y)")
    p.add_argument("--label-column", help="CSV column of the label (default: the last)")

    p = sub.add_parser(
        "demo", parents=[common], help="run the end-to-end compression demo on digits"
    )
    p.add_argument("--out", default="saved_models", help="artifact folder (default: saved_models)")
    p.add_argument("--steps", nargs="+", default=None, help="only these demo steps")

    p = sub.add_parser(
        "export", parents=[common], help="convert a .keras model to a .tflite file"
    )
    p.add_argument("model", help="a .keras model file")
    p.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    p.add_argument(
        "--quantization", choices=["dynamic", "float16", "int8", "int4", "int16x8"], default=None
    )
    p.add_argument(
        "--calibration",
        help="inputs for int8: a .npy array, any --data form of 'compress', or 'digits'",
    )
    p.add_argument("--int8-io", action="store_true", help="int8 input and output (with int8)")

    p = sub.add_parser(
        "report", parents=[common], help="compare .keras models and .tflite files"
    )
    p.add_argument("models", nargs="+", help=".keras and .tflite files")
    p.add_argument(
        "--data",
        help="'digits' (bundled test split), a .npy array of inputs (with --labels), a .npz "
        "(keys x, y), 'x.npy,y.npy', a .csv or a folder of class subfolders of images",
    )
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
            yield _data_path(args.calibration, "--calibration", npy=True)
    elif args.command == "compress":
        yield _keras_file(args.model)
        if not args.output.endswith(".tflite"):
            yield f"-o/--output must end in '.tflite'. Received: {args.output!r}"
        yield unwritable(args.output, "-o/--output", make_dirs=True)
        for flag, path in (("--data", args.data), ("--eval", args.eval)):
            if path is not None:
                yield _data_path(path, flag)
        for flag, value in (("--prune", args.prune), ("--units", args.units)):
            if value is not None and not 0 < value < 1:
                yield f"{flag} must be in (0, 1). Received: {value}"
        counts = (
            ("--cluster", args.cluster, 2),
            ("--qat-epochs", args.qat_epochs, 0),
            ("--epochs", args.epochs, 1),
            ("--batch-size", args.batch_size, 1),
        )
        for flag, value, low in counts:
            if value is not None and value < low:
                yield f"{flag} must be >= {low}. Received: {value}"
        if args.max_drop is not None and args.eval is None:
            yield "--max-drop needs --eval (the drop is measured on the test data)"
    elif args.command == "report":
        for path in args.models:
            yield _tflite_file(path) if path.endswith(".tflite") else _keras_file(path)
        if args.plot is not None:
            yield _plot_problem(args)
        if args.data not in (None, "digits"):
            if _single_npy(args.data) and args.labels is None:
                yield "--data X.npy needs --labels Y.npy"
            elif _single_npy(args.data):
                yield _array_file(args.data, "--data")
                yield _array_file(args.labels, "--labels")
            else:
                yield _data_path(args.data, "--data")


def _single_npy(path):
    return path.endswith(".npy") and "," not in path


def _data_path(path, flag, npy=False):
    """Why `path` is not data `tfcompress.data.load` reads (or, with `npy`, one .npy array)."""
    if npy and _single_npy(path):
        return _array_file(path, flag)
    if "," in path and not os.path.exists(path):
        for part in path.split(",", 1):
            if not os.path.isfile(part):
                return f"{flag}: no file at {part!r}"
        return None
    if os.path.isdir(path):
        return None
    if not os.path.isfile(path):
        return f"{flag}: no file or folder at {path!r}"
    if not path.endswith((".npz", ".csv")):
        return (f"{flag} must be a .npz file, 'x.npy,y.npy', a .csv file or a folder of class "
                f"subfolders of images. Received: {path!r}")
    return None


def _plot_problem(args):
    # The table is printed before the plot is drawn: these would fail after it.
    if args.data is None:
        return f"--plot {args.plot!r} needs --data (the plot shows accuracy)"
    if importlib.util.find_spec("matplotlib") is None:
        return f"--plot {args.plot!r} needs matplotlib: pip install 'tfcompress[plots]'"
    return unwritable(args.plot, "--plot", make_dirs=False)


@contextlib.contextmanager
def quiet(verbose):
    """Hides TensorFlow's, the converter's and LiteRT's chatter unless `verbose`.

    Their C++ code writes to file descriptor 2 directly, so descriptor 2 goes to
    a scratch file for the command, while Python's `sys.stderr` (our lines, a
    traceback) keeps the terminal. Python warnings of other packages are
    dropped; tfcompress's own (what a user may have done wrong) are kept.
    """
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved_fd = os.dup(2)
    saved_stderr = sys.stderr
    try:
        on_fd_2 = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # captured (pytest, a notebook): keep it
        on_fd_2 = False
    terminal = os.fdopen(saved_fd, "w", buffering=1, closefd=False) if on_fd_2 else sys.stderr
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(?!tfcompress)")
        os.dup2(sink.fileno(), 2)
        sys.stderr = terminal
        try:
            yield
        finally:
            terminal.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sys.stderr = saved_stderr


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
    if not args.verbose:
        # Before TensorFlow loads: its C++ log level is read once, at import.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet(args.verbose):
        from tfcompress.cli import run  # imports TensorFlow: only for arguments that passed

        return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

import dataclasses
import os
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
from conftest import cli_exit_code

import tfcompress as tfc
import tfcompress_cli
from tfcompress import cli

# Runs the console script's own module in a fresh interpreter and reports, on the
# last stdout line, the exit code and whether TensorFlow or Keras were imported.
FRONT = """
import sys
import tfcompress_cli
try:
    code = tfcompress_cli.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("exit", code, "tensorflow" in sys.modules, "keras" in sys.modules)
"""


def _front(*argv):
    proc = subprocess.run([sys.executable, "-c", FRONT, *argv], capture_output=True, text=True,
                          timeout=120)
    *printed, last = proc.stdout.splitlines()
    _, code, tensorflow, keras_ = last.split()
    return int(code), printed, proc.stderr.splitlines(), (tensorflow, keras_)


@pytest.fixture(scope="module")
def saved_mlp(tmp_path_factory, digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=5, verbose=0)
    path = tmp_path_factory.mktemp("cli") / "mlp.keras"
    model.save(path)
    return path


@pytest.mark.slow
def test_export_int8_with_calibration_file(saved_mlp, tmp_path, digits, capsys):
    (x, _), (xt, yt) = digits
    np.save(tmp_path / "x.npy", x[:100])
    out = tmp_path / "m.tflite"
    rc = cli.main(["export", str(saved_mlp), "-o", str(out), "--quantization", "int8",
                   "--calibration", str(tmp_path / "x.npy"), "--int8-io"])
    assert rc == 0
    lite = tfc.export.LiteModel(out)
    assert lite.is_fully_int8() and lite.input_details["dtype"] == np.int8
    model = keras.saving.load_model(saved_mlp)
    agree = np.mean(np.argmax(lite.predict(xt), -1) == np.argmax(model.predict(xt, verbose=0), -1))
    assert agree >= 0.95
    assert "wrote" in capsys.readouterr().err


@pytest.mark.slow
def test_report_on_digits(saved_mlp, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert cli.main(["export", str(saved_mlp), "-o", str(out), "--quantization", "dynamic"]) == 0
    capsys.readouterr()
    rc = cli.main(["report", str(saved_mlp), str(out), "--data", "digits", "--markdown",
                   "--plot", str(tmp_path / "p.png")])
    printed = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(printed) == 4 and "m.tflite" in printed[3]
    assert (tmp_path / "p.png").stat().st_size > 0


def test_bad_arguments_exit_2_with_one_line(saved_mlp, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((10, 63), "float32"))
    cases = [
        ["export", str(tmp_path / "missing.keras"), "-o", str(tmp_path / "m.tflite")],
        ["export", str(saved_mlp), "-o", str(tmp_path / "m.tflite"), "--quantization", "int8",
         "--calibration", str(tmp_path / "bad.npy")],
        ["export", str(saved_mlp), "-o", str(tmp_path / "m.tflite"), "--quantization", "int8"],
        ["export", str(saved_mlp), "-o", str(tmp_path / "m.txt")],
        ["report", str(tmp_path / "missing.tflite")],
        ["report", str(saved_mlp), "--data", str(tmp_path / "bad.npy")],
        ["export", str(saved_mlp), "-o", str(tmp_path / "m.tflite"), "--quantization", "int3"],
    ]
    for argv in cases:
        capsys.readouterr()
        assert cli_exit_code(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if "error:" in line]
        assert len(errors) == 1 and err[-1] == errors[0], (argv, err)
    assert not (tmp_path / "m.tflite").exists()


@pytest.mark.slow
def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "tfcompress", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "demo" in proc.stdout and "export" in proc.stdout


@pytest.mark.parametrize("argv", [["--help"], ["export", "--help"], ["report", "-h"]])
def test_help_answers_without_tensorflow(argv, record_property):
    start = time.perf_counter()
    code, printed, _, imported = _front(*argv)
    record_property("seconds", round(time.perf_counter() - start, 3))  # ~0.1 s; TF takes ~7 s
    assert code == 0 and any("usage: tfcompress" in line for line in printed)
    assert imported == ("False", "False")


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: command"),
        (["shrink", "m.keras"], "invalid choice: 'shrink'"),
        (["export", "m.keras"], "the following arguments are required: -o/--output"),
        (["export", "missing.keras", "-o", "m.tflite"],
         "cannot load MODEL 'missing.keras': no such file"),
        (["export", __file__, "-o", "m.tflite"], "MODEL must be a .keras file"),
        (["export", "missing.keras", "-o", "m.tflite", "--quantization", "int3"],
         "invalid choice: 'int3'"),
        (["report", "missing.tflite"], "cannot load MODEL 'missing.tflite': no such file"),
        (["report", "--data", "x.npy", "--", "missing.tflite"], "cannot load MODEL"),
        (["demo", "--steps"], "argument --steps: expected at least one argument"),
    ],
)
def test_argument_errors_answer_without_tensorflow(argv, message):
    code, _, err, imported = _front(*argv)
    assert code == 2 and len(err) == 1 and "error:" in err[0] and message in err[0], err
    assert imported == ("False", "False")


def test_installed_console_script_imports_no_tensorflow_for_help():
    script = os.path.join(os.path.dirname(sys.executable), "tfcompress")
    if not os.path.isfile(script):
        pytest.skip("the tfcompress console script is not installed in this environment")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"))
    assert proc.returncode == 0 and "export" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines() if line.startswith("import time:")}
    # The entry point itself is loaded through importlib, which -X importtime does not log;
    # every `import` statement it runs is logged.
    assert imported and not imported & {"tensorflow", "keras", "tfcompress"}, sorted(imported)


@keras.saving.register_keras_serializable("tfc_test_cli")
class Head(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(10)

    def call(self, x):
        return self.dense(x)


def test_digits_options_work_for_subclassed_models(tmp_path, capsys):
    # a subclassed model (LowRankModel, ClusteredModel too) has no `inputs`
    model = Head()
    model(np.zeros((1, 64), "float32"))
    model.save(tmp_path / "head.keras")
    out = tmp_path / "head.tflite"
    assert cli.main(["export", str(tmp_path / "head.keras"), "-o", str(out),
                     "--quantization", "int8", "--calibration", "digits"]) == 0
    assert tfc.export.LiteModel(out).is_fully_int8()
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "head.keras"), "--data", "digits",
                     "--markdown"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split("|")
    assert row[1].strip() == "head.keras" and 0.0 <= float(row[8]) <= 1.0


@dataclasses.dataclass
class FileCase:
    """A command line whose input or output file is bad, and the error it must end with."""

    argv: list
    message: str
    early: bool = True  # caught before TensorFlow loads (False: only Keras can tell)


def _read_only_dir(tmp_path, saved_mlp):
    (tmp_path / "ro").mkdir(mode=0o555)
    if os.access(tmp_path / "ro", os.W_OK):  # root: 'output-under-a-file' fails for it too
        pytest.skip("directory permissions do not bind this user (root)")
    out = str(tmp_path / "ro" / "m.tflite")
    return FileCase(["export", str(saved_mlp), "-o", out],
                    f"cannot write -o/--output {out!r}: permission denied")


def _output_under_a_file(tmp_path, saved_mlp):
    (tmp_path / "file").write_text("")
    out = str(tmp_path / "file" / "sub" / "m.tflite")
    return FileCase(["export", str(saved_mlp), "-o", out],
                    f"cannot write -o/--output {out!r}: {str(tmp_path / 'file')!r} is not a "
                    "directory")


def _output_is_a_directory(tmp_path, saved_mlp):
    (tmp_path / "m.tflite").mkdir()
    out = str(tmp_path / "m.tflite")
    return FileCase(["export", str(saved_mlp), "-o", out],
                    f"cannot write -o/--output {out!r}: it is a directory")


def _plot_into_missing_directory(tmp_path, saved_mlp):
    plot = str(tmp_path / "missing" / "p.png")
    return FileCase(["report", str(saved_mlp), "--data", "digits", "--plot", plot],
                    f"cannot write --plot {plot!r}: no directory {str(tmp_path / 'missing')!r}")


def _empty_zip(tmp_path, saved_mlp):
    zipfile.ZipFile(tmp_path / "x.keras", "w").close()
    model = str(tmp_path / "x.keras")
    return FileCase(["export", model, "-o", str(tmp_path / "m.tflite")],
                    f"cannot load MODEL {model!r}: not a .keras archive (the zip file holds no "
                    "config.json)")


def _random_bytes(tmp_path, saved_mlp):
    (tmp_path / "x.keras").write_bytes(np.random.default_rng(0).bytes(512))
    model = str(tmp_path / "x.keras")
    return FileCase(["export", model, "-o", str(tmp_path / "m.tflite")],
                    f"cannot load MODEL {model!r}: not a .keras archive")


def _random_bytes_tflite(tmp_path, saved_mlp):
    (tmp_path / "x.tflite").write_bytes(np.random.default_rng(0).bytes(512))
    model = str(tmp_path / "x.tflite")
    return FileCase(["report", model], f"cannot load MODEL {model!r}: not a TFLite flatbuffer")


def _unregistered_class(tmp_path, saved_mlp):
    class Twice(keras.layers.Layer):  # not registered: this process cannot load it back
        def call(self, x):
            return 2 * x

    keras.Sequential([keras.Input((4,)), Twice()]).save(tmp_path / "custom.keras")
    model = str(tmp_path / "custom.keras")
    return FileCase(["export", model, "-o", str(tmp_path / "m.tflite")],
                    f"cannot load MODEL {model!r}: Keras cannot find the class 'Twice' named in "
                    "its config: it must be importable and registered with "
                    "@keras.saving.register_keras_serializable()", early=False)


def _missing_file(tmp_path, saved_mlp):
    model = str(tmp_path / "missing.keras")
    return FileCase(["export", model, "-o", str(tmp_path / "m.tflite")],
                    f"cannot load MODEL {model!r}: no such file")


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("build", [
    pytest.param(_read_only_dir, id="output-in-read-only-dir"),
    pytest.param(_output_under_a_file, id="output-under-a-file"),
    pytest.param(_output_is_a_directory, id="output-is-a-directory"),
    pytest.param(_plot_into_missing_directory, id="plot-into-missing-directory"),
    pytest.param(_empty_zip, id="empty-zip"),
    pytest.param(_random_bytes, id="random-bytes"),
    pytest.param(_random_bytes_tflite, id="random-bytes-tflite"),
    pytest.param(_unregistered_class, id="unregistered-class"),
    pytest.param(_missing_file, id="missing-file"),
])
def test_file_errors_exit_2_with_one_line(build, saved_mlp, tmp_path, capsys):
    case = build(tmp_path, saved_mlp)
    before = _files(tmp_path)
    capsys.readouterr()
    assert cli_exit_code(case.argv) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"tfcompress {case.argv[0]}: error: "), err
    assert case.message in err[0] and "Traceback" not in captured.err, err
    assert captured.out == ""  # nothing measured or printed before the error
    assert _files(tmp_path) == before  # no output, no temporary file
    if case.early:
        code, _, err, imported = _front(*case.argv)
        assert code == 2 and len(err) == 1 and case.message in err[0], err
        assert imported == ("False", "False")


@pytest.mark.parametrize("command", ["export", "report"])
def test_write_failures_after_the_check_exit_2_with_one_line(command, saved_mlp, tmp_path,
                                                             capsys):
    # What the up-front check cannot foresee (the file system changing under the
    # command) is reported by the write itself, without leaving a partial file.
    (tmp_path / "file").write_text("")
    out = str(tmp_path / "file" / ("m.tflite" if command == "export" else "p.png"))
    argv = (["export", str(saved_mlp), "-o", out] if command == "export"
            else ["report", str(saved_mlp), "--data", "digits", "--plot", out])
    args = tfcompress_cli.build_parser().parse_args(argv)  # skips the up-front check
    capsys.readouterr()
    assert cli.run(args) == 2
    err = capsys.readouterr().err.splitlines()
    flag = "-o/--output" if command == "export" else "--plot"
    assert err[-1] == (f"tfcompress {command}: error: cannot write {flag} {out!r}: "
                       f"{str(tmp_path / 'file')!r} is not a directory")
    assert sum("error:" in line for line in err) == 1 and "Traceback" not in "\n".join(err)
    assert _files(tmp_path) == ["file"]

import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import tfcompress as tfc
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


def _exit_code(argv):
    """`cli.main`'s exit code, whether returned or raised (argument errors exit in argparse)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


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
        ["export", str(saved_mlp), "-o", str(tmp_path / "m.tflite"), "--quantization", "int4"],
    ]
    for argv in cases:
        capsys.readouterr()
        assert _exit_code(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if "error:" in line]
        assert len(errors) == 1 and err[-1] == errors[0], (argv, err)
    assert not (tmp_path / "m.tflite").exists()


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
        (["compress", "m.keras"], "invalid choice: 'compress'"),
        (["export", "m.keras"], "the following arguments are required: -o/--output"),
        (["export", "missing.keras", "-o", "m.tflite"], "no model file at 'missing.keras'"),
        (["export", __file__, "-o", "m.tflite"], "MODEL must be a .keras file"),
        (["export", "missing.keras", "-o", "m.tflite", "--quantization", "int4"],
         "invalid choice: 'int4'"),
        (["report", "missing.tflite"], "no TFLite file at 'missing.tflite'"),
        (["report", "--data", "x.npy", "--", "missing.tflite"], "no TFLite file at"),
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

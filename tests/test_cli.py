import subprocess
import sys

import keras
import numpy as np
import pytest

import tfcompress as tfc
from tfcompress import cli


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
    ]
    for argv in cases:
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if "error:" in line]
        assert len(errors) == 1 and err[-1] == errors[0], (argv, err)
    assert not (tmp_path / "m.tflite").exists()


def test_unknown_quantization_is_a_usage_error(saved_mlp, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(saved_mlp), "-o", str(tmp_path / "m.tflite"),
                  "--quantization", "int4"])
    assert exit_info.value.code == 2


def test_console_script_help():
    proc = subprocess.run([sys.executable, "-m", "tfcompress", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "demo" in proc.stdout and "export" in proc.stdout


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

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

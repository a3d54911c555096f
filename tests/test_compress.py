"""`tfc.compress` and `tfcompress compress`: a user's own model and data to a checked file."""

import csv
import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import cli_exit_code

import tfcompress as tfc
from tfcompress import cli


@pytest.fixture(scope="module")
def mlp(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=15, verbose=0)
    return model


@pytest.fixture(scope="module")
def files(mlp, digits, tmp_path_factory):
    (x, y), (xt, yt) = digits
    root = tmp_path_factory.mktemp("compress")
    mlp.save(root / "mlp.keras")
    np.savez(root / "train.npz", x=x, y=y)
    np.savez(root / "test.npz", inputs=xt, labels=yt)
    np.savez(root / "train_keys.npz", inputs=x, labels=y)
    np.save(root / "xt.npy", xt)
    np.save(root / "yt.npy", yt)
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label"] + [f"pixel{i}" for i in range(64)])
        writer.writerows([[int(label)] + list(map(float, row)) for row, label in zip(x, y)])
    return root


@pytest.mark.slow
def test_clustered_model_fine_tunes_onto_the_int4_grid(mlp, digits):
    (x, y), (xt, yt) = digits
    result = tfc.compress(mlp, (x, y), (xt, yt), cluster=16, qat_epochs=1, epochs=1,
                          quantization="int4", verbose=0)
    assert [name for name, _ in result.steps] == ["cluster", "qat", "export"]
    lite = tfc.export.LiteModel(result.tflite)
    assert sorted(set(lite.weight_bits().values())) == [4, 32]
    assert result.agreement >= 0.99


@pytest.mark.slow
def test_python_api_prunes_quantizes_checks_and_keeps_the_baseline(mlp, digits, tmp_path):
    (x, y), (xt, yt) = digits
    before = [w.copy() for w in mlp.get_weights()]
    lines = []
    result = tfc.compress(
        mlp, (x, y), (xt, yt), prune=0.75, qat_epochs=1, epochs=2, log=lines.append,
        output=tmp_path / "m.tflite", verbose=0,
    )
    for a, b in zip(before, mlp.get_weights()):
        np.testing.assert_array_equal(a, b)  # the float baseline is untouched
    assert [name for name, _ in result.steps] == ["prune", "qat", "export"]
    assert lines[0].startswith("[1/3] pruning 0 -> 75%") and lines[2].startswith("[2/3]")
    lite = tfc.export.LiteModel(tmp_path / "m.tflite")
    assert lite.content == result.tflite and lite.is_fully_int8()
    kernels = [w for w in result.model.get_weights() if w.ndim == 2]
    assert all(abs(np.mean(k == 0) - 0.75) < 0.02 for k in kernels)
    keras_pred = result.model.predict(xt, verbose=0).argmax(-1)
    assert result.agreement == pytest.approx(np.mean(lite.predict(xt).argmax(-1) == keras_pred))
    assert result.agreement >= 0.98
    assert result.file_accuracy == pytest.approx(lite.evaluate(xt, yt))
    assert result.baseline_accuracy - result.file_accuracy < 0.03
    summary = json.loads((tmp_path / "m.report.json").read_text())
    assert summary["file_accuracy"] == pytest.approx(result.file_accuracy)
    assert (tmp_path / "m.report.md").read_text().count("|") > 10
    assert (tmp_path / "m.report.png").stat().st_size > 0
    assert (tmp_path / "m.sparsity.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_train_as_dataset_or_generator_gives_the_same_file(mlp, digits):
    (x, y), _ = digits
    x, y = x[:256], y[:256]
    kwargs = dict(units=0.5, epochs=1, quantization=None, verbose=0)
    arrays = tfc.compress(mlp, (x, y), **kwargs)
    dataset = tfc.compress(mlp, tf.data.Dataset.from_tensor_slices((x, y)).batch(64), **kwargs)
    generator = tfc.compress(mlp, ((x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)),
                             **kwargs)
    assert arrays.tflite == dataset.tflite == generator.tflite


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prune=1.0), "Received: prune=1.0"),
        (dict(units="0.5"), "Received: units='0.5'"),
        (dict(cluster=1), "Received: cluster=1"),
        (dict(qat_epochs=-1), "Received: qat_epochs=-1"),
        (dict(epochs=0), "Received: epochs=0"),
        (dict(batch_size=0), "Received: batch_size=0"),
        (dict(quantization="int3"), "Received: quantization='int3'"),
        (dict(quantization="float16", qat_epochs=1), "Received: quantization='float16'"),
        (dict(max_drop=-1.0), "Received: max_drop=-1.0"),
        (dict(max_drop=1.0, eval=None), "Received: eval=None"),
        (dict(learning_rate=0), "Received: learning_rate=0"),
        (dict(train=np.zeros((4, 64), "float32")), "`train` must hold labels"),
        (dict(train=(np.zeros((4, 63), "float32"), np.zeros(4))), r"x.shape=\(4, 63\)"),
        (dict(eval=(np.zeros((4, 8)), np.zeros(4))), r"eval x.shape=\(4, 8\)"),
        (dict(model="m.keras"), "Received: model='m.keras'"),
    ],
)
def test_bad_arguments_are_refused_before_training(mlp, digits, kwargs, match):
    (x, y), (xt, yt) = digits
    args = dict(model=mlp, train=(x[:64], y[:64]), eval=(xt[:64], yt[:64]))
    args.update(kwargs)
    before = [w.copy() for w in mlp.get_weights()]
    with pytest.raises(ValueError, match=match):
        tfc.compress(args.pop("model"), args.pop("train"), args.pop("eval"), verbose=0, **args)
    for a, b in zip(before, mlp.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_uncompiled_model_needs_a_loss(digits):
    (x, y), _ = digits
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="Received: loss=None"):
        tfc.compress(model, (x, y), prune=0.5, verbose=0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    result = tfc.compress(
        model, (x[:64], y[:64]), prune=0.5, epochs=1, verbose=0, quantization=None, loss=loss
    )
    assert len(result.tflite) > 0


@pytest.mark.slow
def test_cli_npz_with_keys_and_max_drop(files, capfd):
    out = files / "npz" / "m.tflite"
    argv = ["compress", str(files / "mlp.keras"), "--data", str(files / "train.npz"),
            "--eval", str(files / "test.npz"), "--prune", "0.5", "--epochs", "1",
            "-o", str(out)]
    # The test file's keys are not x/y: named by flag, or refused in one line.
    assert cli_exit_code(argv) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"tfcompress compress: error: `--eval`: {str(files / 'test.npz')!r} has no key "
                   "'x' (it holds ['inputs', 'labels']); name the keys of the inputs and labels"]
    assert not out.exists()
    argv[3] = str(files / "train_keys.npz")
    keys = ["--x-key", "inputs", "--y-key", "labels"]
    assert cli_exit_code(argv + keys + ["--max-drop", "30"]) == 0
    captured = capfd.readouterr()
    assert "[1/2] pruning 0 -> 50%" in captured.err and "accuracy" in captured.err
    assert "oneDNN" not in captured.err and "absl" not in captured.err  # TensorFlow's chatter
    report = json.loads((files / "npz" / "m.report.json").read_text())
    assert tfc.export.LiteModel(out).is_fully_int8() and report["agreement"] >= 0.97


@pytest.mark.slow
def test_cli_max_drop_missed_exits_1_and_writes_nothing(files, capfd):
    out = files / "drop" / "m.tflite"
    argv = ["compress", str(files / "mlp.keras"), "--data", str(files / "train.npz"),
            "--eval", f"{files / 'xt.npy'},{files / 'yt.npy'}", "--prune", "0.97",
            "--epochs", "1", "--max-drop", "0.5", "-o", str(out), "--quiet"]
    assert cli_exit_code(argv) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than max_drop=0.5; nothing was written" in err[0]
    assert not (files / "drop").exists()


@pytest.mark.slow
def test_cli_csv_with_label_column(files, capfd):
    out = files / "csv" / "m.tflite"
    argv = ["compress", str(files / "mlp.keras"), "--data", str(files / "train.csv"),
            "--label-column", "label", "--eval", f"{files / 'xt.npy'},{files / 'yt.npy'}",
            "--cluster", "8", "--epochs", "1", "--quantization", "dynamic", "-o", str(out)]
    assert cli_exit_code(argv) == 0
    report = json.loads((files / "csv" / "m.report.json").read_text())
    assert report["file_accuracy"] > 0.85 and report["agreement"] >= 0.98


@pytest.mark.slow
def test_cli_image_folder(tmp_path, digits, capfd):
    (x, y), (xt, yt) = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x.reshape(-1, 8, 8, 1) * 255, y, epochs=5, verbose=0)
    model.save(tmp_path / "cnn.keras")
    for split, (images, labels) in (("train", (x[:60], y[:60])), ("test", (xt[:40], yt[:40]))):
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = tmp_path / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            png = tf.io.encode_png(np.round(image.reshape(8, 8, 1) * 255).astype("uint8"))
            (folder / f"{i}.png").write_bytes(png.numpy())
    out = tmp_path / "cnn.tflite"
    argv = ["compress", str(tmp_path / "cnn.keras"), "--data", str(tmp_path / "train"),
            "--eval", str(tmp_path / "test"), "--units", "0.5", "--epochs", "1", "-o", str(out)]
    assert cli_exit_code(argv) == 0
    # Every digit class occurs in both splits, so folder order is the label order.
    classes = sorted(p.name for p in (tmp_path / "train").iterdir())
    assert classes == [f"class_{i}" for i in range(10)]
    x_folder, y_folder = tfc.data.load(tmp_path / "test", image_size=(8, 8), color_mode="grayscale")
    np.testing.assert_array_equal(y_folder, np.sort(yt[:40]))
    report = json.loads((tmp_path / "cnn.report.json").read_text())
    assert report["agreement"] >= 0.95 and tfc.export.LiteModel(out).is_fully_int8()
    assert x_folder.shape == (40, 8, 8, 1) and x_folder.max() > 1  # 0..255, as Keras reads images


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--data": "missing.npz"}, "--data: no file or folder at 'missing.npz'"),
        ({"--data": "x.npy,missing.npy"}, "--data: no file at 'missing.npy'"),
        ({"--data": "notes.txt"}, "--data must be a .npz file"),
        ({"model": "notes.txt"}, "MODEL must be a .keras file"),
        ({"model": "fake.keras"}, "not a .keras archive (not a zip file)"),
        ({"-o": "m.bin"}, "-o/--output must end in '.tflite'"),
        ({"-o": "notes.txt/m.tflite"}, "'notes.txt' is not a directory"),
        ({"--prune": "1.5"}, "--prune must be in (0, 1). Received: 1.5"),
        ({"--cluster": "1"}, "--cluster must be >= 2. Received: 1"),
        ({"--max-drop": "1", "--eval": None}, "--max-drop needs --eval"),
        ({"--data": "short.npz"}, "`--data` must hold one label per sample"),
        ({"--data": "wide.npz"}, "`--data` inputs must have shape (N, 64)"),
        ({"--data": "text.csv"}, "holds a value that is not a number"),
    ],
)
def test_cli_bad_inputs_exit_2_with_one_line_and_no_file(files, tmp_path, monkeypatch, capfd,
                                                          change, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "fake.keras").write_bytes(b"random bytes")
    np.save(tmp_path / "x.npy", np.zeros((4, 64), "float32"))
    np.savez(tmp_path / "short.npz", x=np.zeros((4, 64)), y=np.zeros(3))
    np.savez(tmp_path / "wide.npz", x=np.zeros((4, 65)), y=np.zeros(4))
    (tmp_path / "text.csv").write_text("a,label\nhello,1\n")
    args = {"model": str(files / "mlp.keras"), "--data": str(files / "train.npz"),
            "--eval": f"{files / 'xt.npy'},{files / 'yt.npy'}", "-o": "out/m.tflite"}
    args.update(change)
    argv = ["compress", args.pop("model")]
    for flag, value in args.items():
        if value is not None:
            argv += [flag, value]
    capfd.readouterr()
    assert cli_exit_code(argv + ["--epochs", "1"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_help_answers_without_tensorflow():
    code = "import sys, tfcompress_cli\ntry:\n tfcompress_cli.main(['compress', '--help'])\n" \
           "except SystemExit:\n pass\nprint('tensorflow' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "False"
    assert "--max-drop" in proc.stdout and "--qat-epochs" in proc.stdout


def test_as_arrays_forms():
    x = np.arange(12, dtype="float32").reshape(6, 2)
    y = np.arange(6)
    for data in ((x, y), tf.data.Dataset.from_tensor_slices((x, y)).batch(4),
                 ((x[i:i + 2], y[i:i + 2]) for i in range(0, 6, 2))):
        got_x, got_y = tfc.data.as_arrays(data)
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
    got_x, got_y = tfc.data.as_arrays(tf.data.Dataset.from_tensor_slices(x).batch(4), limit=5)
    assert got_y is None and got_x.shape == (5, 2)
    assert not any(map(tfc.data.is_stream, ("x.npy", b"ab", [1, 2], x, {"x": x})))
    with pytest.raises(ValueError, match="`calibration` yielded no batches"):
        tfc.data.as_arrays(iter(()), "calibration")


@pytest.mark.slow
def test_the_same_data_forms_everywhere_data_is_taken(mlp, files, digits, tmp_path, capsys):
    (x, y), (xt, yt) = digits
    # to_tflite's representative data and calibrate(): dataset and generator as the array.
    blobs = [
        tfc.export.to_tflite(mlp, quantization="int8", representative_data=data)
        for data in (
            x[:200],
            tf.data.Dataset.from_tensor_slices((x[:200], y[:200])).batch(50),
            (x[i:i + 50] for i in range(0, 200, 50)),
        )
    ]
    assert blobs[0] == blobs[1] == blobs[2]
    calibrated = [
        tfc.quantization.calibrate(mlp, data, method="minmax")
        for data in (x[:96], tf.data.Dataset.from_tensor_slices(x[:96]).batch(32))
    ]
    np.testing.assert_array_equal(calibrated[0].predict(xt[:20], verbose=0),
                                  calibrated[1].predict(xt[:20], verbose=0))
    # PCA.adapt on a generator, limited by steps.
    pca = tfc.factorization.PCA(8)
    pca.adapt((x[i:i + 100] for i in range(0, 1000, 100)), steps=3)
    reference = tfc.factorization.PCA(8)
    reference.adapt(x[:300])
    np.testing.assert_allclose(pca(xt[:5]), reference(xt[:5]), atol=1e-5)
    # The CLI's export --calibration and report --data read the same files as compress.
    out = tmp_path / "m.tflite"
    argv = ["export", str(files / "mlp.keras"), "-o", str(out), "--quantization", "int8",
            "--calibration", str(files / "train.csv")]
    assert cli.main(argv) == 0 and tfc.export.LiteModel(out).is_fully_int8()
    capsys.readouterr()
    assert cli.main(["report", str(out), str(files / "mlp.keras"), "--data",
                     f"{files / 'xt.npy'},{files / 'yt.npy'}"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    accuracies = [float(row.split()[-2]) for row in rows]
    assert len(accuracies) == 2 and min(accuracies) > 0.85

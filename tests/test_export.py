import os
import signal
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfcompress as tfc
from tfcompress.demo.foundation_step import digits_mlp, train


@pytest.fixture(scope="module")
def mlp(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    return train(digits_mlp(), x, y, epochs=15)


@pytest.fixture(scope="module")
def mlp_files(mlp, digits):
    (x, _), _ = digits
    return {
        q: tfc.export.to_tflite(
            mlp, quantization=q, representative_data=x[:200] if q == "int8" else None
        )
        for q in (None, "dynamic", "float16", "int8")
    }


def keras_accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="tanh")
        self.out = keras.layers.Dense(10)

    def call(self, x):
        return self.out(self.hidden(x) * 2.0)


def functional():
    inputs = keras.Input((64,))
    a = keras.layers.Dense(16, activation="relu")(inputs)
    b = keras.layers.Dense(16, activation="sigmoid")(inputs)
    outputs = keras.layers.Dense(10)(keras.layers.Concatenate()([a, b]))
    return keras.Model(inputs, outputs)


def sequential():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(10)])


def built_subclassed():
    model = Subclassed()
    model(np.zeros((1, 64), "float32"))
    return model


@pytest.mark.parametrize("make", [sequential, functional, built_subclassed])
def test_float_file_matches_keras(make, digits):
    _, (xt, _) = digits
    model = make()
    lite = tfc.export.LiteModel(tfc.export.to_tflite(model))
    np.testing.assert_allclose(lite.predict(xt), model.predict(xt, verbose=0), atol=1e-4)
    assert not lite.is_fully_int8()


@pytest.mark.slow
def test_int8_file_is_fully_int8_small_and_accurate(mlp, mlp_files, digits):
    _, (xt, yt) = digits
    lite = tfc.export.LiteModel(mlp_files["int8"])
    assert lite.is_fully_int8()
    assert {"FULLY_CONNECTED"} <= lite.ops() <= {"FULLY_CONNECTED", "QUANTIZE", "DEQUANTIZE"}
    assert len(mlp_files["int8"]) <= 0.30 * len(mlp_files[None])
    assert abs(lite.evaluate(xt, yt) - keras_accuracy(mlp, xt, yt)) <= 0.010


@pytest.mark.parametrize("quantization", ["dynamic", "float16"])
def test_dynamic_and_float16_are_smaller_and_accurate(quantization, mlp, mlp_files, digits):
    _, (xt, yt) = digits
    lite = tfc.export.LiteModel(mlp_files[quantization])
    assert len(mlp_files[quantization]) < len(mlp_files[None])
    assert abs(lite.evaluate(xt, yt) - keras_accuracy(mlp, xt, yt)) <= 0.005
    assert not lite.is_fully_int8()


@pytest.mark.slow
def test_int8_io_predict_quantizes_as_numpy_reference(mlp, digits):
    (x, _), (xt, _) = digits
    blob = tfc.export.to_tflite(mlp, quantization="int8", representative_data=x[:200], int8_io=True)
    lite = tfc.export.LiteModel(blob)
    assert lite.input_details["dtype"] == np.int8 and lite.output_details["dtype"] == np.int8
    assert lite.is_fully_int8() and lite.ops() == {"FULLY_CONNECTED"}

    interpreter = tf.lite.Interpreter(model_content=blob)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], [len(xt), 64])
    interpreter.allocate_tensors()
    s_in, z_in = inp["quantization"]
    q = np.clip(np.round(xt / s_in + z_in), -128, 127).astype(np.int8)
    interpreter.set_tensor(inp["index"], q)
    interpreter.invoke()
    s_out, z_out = out["quantization"]
    expected = (interpreter.get_tensor(out["index"]).astype(np.float32) - z_out) * s_out
    np.testing.assert_allclose(lite.predict(xt, batch_size=len(xt)), expected, atol=1e-6)
    agree = np.mean(np.argmax(expected, -1) == np.argmax(mlp.predict(xt, verbose=0), -1))
    assert agree >= 0.97


def test_predict_is_independent_of_batch_size(mlp_files, digits):
    _, (xt, _) = digits
    lite = tfc.export.LiteModel(mlp_files[None])
    np.testing.assert_allclose(lite.predict(xt, batch_size=1), lite.predict(xt, batch_size=100),
                               atol=1e-6)
    assert lite.latency(runs=5, warmup=1) > 0


def test_weights_read_from_the_flatbuffer(mlp, mlp_files):
    float_weights = tfc.export.LiteModel(mlp_files[None]).weights()
    assert sum(v.size for v, _ in float_weights.values()) == mlp.count_params()
    kernels = sorted((v for v, _ in float_weights.values() if v.size > 256), key=len)
    keras_kernels = sorted((k.numpy().ravel() for k in mlp.weights if k.numpy().size > 256),
                           key=len)
    for ours, theirs in zip(kernels, keras_kernels):
        np.testing.assert_allclose(np.sort(ours), np.sort(theirs))
    int8_weights = tfc.export.LiteModel(mlp_files["int8"]).weights()
    assert {v.dtype for v, _ in int8_weights.values()} == {np.dtype("int8"), np.dtype("int32")}


def test_atomic_write_leaves_nothing_on_failure(mlp, tmp_path, monkeypatch):
    path = tmp_path / "m.tflite"
    scratch = tmp_path.parent / f"{tmp_path.name}-tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the SavedModel goes

    real_factory = tf.lite.TFLiteConverter.from_saved_model

    def broken_factory(*args, **kwargs):
        converter = real_factory(*args, **kwargs)

        def convert():
            raise RuntimeError("simulated converter failure")

        converter.convert = convert
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", broken_factory)
    with pytest.raises(RuntimeError, match="simulated"):
        tfc.export.to_tflite(mlp, path)
    assert os.listdir(tmp_path) == []

    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="simulated"):
        tfc.export.to_tflite(mlp, path)
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.tflite"]
    assert not [n for n in os.listdir(scratch) if n.startswith("tfc-")]


_KILLED_EXPORT = """
import os, signal, sys
import keras, tensorflow as tf, tfcompress as tfc
where = sys.argv[1]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if where == "convert":  # the SavedModel is written, the converter has not run
    tf.lite.TFLiteConverter.from_saved_model = die
else:  # the temporary .tflite is written, not yet renamed
    os.replace = die
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
tfc.export.to_tflite(model, sys.argv[2])
"""


@pytest.mark.slow
def test_files_of_a_killed_export_are_swept_by_the_next(mlp, tmp_path, monkeypatch):
    scratch, out = tmp_path / "tmp", tmp_path / "out"
    # Each killed export gets a scratch and an output folder the other does not sweep
    # (an export sweeps dead owners' files where it writes): no race between them.
    folders = {"convert": (scratch, tmp_path / "out_c"), "rename": (tmp_path / "tmp_r", out)}
    for folder in (scratch, out, tmp_path / "out_c", tmp_path / "tmp_r"):
        folder.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _KILLED_EXPORT, where, str(target / "m.tflite")],
            env=dict(os.environ, TMPDIR=str(temp), TF_CPP_MIN_LOG_LEVEL="3"),
        )
        for where, (temp, target) in folders.items()
    ]
    assert [p.wait(timeout=120) for p in procs] == [-signal.SIGKILL] * 2
    assert any(n.startswith("tfc-export-") for n in os.listdir(scratch))
    assert any(n.startswith(".tmp-") and n.endswith(".tflite") for n in os.listdir(out))

    # A live process's temporary file is left alone.
    fd, live = tfc._tempfiles.mkstemp(str(out), ".tmp-", ".tflite")
    os.close(fd)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    tfc.export.to_tflite(mlp, out / "m.tflite")
    assert not [n for n in os.listdir(scratch) if n.startswith("tfc-")]
    assert sorted(os.listdir(out)) == sorted(["m.tflite", os.path.basename(live)])


def test_atomic_write_cleans_its_temporary_file(tmp_path, monkeypatch):
    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        tfc.export.write_atomic(tmp_path / "m.tflite", b"data")
    assert os.listdir(tmp_path) == []


def test_written_file_equals_returned_bytes(mlp, tmp_path):
    path = tmp_path / "sub" / "m.tflite"
    blob = tfc.export.to_tflite(mlp, path, quantization="dynamic")
    assert path.read_bytes() == blob


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quantization": "int3"}, "quantization='int3'"),
        ({"quantization": "int8"}, "representative_data=None"),
        ({"quantization": "int8", "representative_data": np.zeros((10, 63), "float32")},
         r"representative_data.shape=\(10, 63\)"),
        ({"quantization": "int8", "representative_data": np.full((10, 64), np.nan, "float32")},
         "non-empty and finite"),
        ({"quantization": "dynamic", "int8_io": True}, "int8_io=True"),
    ],
)
def test_bad_export_arguments(mlp, tmp_path, kwargs, match):
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=match):
        tfc.export.to_tflite(mlp, path, **kwargs)
    assert not path.exists()


def test_bad_path_and_unbuilt_model(mlp, tmp_path):
    with pytest.raises(ValueError, match="path='.*m.tfl'"):
        tfc.export.to_tflite(mlp, tmp_path / "m.tfl")
    unbuilt = keras.Sequential([keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="built=False"):
        tfc.export.to_tflite(unbuilt, tmp_path / "m.tflite")
    assert os.listdir(tmp_path) == []


def test_liteModel_rejects_corrupt_empty_and_missing_files(tmp_path, mlp_files):
    (tmp_path / "empty.tflite").write_bytes(b"")
    (tmp_path / "corrupt.tflite").write_bytes(b"\x00" * 64)
    (tmp_path / "truncated.tflite").write_bytes(mlp_files[None][:2000])
    for name in ("empty", "corrupt", "truncated", "missing"):
        with pytest.raises(ValueError, match="Received: model="):
            tfc.export.LiteModel(tmp_path / f"{name}.tflite")
    with pytest.raises(ValueError, match="0 bytes"):
        tfc.export.LiteModel(b"")


def test_predict_with_wrong_feature_count(mlp_files):
    lite = tfc.export.LiteModel(mlp_files[None])
    with pytest.raises(ValueError, match=r"x.shape=\(4, 63\)"):
        lite.predict(np.zeros((4, 63), "float32"))


def test_evaluate_needs_one_label_per_sample(mlp_files, digits):
    _, (xt, yt) = digits
    lite = tfc.export.LiteModel(mlp_files[None])
    with pytest.raises(ValueError, match=r"Received: y.shape=\(1,\)"):
        lite.evaluate(xt, yt[:1])  # used to broadcast into a meaningless accuracy


@pytest.mark.slow
def test_per_channel_dense_is_an_opt_in(mlp, mlp_files, digits):
    (x, _), (xt, yt) = digits
    per_channel = tfc.export.to_tflite(mlp, quantization="int8", representative_data=x[:200],
                                       per_channel_dense=True)
    flat = tfc.export.LiteModel(per_channel)._flat
    scales = [len(t.quantization.scale) for t in flat.subgraphs[0].tensors
              if t.quantization is not None and t.quantization.scale is not None]
    assert max(scales) == 256
    default_flat = tfc.export.LiteModel(mlp_files["int8"])._flat
    assert max(len(t.quantization.scale) for t in default_flat.subgraphs[0].tensors
               if t.quantization is not None and t.quantization.scale is not None) == 1
    assert len(per_channel) > len(mlp_files["int8"])
    assert abs(tfc.export.LiteModel(per_channel).evaluate(xt, yt)
               - tfc.export.LiteModel(mlp_files["int8"]).evaluate(xt, yt)) <= 0.01


@pytest.mark.slow
def test_integer_input_model_runs_in_float_and_int8():
    # An int32 input (token ids) has quantization scale 0: it must be cast, not "quantized".
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,), dtype="int32"), keras.layers.Embedding(20, 4),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)])
    ids = np.random.default_rng(0).integers(0, 20, (40, 5)).astype("int32")
    expected = model.predict(ids, verbose=0)
    lite = tfc.export.LiteModel(tfc.export.to_tflite(model))
    assert lite.input_details["dtype"] == np.int32
    np.testing.assert_allclose(lite.predict(ids, batch_size=16), expected, atol=1e-5)
    # calibration data keep the input's dtype (int32 ids, not float32)
    int8 = tfc.export.LiteModel(
        tfc.export.to_tflite(model, quantization="int8", representative_data=ids)
    )
    assert int8.is_fully_int8()
    np.testing.assert_allclose(int8.predict(ids), expected, atol=0.02)


@pytest.mark.slow
def test_free_length_dimension_predicts_and_calibrates():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((None, 4)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    long, short = rng.random((100, 5, 4), "float32"), rng.random((6, 3, 4), "float32")
    lite = tfc.export.LiteModel(tfc.export.to_tflite(model))
    assert list(lite.input_details["shape_signature"]) == [-1, -1, 4]
    for x in (long[:6], short, long[:6]):  # the interpreter is resized to each length
        np.testing.assert_allclose(lite.predict(x, batch_size=4), model.predict(x, verbose=0),
                                   atol=1e-5)
    # representative data of any length fit a free dimension; a wrong feature count does not
    blob = tfc.export.to_tflite(model, quantization="int8", representative_data=long)
    np.testing.assert_allclose(tfc.export.LiteModel(blob).predict(long),
                               model.predict(long, verbose=0), atol=0.05)
    with pytest.raises(ValueError, match=r"representative_data.shape=\(100, 5, 3\)"):
        tfc.export.to_tflite(model, quantization="int8", representative_data=long[..., :3])


def test_written_file_has_the_umask_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        tfc.export.write_atomic(tmp_path / "m.tflite", b"data")
    finally:
        os.umask(previous)
    # as `open(path, "wb")` would make it, not mkstemp's owner-only 0o600
    assert (tmp_path / "m.tflite").stat().st_mode & 0o777 == 0o640

import gzip
import os

import keras
import numpy as np
import pytest

import tfcompress as tfc


@pytest.fixture
def tiny():
    """Dense(2 -> 3) with 4 non-zero values of 9 parameters."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    model.set_weights([np.array([[1.0, 0.0, 2.0], [0.0, 0.0, -3.0]], "float32"),
                       np.array([0.0, 0.5, 0.0], "float32")])
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], "float32")
    # logits: [1, .5, 2] -> 2; [0, .5, -3] -> 1; [1, .5, -1] -> 0; [0, .5, 0] -> 1
    y = np.array([2, 1, 1, 1])
    return model, x, y


@pytest.mark.slow
def test_keras_and_tflite_rows_match_hand_computed_figures(tiny, tmp_path):
    model, x, y = tiny
    path = tmp_path / "tiny.tflite"
    blob = tfc.export.to_tflite(model, path)
    report = tfc.report.compression_report({"keras": model, "file": str(path)}, x, y,
                                           latency_runs=3)
    rows = report.to_dict()
    for name in ("keras", "file"):
        assert rows[name]["params"] == 9
        assert rows[name]["nonzero"] == 4
        assert rows[name]["sparsity"] == pytest.approx(5 / 9)
        assert rows[name]["accuracy"] == pytest.approx(3 / 4)
        assert rows[name]["tflite_bytes"] == len(blob)
        assert rows[name]["gzip_bytes"] == len(gzip.compress(blob, compresslevel=9))
        assert rows[name]["latency_us"] > 0
    model.save(tmp_path / "tiny.keras")
    assert rows["keras"]["file_bytes"] == os.path.getsize(tmp_path / "tiny.keras")
    assert rows["file"]["file_bytes"] == len(blob)
    assert rows["keras"]["kind"] == "keras" and rows["file"]["kind"] == "tflite"


def test_int8_rows_count_zero_points_as_zero(tiny, tmp_path):
    model, x, y = tiny
    blob = tfc.export.to_tflite(model, quantization="int8",
                                representative_data=np.random.default_rng(0).random((50, 2)))
    row = tfc.report.compression_report({"int8": blob}, x, y, latency_runs=3).to_dict()["int8"]
    assert row["params"] == 9 and row["nonzero"] == 4 and row["accuracy"] == pytest.approx(0.75)


@pytest.mark.slow
def test_text_markdown_and_plot(tiny, tmp_path):
    model, x, y = tiny
    report = tfc.report.compression_report({"a": model, "b": tfc.export.to_tflite(model)}, x, y,
                                           latency_runs=3)
    text = str(report).splitlines()
    assert len(text) == 4 and text[0].startswith("model") and "sparsity" in text[0]
    assert "0.556" in text[2]
    markdown = report.to_markdown().splitlines()
    assert len(markdown) == 4 and markdown[2].startswith("| a | 9 | 4 | 0.556 |")
    png = report.plot(tmp_path / "plot.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_flat_data_serves_image_models(digits):
    _, (xt, yt) = digits
    cnn = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    row = tfc.report.compression_report({"cnn": cnn}, xt, yt, latency_runs=3).to_dict()["cnn"]
    expected = np.mean(np.argmax(cnn.predict(xt.reshape(-1, 8, 8, 1), verbose=0), -1) == yt)
    assert row["accuracy"] == pytest.approx(expected)


def test_report_without_data_leaves_accuracy_out(tiny):
    model, _, _ = tiny
    row = tfc.report.compression_report({"a": model}, latency_runs=3).to_dict()["a"]
    assert row["accuracy"] is None and row["params"] == 9


@pytest.mark.parametrize("models, match", [({}, "non-empty"), ({"a": 3}, "models\\['a'\\]")])
def test_bad_report_arguments(models, match):
    with pytest.raises(ValueError, match=match):
        tfc.report.compression_report(models)


def test_x_without_y(tiny):
    model, x, _ = tiny
    with pytest.raises(ValueError, match="x is None=False"):
        tfc.report.compression_report({"a": model}, x)


def test_plot_leaves_the_matplotlib_backend_alone(tiny, tmp_path):
    import matplotlib

    model, x, y = tiny
    report = tfc.report.compression_report({"a": model}, x, y, latency_runs=3)
    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        report.plot(tmp_path / "plot.png")
        assert matplotlib.get_backend() == "svg"  # a notebook's inline backend stays
    finally:
        matplotlib.use(previous)
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_arguments_checked_before_anything_is_measured(tiny, monkeypatch):
    model, x, y = tiny

    def measured(*args, **kwargs):
        raise AssertionError("measured before the arguments were checked")

    monkeypatch.setattr(tfc.report, "_keras_row", measured)
    with pytest.raises(ValueError, match=r"Received: y.shape=\(1,\)"):
        tfc.report.compression_report({"a": model}, x, y[:1])
    with pytest.raises(ValueError, match=r"models\['b'\]"):
        tfc.report.compression_report({"a": model, "b": 3}, x, y)


def test_pareto_frontier_keeps_what_nothing_beats():
    points = [(10, 90.0), (5, 85.0), (20, 89.0), (7, 85.0), (30, 95.0), (5, 80.0), (40, 95.0)]
    # (20, 89) is beaten by (10, 90); (7, 85) and (5, 80) by (5, 85); (40, 95) by (30, 95).
    assert tfc.plots.pareto_frontier(points) == [1, 0, 4]


def test_sparsity_and_filter_plots(tmp_path):
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(6), keras.layers.Dense(2)])
    kernel = model.layers[0].kernel
    kernel.assign(np.where(np.arange(96).reshape(16, 6) % 4 == 0, 0.0, kernel.numpy()))
    for path, draw in (
        (tmp_path / "s.png", lambda p: tfc.plots.sparsity(model, p)),
        (tmp_path / "f.png", lambda p: tfc.plots.filters(kernel, p, (4, 4))),
    ):
        assert draw(path) == path and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"Received: image_shape=\(4, 5\), kernel.shape=\(16, 6\)"):
        tfc.plots.filters(kernel, tmp_path / "bad.png", (4, 5))
    assert not (tmp_path / "bad.png").exists()

import json

import numpy as np
import pytest

from tfcompress import demo
from tfcompress.export import LiteModel

pytestmark = pytest.mark.slow  # the whole demo, about 2 minutes


@pytest.fixture(scope="module")
def full_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines = []
    result = demo.run(out, log=lines.append)
    return out, result, lines


@pytest.mark.slow
def test_demo_runs_every_step_and_reports_every_artifact(full_demo):
    out, result, lines = full_demo
    for step in demo.STEPS:
        assert any(f"{step} done" in line for line in lines), step
    rows = json.loads((out / "report.json").read_text())
    assert rows == json.loads(json.dumps(result.to_dict()))
    assert len(rows) == 24
    for tag in ("mlp", "cnn"):
        assert (out / f"{tag}_float.keras").exists()
        for fmt in ("float", "dynamic", "float16", "int8"):
            assert (out / f"{tag}_{fmt}.tflite").stat().st_size > 0
    assert (out / "report.md").read_text().count("\n") >= 26
    for figure in ("size_vs_accuracy.png", "rbm_filters.png", "mlp_pruned80_sparsity.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG", figure


def test_demo_figures_hold_what_each_step_promises(full_demo):
    out, _, _ = full_demo
    rows = json.loads((out / "report.json").read_text())
    float_mlp = rows["mlp keras"]
    # post-training int8: <= 0.30x the float file, within a point of the Keras model
    assert rows["mlp int8"]["tflite_bytes"] <= 0.30 * rows["mlp float"]["tflite_bytes"]
    assert rows["mlp int8"]["accuracy"] >= float_mlp["accuracy"] - 0.01
    # pruning: 80% of the kernels are zero, gzip shrinks accordingly
    pruned = rows["mlp pruned 80% int8"]
    assert pruned["gzip_bytes"] < 0.5 * rows["mlp int8"]["gzip_bytes"]
    assert pruned["accuracy"] >= float_mlp["accuracy"] - 0.02
    assert rows["mlp units/2 float"]["params"] < 0.4 * float_mlp["params"]
    # QAT files are fully int8 and as accurate as the float model
    for name in ("mlp_qat_int8", "cnn_qat_int8", "dbn_pruned80_int8"):
        assert LiteModel(out / f"{name}.tflite").is_fully_int8(), name
    assert rows["mlp qat int8"]["accuracy"] >= float_mlp["accuracy"] - 0.01
    # distilled student: 21x fewer parameters, within 3 points of the teacher
    student = rows["student 64-32-10 distilled int8"]
    assert student["params"] * 20 < float_mlp["params"]
    assert student["accuracy"] >= float_mlp["accuracy"] - 0.03
    # 16 clusters: at most 16 distinct values per kernel, a much smaller gzip
    lite = LiteModel(out / "clustered16_float.tflite")
    kernels = [w for name, (w, _) in lite.weights().items() if name.endswith("MatMul")]
    assert len(kernels) == 3 and all(len(np.unique(w)) <= 16 for w in kernels)
    assert rows["16 clusters"]["gzip_bytes"] < 0.3 * float_mlp["gzip_bytes"]
    assert rows["dbn pruned 80% int8"]["accuracy"] >= 0.9


def test_unknown_step_is_rejected_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="Unknown demo steps"):
        demo.run(tmp_path / "out", steps=["nope"])
    assert not (tmp_path / "out").exists()

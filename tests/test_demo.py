import json

import pytest

from tfcompress import demo


def test_foundation_step_writes_every_format_and_the_report(tmp_path):
    lines = []
    result = demo.run(tmp_path, steps=["foundation_step"], log=lines.append)
    for tag in ("mlp", "cnn"):
        assert (tmp_path / f"{tag}_float.keras").exists()
        for fmt in ("float", "dynamic", "float16", "int8"):
            assert (tmp_path / f"{tag}_{fmt}.tflite").stat().st_size > 0
    rows = json.loads((tmp_path / "report.json").read_text())
    assert len(rows) == 10 and rows == json.loads(json.dumps(result.to_dict()))
    assert rows["mlp int8"]["tflite_bytes"] <= 0.30 * rows["mlp float"]["tflite_bytes"]
    assert rows["mlp int8"]["accuracy"] >= rows["mlp keras"]["accuracy"] - 0.01
    assert (tmp_path / "size_vs_accuracy.png").exists()
    assert any("foundation_step done" in line for line in lines)


def test_unknown_step_is_rejected_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="Unknown demo steps"):
        demo.run(tmp_path / "out", steps=["nope"])
    assert not (tmp_path / "out").exists()

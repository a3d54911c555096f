"""SIGKILL mid-fit, restart: the resumed run ends with the same weights as one never interrupted.

Each technique trains in a subprocess (tests/_crash_worker.py) under
`keras.callbacks.BackupAndRestore`: one run kills itself in the middle of
epoch 3, the next resumes from the backup and, in the same process, the same
training also runs uninterrupted from scratch for comparison. The runs are
chained (the process that resumes one technique is then killed in the next).
"""

import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("_crash_worker.py")
# rbm_pcd resumes what rbm_cd would (weights, optimizer, step) and the persistent chain.
TECHNIQUES = ["pruning", "qat", "clustering", "rbm_pcd", "distiller"]


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow
def test_killed_fits_resume_to_the_uninterrupted_weights(tmp_path):
    previous = None
    for technique in TECHNIQUES + [None]:
        args = [tmp_path]
        args += ["--resume", previous] if previous else []
        args += ["--kill", technique] if technique else []
        run = _run(*args)
        if technique:
            assert run.returncode == -signal.SIGKILL, (technique, run.stderr[-2000:])
            # died midway, with a backup on disk
            assert not (tmp_path / f"{technique}.npz").exists()
            assert any((tmp_path / technique).iterdir()), technique
        else:
            assert run.returncode == 0, (previous, run.stderr[-2000:])
        if previous:
            _check_resumed(previous, np.load(tmp_path / f"{previous}.npz"))
        previous = technique


def _check_resumed(technique, weights):
    # Killed in epoch 2 (of 0-3): the backup of epoch 1's end restarts it at epoch 2.
    assert weights["epochs"].tolist() == [2, 3], technique
    count = (len(weights.files) - 1) // 2
    assert count >= 2, technique
    for i in range(count):
        np.testing.assert_allclose(
            weights[f"resumed_{i}"],
            weights[f"reference_{i}"],
            rtol=0,
            atol=1e-6,
            err_msg=f"{technique}: weight {i}",
        )

"""SIGKILL mid-fit, restart: the resumed run ends with the same weights as one never interrupted.

Each technique trains in a subprocess (tests/_crash_worker.py) under
`keras.callbacks.BackupAndRestore`; the first run kills itself in the middle
of epoch 3, the second resumes from the backup and, in the same process, the
same training also runs uninterrupted from scratch for comparison.
"""

import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("_crash_worker.py")


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
@pytest.mark.parametrize(
    # rbm_pcd resumes what rbm_cd would (weights, optimizer, step) and the persistent chain.
    "technique", ["pruning", "qat", "clustering", "rbm_pcd", "distiller"]
)
def test_killed_fit_resumes_to_the_uninterrupted_weights(technique, tmp_path):
    backup, out = tmp_path / "backup", tmp_path / "weights.npz"
    killed = _run(technique, backup, out, "--kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists() and any(backup.iterdir())  # died midway, with a backup on disk
    resumed = _run(technique, backup, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights = np.load(out)
    count = len(weights.files) // 2
    assert count >= 2
    for i in range(count):
        np.testing.assert_allclose(
            weights[f"resumed_{i}"],
            weights[f"reference_{i}"],
            rtol=0,
            atol=1e-6,
            err_msg=f"{technique}: weight {i}",
        )

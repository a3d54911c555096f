"""Two real worker processes on 127.0.0.1 distil a model with MultiWorkerMirroredStrategy."""

import os
import pathlib
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import small_mlp

import tfcompress as tfc

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_multiworker_worker.py"
TIMEOUT_S = 120


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _run_workers(workdir, n=2):
    """Starts n workers, waits at most TIMEOUT_S for all, always kills leftovers.

    Returns the exit codes; a worker killed at the deadline has code -9.
    """
    workers = [f"127.0.0.1:{port}" for port in _free_ports(n)]
    procs, logs = [], []
    try:
        for index in range(n):
            env = dict(
                os.environ,
                TF_CONFIG=tfc.distribute.tf_config(workers, index),
                TF_CPP_MIN_LOG_LEVEL="2",
                CUDA_VISIBLE_DEVICES="",
                PYTHONPATH=str(ROOT),
            )
            log = open(workdir / f"worker_{index}.log", "w")  # noqa: SIM115
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), str(workdir)],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + TIMEOUT_S
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass  # the workers still running are killed below and report a negative code
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    return [proc.returncode for proc in procs]


def _tail(workdir, n=2):
    return "\n".join(
        f"--- worker {i} ---\n" + (workdir / f"worker_{i}.log").read_text()[-2000:]
        for i in range(n)
    )


@pytest.mark.slow
def test_two_workers_distil_identically(tmp_path, digits):
    (x, y), (x_te, _) = digits
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher = small_mlp(hidden=(64,), seed=1)
    teacher.compile("adam", scce)
    teacher.fit(x, y, epochs=5, verbose=0)
    distiller = tfc.Distiller(student=small_mlp(hidden=(16,), seed=2), teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"],
                      student_loss_fn=scce, distillation_loss_fn=keras.losses.KLDivergence(),
                      alpha=0.1, temperature=3)
    initial = [w.copy() for w in distiller.student.get_weights()]
    # The workers are fresh processes that only import tfcompress before loading this file.
    distiller.save(tmp_path / "initial.keras")
    np.savez(tmp_path / "data.npz", x=x[:1024], y=y[:1024], x_test=x_te)

    codes = _run_workers(tmp_path)
    assert codes == [0, 0], f"exit codes {codes} (-9: killed after {TIMEOUT_S} s)\n" + _tail(
        tmp_path
    )

    results = [np.load(tmp_path / f"worker_{i}.npz") for i in range(2)]
    for r in results:
        assert int(r["replicas"]) == 2
        np.testing.assert_allclose(r["alpha_temperature"], [0.1, 3.0])
    assert results[0]["distillation_loss"][-1] < results[0]["distillation_loss"][0]
    np.testing.assert_allclose(results[1]["loss"], results[0]["loss"], rtol=1e-6)
    weights = [[r[f"weight_{k}"] for k in range(4)] for r in results]
    assert max(np.abs(a - b).max() for a, b in zip(weights[0], initial)) > 1e-3
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(results[1]["predictions"], results[0]["predictions"], atol=1e-6)

    reloaded = keras.saving.load_model(tmp_path / "distiller.keras")
    assert isinstance(reloaded, tfc.Distiller)
    assert (reloaded.alpha, reloaded.temperature) == (0.1, 3.0)
    for a, b in zip(reloaded.student.get_weights(), weights[0]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(reloaded.teacher.get_weights(), teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        reloaded.predict(x_te, verbose=0), results[0]["predictions"], atol=1e-5
    )

"""Distillation with MultiWorkerMirroredStrategy: two workers on this machine.

Run: `python examples/multiworker.py` (about a minute on 2 CPU cores). It
starts itself twice as worker 0 (the chief) and worker 1 on 127.0.0.1, each
with its own TF_CONFIG. On real machines, run `python examples/multiworker.py
--worker I OUT_DIR HOST0:PORT HOST1:PORT ...` once per machine.
"""

import os
import socket
import subprocess
import sys
import tempfile


def worker(index, addresses, out):
    import tfcompress as tfc

    os.environ["TF_CONFIG"] = tfc.distribute.tf_config(addresses, index)
    strategy = tfc.distribute.multi_worker_strategy()  # before any TensorFlow op

    import keras

    (x, y), (x_test, y_test) = tfc.datasets.load_digits()
    scce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(0)  # same initial weights on every worker
    with strategy.scope():
        teacher = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                                    keras.layers.Dense(10)])
        teacher.compile(keras.optimizers.Adam(1e-3), scce)
    teacher.fit(x, y, epochs=20, batch_size=64, verbose=0)
    with strategy.scope():
        student = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                                    keras.layers.Dense(10)])
        distiller = tfc.Distiller(student=student, teacher=teacher)
        distiller.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                          student_loss_fn=scce, alpha=0.1, temperature=3)
    # batch_size is global: each of the workers gets half of every batch.
    distiller.fit(x, y, epochs=20, batch_size=64, verbose=0)
    logs = distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)
    print(f"worker {index}: {strategy.num_replicas_in_sync} replicas, "
          f"student accuracy {logs['accuracy']:.4f}", flush=True)
    if tfc.distribute.is_chief():
        distiller.save(os.path.join(out, "distiller.keras"))
        print(f"chief saved {out}/distiller.keras", flush=True)


def launch(n=2, timeout=300):
    ports = []
    for _ in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    addresses = [f"127.0.0.1:{p}" for p in ports]
    out = tempfile.mkdtemp()
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}  # quieter TensorFlow unless asked
    procs = [
        subprocess.Popen([sys.executable, __file__, "--worker", str(i), out, *addresses], env=env)
        for i in range(n)
    ]
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"workers still running after {timeout} s: killed", flush=True)
    finally:
        for proc in procs:  # never leave a worker behind (it would wait for its peer forever)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [proc.returncode for proc in procs]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(int(sys.argv[2]), sys.argv[4:], sys.argv[3])
    else:
        codes = launch()
        print("exit codes:", codes)
        sys.exit(0 if codes == [0] * len(codes) else 1)

"""The end-to-end compression demo: every technique on the bundled digits.

Each step lives in its own module of this package and exposes `run(ctx)`: it
trains, compresses and exports into `ctx.out_dir`, and adds the artifacts it
wants compared to the final report with `ctx.add(name, model_or_tflite_path)`.
"""

import importlib
import json
import pathlib
import time

from tfcompress import datasets, report

STEPS = ("foundation_step", "dbn_step", "pruning_step", "qat_step", "distill_step", "toolbox_step")


class DemoContext:
    """What a demo step receives: output folder, data, logging and report rows."""

    def __init__(self, out_dir, log=print):
        self.out_dir = pathlib.Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.digits = datasets.load_digits()
        self.digits_image = datasets.load_digits(shape="image")
        self.rows = {}
        self._log = log

    def log(self, message):
        self._log(f"    {message}")

    def add(self, name, model_or_path):
        """Adds a Keras model or a .tflite path to the final compression report."""
        if name in self.rows:
            raise ValueError(f"A report row named {name!r} exists already. Received: name={name!r}")
        if isinstance(model_or_path, pathlib.Path):
            model_or_path = str(model_or_path)
        self.rows[name] = model_or_path

    def figure(self, filename, draw):
        """Calls `draw(path)` for a PNG in the output folder; without matplotlib, says so."""
        path = self.out_dir / filename
        try:
            draw(path)
        except ImportError:
            self.log(f"no {filename}: matplotlib is missing (pip install 'tfcompress[plots]')")
            return
        self.log(f"wrote {path}")


def run(out_dir="saved_models", steps=None, log=print):
    """Runs the demo steps in order and writes the report next to the artifacts.

    Args:
        out_dir: folder for every artifact (created if missing).
        steps: names from `STEPS` to run (default: all), in the given order.
        log: where progress lines go.

    Returns:
        The `CompressionReport` of every row the steps added.
    """
    steps = STEPS if steps is None else tuple(steps)
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"Unknown demo steps {unknown}; known: {STEPS}. Received: steps={steps}")
    ctx = DemoContext(out_dir, log)
    start = time.perf_counter()
    for i, name in enumerate(steps, 1):
        log(f"[{i}/{len(steps)}] {name} ...")
        t0 = time.perf_counter()
        importlib.import_module(f"tfcompress.demo.{name}").run(ctx)
        log(f"[{i}/{len(steps)}] {name} done in {time.perf_counter() - t0:.1f} s")
    log(f"[report] measuring {len(ctx.rows)} artifacts ...")
    (_, _), (x_test, y_test) = ctx.digits
    result = report.compression_report(ctx.rows, x_test, y_test, latency_runs=50)
    (ctx.out_dir / "report.md").write_text(result.to_markdown() + "\n")
    (ctx.out_dir / "report.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    ctx.figure("size_vs_accuracy.png", result.plot)
    log(str(result))
    log(f"demo finished in {time.perf_counter() - start:.1f} s; artifacts in {ctx.out_dir}/")
    return result

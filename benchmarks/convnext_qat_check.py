"""ConvNeXtTiny through QAT to a fully int8 file, untrained (a structural check).

Run: `nice -n 5 python benchmarks/convnext_qat_check.py` (about 2 minutes on 2 cores).

Training the 28M-parameter net is the zoo benchmark's job (`zoo_bench.py --models
ConvNeXtTiny`, hours on 2 cores). This checks what QAT makes of its parts: the nested
Sequential stem and downsampling blocks inlined, LayerNorms as int8 MEAN/RSQRT/MUL, GELU MLPs
on 4-D tensors, `LayerScale` as int8 MUL. Ranges come from two training-mode calls on random
images; the file is compared with the QAT model on them, in steps of the softmax's 1/256.
"""

import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfcompress as tfc  # noqa: E402
from tfcompress.export import LiteModel, to_tflite  # noqa: E402


def main():
    t0 = time.perf_counter()
    keras.utils.set_random_seed(0)
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat = tfc.quantization.quantize_model(model)
    left_float = [str(w.message)[:200] for w in caught if "float" in str(w.message)]
    x = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    for batch in (x[:8], x[8:]):
        qat(batch, training=True)
    lite = LiteModel(to_tflite(qat, quantization="int8"))
    steps = np.abs(lite.predict(x) - qat.predict(x, verbose=0)) * 256
    kinds = {type(layer).__name__ for layer in qat.layers}
    print(f"# ConvNeXtTiny 32x32: {model.count_params():,} parameters")
    print(f"QAT warnings about float layers: {left_float or 'none'}")
    print(f"nested Sequential left: {'Sequential' in kinds}; layer kinds: {sorted(kinds)}")
    print(f"file: {lite.size:,} bytes, fully int8: {lite.is_fully_int8()}, "
          f"float ops: {sorted(lite.float_ops())}")
    print(f"file vs QAT model: max {steps.max():.1f}, p99 {np.percentile(steps, 99):.1f} steps of "
          f"1/256; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

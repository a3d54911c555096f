"""Quantization-aware training (QAT) and calibration for Keras 3, exported fully int8.

```python
qat = tfc.quantization.quantize_model(model)
qat.compile(...); qat.fit(x, y, epochs=3)
blob = tfc.export.to_tflite(qat, "qat.tflite", quantization="int8", int8_io=True)

ptq = tfc.quantization.calibrate(model, x_train[:300])  # post-training, no fit
print(tfc.quantization.sensitivity(model, x_test, y_test))  # per layer, on LiteRT
```
"""

from tfcompress.quantization import int4, litert, quantizers
from tfcompress.quantization.attention import (
    QuantizedAttention,
    QuantizedEmbedding,
    QuantizedLayerNorm,
)
from tfcompress.quantization.calibration import calibrate
from tfcompress.quantization.config import QuantizeConfig
from tfcompress.quantization.folding import fold_batch_norm
from tfcompress.quantization.layers import ActivationQuantizer, QuantizeWrapper
from tfcompress.quantization.precision import (
    MixedPrecisionResult,
    SensitivityReport,
    mixed_precision,
    sensitivity,
)
from tfcompress.quantization.qat import (
    QuantizedComposite,
    QuantizedModel,
    fold_batch_norms,
    is_quantized,
    quantize_model,
)
from tfcompress.quantization.recurrent import QuantizedRecurrent

__all__ = [
    "ActivationQuantizer",
    "MixedPrecisionResult",
    "SensitivityReport",
    "QuantizeConfig",
    "QuantizeWrapper",
    "QuantizedAttention",
    "QuantizedComposite",
    "QuantizedEmbedding",
    "QuantizedLayerNorm",
    "QuantizedModel",
    "QuantizedRecurrent",
    "calibrate",
    "fold_batch_norm",
    "fold_batch_norms",
    "int4",
    "is_quantized",
    "litert",
    "mixed_precision",
    "quantize_model",
    "quantizers",
    "sensitivity",
]

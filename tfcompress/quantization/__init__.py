"""Quantization-aware training (QAT) for Keras 3 with fully int8 TFLite export.

```python
qat = tfc.quantization.quantize_model(model)
qat.compile(...); qat.fit(x, y, epochs=3)
blob = tfc.export.to_tflite(qat, "qat.tflite", quantization="int8", int8_io=True)
```
"""

from tfcompress.quantization import quantizers
from tfcompress.quantization.config import QuantizeConfig
from tfcompress.quantization.folding import fold_batch_norm
from tfcompress.quantization.layers import ActivationQuantizer, QuantizeWrapper
from tfcompress.quantization.qat import (
    QuantizedModel,
    fold_batch_norms,
    is_quantized,
    quantize_model,
)

__all__ = [
    "ActivationQuantizer",
    "QuantizeConfig",
    "QuantizeWrapper",
    "QuantizedModel",
    "fold_batch_norm",
    "fold_batch_norms",
    "is_quantized",
    "quantize_model",
    "quantizers",
]

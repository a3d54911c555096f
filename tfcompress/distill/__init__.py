"""Knowledge distillation: train a small student to match a large teacher.

- `distiller`: the `Distiller` model (its loss, training and saving),
- `losses`: resolving user losses, batch means and tempered log-probabilities,
- `outputs`: checks of teacher and student outputs (logits/probabilities, shapes),
- `features`: feature distillation (layer outputs, projections, extractor models).
"""

from tfcompress.distill.distiller import Distiller

__all__ = ["Distiller"]

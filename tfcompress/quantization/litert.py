"""Quantization beyond uniform int8, done on the TFLite file by Google's AI Edge Quantizer.

The AI Edge Quantizer (PyPI `ai-edge-quantizer`) is the maintained LiteRT-level
quantizer: it rewrites a float `.tflite` file with int4/int8 weights and
int8/int16 activations from a recipe. tfcompress exports the float file and
hands it over, so everything that exports (QAT aside) gets these modes:

- `"int4"`: int4 weights, one scale per output channel, activations quantized
  to int8 on the fly (AEQ's `dynamic_wi4_afp32`); about half an int8 file.
- `"int16x8"`: int8 weights, int16 activations calibrated on representative
  data (AEQ's `static_wi8_ai16`); closer to float than int8, for models whose
  activations int8 cannot hold.
- `recipe=`: any AEQ recipe, by the name of one of its predefined recipes
  (`"weight_only_wi4_afp32"`, `"static_wi8_ai8"`, ...) or as its full
  list-of-dicts form (per-layer regexes, block-wise int4, ...).
"""

import contextlib
import io
import warnings

import numpy as np

from tfcompress.litemodel import LiteModel

MODES = {"int4": "dynamic_wi4_afp32", "int16x8": "static_wi8_ai16"}


def aeq():
    """The AI Edge Quantizer's `quantizer` and `recipe` modules."""
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ImportError(
            "int4, int16x8 and recipes need the AI Edge Quantizer: pip install ai-edge-quantizer"
        ) from e
    return quantizer, recipe


@contextlib.contextmanager
def quiet():
    # AEQ draws a progress bar on stderr while it calibrates, and LiteRT warns
    # that keeping every tensor (what calibration needs) is for debugging:
    # neither is news to our caller. Exceptions still propagate.
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        yield


def recipe_names():
    """Names of the AI Edge Quantizer's predefined recipes."""
    _, recipe = aeq()
    return sorted(
        name for name in dir(recipe)
        if not name.startswith("_") and name.split("_")[0] in ("dynamic", "static", "weight")
        and callable(getattr(recipe, name))
    )


def resolve(recipe):
    """A recipe in AEQ's list-of-dicts form from a name or that form itself.

    Raises:
        ValueError: for an unknown name or something that is neither.
    """
    _, recipes = aeq()
    if isinstance(recipe, str):
        names = recipe_names()
        if recipe not in names:
            raise ValueError(
                f"`recipe` must be one of the AI Edge Quantizer's recipes {names} or a recipe "
                f"list. Received: recipe={recipe!r}"
            )
        return getattr(recipes, recipe)()
    if isinstance(recipe, (list, tuple)) and recipe and all(isinstance(r, dict) for r in recipe):
        return list(recipe)
    raise ValueError(
        "`recipe` must be a recipe name or a non-empty list of recipe dicts. "
        f"Received: recipe={recipe!r}"
    )


def quantize_file(float_blob, recipe, representative_data=None):
    """Quantizes the float TFLite flatbuffer `float_blob` by `recipe` (list form).

    Recipes with static activations are calibrated on `representative_data`
    (required for them), one sample at a time through LiteRT.

    Returns:
        The quantized flatbuffer as bytes.
    """
    quantizer, _ = aeq()
    with quiet():
        qt = quantizer.Quantizer(bytes(float_blob), recipe)
    calibration = None
    if qt.need_calibration:
        if representative_data is None:
            raise ValueError(
                "This recipe calibrates activation ranges: pass `representative_data` (a few "
                "hundred inputs). Received: representative_data=None"
            )
        signature, input_name = LiteModel(float_blob).signature_input()
        data = np.asarray(representative_data, dtype="float32")
        samples = [{input_name: data[i : i + 1]} for i in range(len(data))]
        with quiet():
            calibration = qt.calibrate({signature: samples})
    with quiet():
        result = qt.quantize(calibration, enable_progress_report=False)
    return bytes(result.quantized_model)

"""Demo step: quantization-aware training of the digits MLP and CNN, fully int8.

Loads the float models the foundation step saved (or trains them when this step
runs alone), fine-tunes them briefly with fake-quant int8, exports files whose
inputs, outputs and kernels are all int8, and logs PTQ vs QAT side by side.
"""

import keras

from tfcompress import export
from tfcompress.demo import foundation_step
from tfcompress.quantization import quantize_model

QAT_EPOCHS = 3


def _float_model(ctx, tag, x, y):
    path = ctx.out_dir / f"{tag}_float.keras"
    if path.exists():
        return keras.saving.load_model(path)
    model = foundation_step.digits_mlp() if tag == "mlp" else foundation_step.digits_cnn()
    return foundation_step.train(model, x, y, epochs=30 if tag == "mlp" else 20)


def _ptq_file(ctx, tag, model, x):
    path = ctx.out_dir / f"{tag}_int8.tflite"
    if not path.exists():
        export.to_tflite(model, path, quantization="int8", representative_data=x[:200])
    return path


def run(ctx):
    for tag, ((x, y), (x_test, y_test)) in (("mlp", ctx.digits), ("cnn", ctx.digits_image)):
        model = _float_model(ctx, tag, x, y)
        qat = quantize_model(model)
        qat.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=foundation_step.STEPS_PER_EXECUTION,
        )
        qat.fit(x, y, epochs=QAT_EPOCHS, batch_size=32, verbose=0)
        qat.save(ctx.out_dir / f"{tag}_qat.keras")
        path = ctx.out_dir / f"{tag}_qat_int8.tflite"
        export.to_tflite(qat, path, quantization="int8", int8_io=True)
        ctx.add(f"{tag} qat int8", path)
        qat_lite = export.LiteModel(path)
        ptq_path = _ptq_file(ctx, tag, model, x)
        ptq_lite = export.LiteModel(ptq_path)
        float_acc = model.evaluate(x_test, y_test, verbose=0)[1]
        ctx.log(
            f"{tag}: float {100 * float_acc:.2f}% | PTQ int8 "
            f"{100 * ptq_lite.evaluate(x_test, y_test):.2f}% ({ptq_path.stat().st_size:,} B) | "
            f"QAT int8 {100 * qat_lite.evaluate(x_test, y_test):.2f}% "
            f"({path.stat().st_size:,} B, fully int8: {qat_lite.is_fully_int8()})"
        )

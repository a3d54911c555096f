"""Bad inputs across the package: one row per case (issue 12).

Each row builds a tiny object, makes one bad call on it and expects an error
whose message names the argument and the value received; the object's state
(weights, built flag, the interpreter's input shape, files on disk) must be
the same after the refused call.
"""

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcompress.clustering import cluster_weights
from tfcompress.dbn import DBN
from tfcompress.distill import Distiller
from tfcompress.export import LiteModel, to_tflite
from tfcompress.factorization import PCA, low_rank
from tfcompress.pruning.schedules import PolynomialDecay
from tfcompress.rbm import RBM
from tfcompress.report import compression_report

_X = np.random.default_rng(0).random((16, 4)).astype("float32")


def _mlp(inputs=4, outputs=3):
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(outputs)])


@functools.cache
def _blob(kind):
    """Tiny TFLite files, converted once: float, int8 (float I/O) and int8 I/O."""
    keras.utils.set_random_seed(0)
    if kind == "float":
        return to_tflite(_mlp())
    return to_tflite(
        _mlp(), quantization="int8", representative_data=_X, int8_io=kind == "int8_io"
    )


def _built_dbn():
    dbn = DBN([3], seed=0)
    dbn.build((None, 4))
    return dbn


def _fitted_pca():
    pca = PCA(2)
    pca.adapt(_X)
    return pca


def _nan_kernel_model():
    model = _mlp()
    kernel = model.layers[0].kernel.numpy()
    kernel[0, 0] = np.nan
    model.layers[0].kernel.assign(kernel)
    return model


def _dir_with_file(tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    return tmp_path


def _snapshot(obj):
    """What a refused call must leave unchanged."""
    if isinstance(obj, (keras.Model, keras.layers.Layer)):
        return [obj.built, obj.trainable] + [np.array(w) for w in obj.weights]
    if isinstance(obj, LiteModel):
        return [obj._shape]
    if isinstance(obj, dict):
        return [_snapshot(v) for v in obj.values()]
    if isinstance(obj, (list, tuple)):
        return [_snapshot(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return sorted((p.name, p.read_bytes()) for p in obj.iterdir())
    return []


def _same(a, b):
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@dataclasses.dataclass
class Case:
    id: str
    make: Callable  # (tmp_path) -> the object the bad call works on
    call: Callable  # (obj) -> the bad call
    match: str  # must name the argument and hold "Received:"
    error: type = ValueError


CASES = [
    # ------------------------------------------------------------ RBM / DBN
    Case("dbn_pretrain_empty", lambda _: _built_dbn(),
         lambda dbn: dbn.pretrain(np.zeros((0, 4), "float32"), epochs=1, verbose=0),
         r"`x`.*Received: x\.shape=\(0, 4\)"),
    Case("dbn_pretrain_negative_learning_rate", lambda _: _built_dbn(),
         lambda dbn: dbn.pretrain(_X, epochs=1, verbose=0,
                                  optimizer=keras.optimizers.SGD(-0.1)),
         r"`optimizer`.*Received: optimizer=SGD\(learning_rate=-0\.1\)"),
    Case("dbn_pretrain_negative_scheduled_learning_rate", lambda _: _built_dbn(),
         lambda dbn: dbn.pretrain(_X, epochs=1, verbose=0, optimizer=keras.optimizers.Adam(
             keras.optimizers.schedules.ExponentialDecay(-0.01, 10, 0.9))),
         r"`optimizer`.*Received: optimizer=Adam\(learning_rate=-0\.01\)"),
    Case("dbn_pretrain_infinite_learning_rate", lambda _: _built_dbn(),
         lambda dbn: dbn.pretrain(_X, epochs=1, verbose=0,
                                  optimizer=keras.optimizers.SGD(float("inf"))),
         r"`optimizer`.*Received: optimizer=SGD\(learning_rate=inf\)"),
    Case("rbm_sparsity_target_string", lambda _: None,
         lambda _: RBM(3, sparsity_target="0.1"),
         r"`sparsity_target`.*Received: sparsity_target='0\.1'"),
    Case("rbm_sparsity_cost_string", lambda _: None,
         lambda _: RBM(3, sparsity_target=0.1, sparsity_cost="1"),
         r"`sparsity_cost`.*Received: sparsity_cost='1'"),
    Case("rbm_sparsity_cost_inf", lambda _: None,
         lambda _: RBM(3, sparsity_cost=float("inf")),
         r"`sparsity_cost`.*Received: sparsity_cost=inf"),
    # ----------------------------------------------------- PCA and low_rank
    Case("pca_adapt_empty", lambda _: PCA(2),
         lambda pca: pca.adapt(np.zeros((0, 4))),
         r"`data`.*Received: data\.shape=\(0, 4\)"),
    Case("pca_adapt_empty_dataset", lambda _: PCA(2),
         lambda pca: pca.adapt(tf.data.Dataset.from_tensor_slices(_X).batch(4).take(0)),
         r"`data`.*Received: data="),
    Case("pca_adapt_nan", lambda _: PCA(2),
         lambda pca: pca.adapt(np.full((10, 4), np.nan)),
         r"`data`.*NaN.*Received: data with 40 non-finite values"),
    Case("pca_readapt_inf", lambda _: _fitted_pca(),
         lambda pca: pca.adapt(np.where(np.eye(16, 4) > 0, np.inf, _X)),
         r"`data`.*Received: data with 4 non-finite values"),
    Case("pca_call_wrong_feature_count", lambda _: _fitted_pca(),
         lambda pca: pca(np.zeros((3, 5), "float32")),
         r"`inputs`.*Received: inputs\.shape=\(3, 5\)"),
    Case("pca_numpy_share_out_of_range", lambda _: None,
         lambda _: PCA(np.float32(1.5)),
         r"`n_components`.*Received: n_components=.*1\.5"),
    Case("low_rank_unbuilt_model", lambda _: keras.Sequential([keras.layers.Dense(3)]),
         lambda model: low_rank(model, rank=1),
         r"`model`.*built.*Received: model=<Sequential"),
    # --------------------------------------------------------- pruning
    Case("polynomial_decay_power_inf", lambda _: None,
         lambda _: PolynomialDecay(0.0, 0.5, 0, 10, power=float("inf")),
         r"`power`.*Received: power=inf"),
    Case("polynomial_decay_power_nan", lambda _: None,
         lambda _: PolynomialDecay(0.0, 0.5, 0, 10, power=float("nan")),
         r"`power`.*Received: power=nan"),
    # ------------------------------------------------------- clustering
    Case("cluster_weights_nan_kernel", lambda _: _nan_kernel_model(),
         lambda model: cluster_weights(model, 2),
         r"NaN.*`kernel`.*Received: to_cluster=sequential"),
    # ------------------------------------------------------ distillation
    Case("distiller_input_shapes_differ", lambda _: (_mlp(5, 3), _mlp(4, 3)),
         lambda models: Distiller(student=models[1], teacher=models[0]),
         r"input.*Received: teacher input shape=\(5,\), student input shape=\(4,\)"),
    # ------------------------------------------------------------ export
    Case("to_tflite_string_representative_data", lambda _: _mlp(),
         lambda model: to_tflite(model, quantization="int8", representative_data="abc"),
         r"`representative_data`.*numeric.*Received: representative_data of type str"),
    Case("to_tflite_path_under_a_file", _dir_with_file,
         lambda tmp: to_tflite(_mlp(), tmp / "afile" / "sub" / "m.tflite"),
         r"`path`.*afile.*not a directory.*Received: path='.*afile/sub/m\.tflite'"),
    Case("lite_model_none", lambda _: None, lambda _: LiteModel(None),
         r"`model`.*Received: model=None"),
    Case("lite_model_num_threads_string", lambda _: None,
         lambda _: LiteModel(_blob("float"), num_threads="two"),
         r"`num_threads`.*Received: num_threads='two'"),
    Case("lite_model_num_threads_below_minus_one", lambda _: None,
         lambda _: LiteModel(_blob("float"), num_threads=-2),
         r"`num_threads`.*Received: num_threads=-2"),
    Case("lite_predict_empty", lambda _: LiteModel(_blob("float")),
         lambda lite: lite.predict(np.zeros((0, 4), "float32")),
         r"`x`.*Received: x\.shape=\(0, 4\)"),
    Case("lite_latency_zero_runs", lambda _: LiteModel(_blob("float")),
         lambda lite: lite.latency(runs=0), r"`runs`.*Received: runs=0"),
    Case("lite_latency_negative_warmup", lambda _: LiteModel(_blob("float")),
         lambda lite: lite.latency(warmup=-1), r"`warmup`.*Received: warmup=-1"),
    Case("lite_int8_predict_nan", lambda _: LiteModel(_blob("int8")),
         lambda lite: lite.predict(np.full((2, 4), np.nan, "float32")),
         r"`x`.*finite.*Received: x with 8 non-finite values"),
    Case("lite_int8_io_predict_inf", lambda _: LiteModel(_blob("int8_io")),
         lambda lite: lite.predict(np.where(np.eye(2, 4) > 0, np.inf, 0.5).astype("float32")),
         r"`x`.*finite.*Received: x with 2 non-finite values"),
    # ------------------------------------------------------------ report
    Case("report_x_does_not_fit_model", lambda _: {"m": _mlp()},
         lambda models: compression_report(models, np.zeros((4, 5), "float32"), np.zeros(4)),
         r"`x`.*\(N, 4\).*models\['m'\].*Received: x\.shape=\(4, 5\)"),
    Case("report_x_does_not_fit_tflite_file", lambda _: {"f": _blob("float")},
         lambda models: compression_report(models, np.zeros((4, 3), "float32"), np.zeros(4)),
         r"`x`.*\(N, 4\).*models\['f'\].*Received: x\.shape=\(4, 3\)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_before_any_change(case, tmp_path):
    obj = case.make(tmp_path)
    before = _snapshot(obj)
    with pytest.raises(case.error) as info:
        case.call(obj)
    message = str(info.value)
    assert "Received:" in message
    assert re.search(case.match, message, flags=re.DOTALL), message
    assert _same(_snapshot(obj), before)


def test_numpy_scalars_are_accepted_where_python_numbers_are():
    pca = PCA(np.float32(0.9))
    pca.adapt(_X)
    assert isinstance(pca.n_components, float)
    json.dumps(pca.get_config())
    assert PCA(np.int64(2)).n_components == 2
    rbm = RBM(np.int64(3), seed=np.int64(1), sparsity_target=np.float32(0.1),
              sparsity_cost=np.float64(0.5))
    json.dumps({k: rbm.get_config()[k] for k in ("seed", "sparsity_target", "sparsity_cost")})
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8)])
    assert low_rank(model, energy=np.float32(0.5)).count_params() < model.count_params()


def test_finite_input_still_runs_and_float_files_pass_nan_through():
    assert np.isfinite(LiteModel(_blob("int8")).predict(_X)).all()
    assert np.isnan(LiteModel(_blob("float")).predict(np.full((1, 4), np.nan, "float32"))).all()
    assert LiteModel(_blob("float"), num_threads=np.int64(1)).latency(runs=1, warmup=0) > 0


def test_distiller_accepts_free_input_dimensions():
    teacher = keras.Sequential(
        [keras.Input((None, 4)), keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(3)]
    )
    student = keras.Sequential([keras.Input((6, 4)), keras.layers.Flatten(), keras.layers.Dense(3)])
    assert Distiller(student=student, teacher=teacher).teacher is teacher

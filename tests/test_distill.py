"""Distiller: loss maths against hand-worked and NumPy values, training, serialization."""

import math
import warnings

import keras
import numpy as np
import pytest
from conftest import small_mlp

import tfcompress as tfc

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _kl_fn(p, q):
    return keras.ops.sum(p * keras.ops.log(p / q), axis=-1)


KL_FORMS = {
    "instance": keras.losses.KLDivergence(),
    "string": "kl_divergence",
    # A class name: keras.losses.get returns a batch-reducing Loss instance, whose
    # per-sample values must still be used (sample weights were ignored).
    "class_name": "KLDivergence",
    "function": _kl_fn,
}


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _np_loss(t_logits, s_logits, y, alpha, temperature, sample_weight=None):
    """Reference: alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))."""
    t_logits, s_logits = t_logits.astype("float64"), s_logits.astype("float64")
    w = np.ones(len(y)) if sample_weight is None else sample_weight
    p, q = _softmax(t_logits / temperature), _softmax(s_logits / temperature)
    kl = (p * np.log(p / q)).sum(-1)
    ce = -np.log(_softmax(s_logits)[np.arange(len(y)), y])
    distill = temperature**2 * np.mean(kl * w)
    student = np.mean(ce * w)
    return alpha * student + (1 - alpha) * distill, student, distill


def _constant_model(logits, name):
    """Model of one input feature whose output is `logits` for x = 1."""
    return keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(
                len(logits),
                kernel_initializer="zeros",
                bias_initializer=keras.initializers.Constant(logits),
            ),
        ],
        name=name,
    )


@pytest.mark.parametrize("form", sorted(KL_FORMS))
@pytest.mark.parametrize("fed", [False, True], ids=["teacher_model", "fed_logits"])
def test_hand_worked_kl_times_t_squared(form, fed):
    # T = 2, teacher logits (2 ln 3, 0) -> softened (3/4, 1/4); student (0, 0) -> (1/2, 1/2).
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308121; times T^2 = 0.5232486.
    t_logits = [2 * math.log(3.0), 0.0]
    student = _constant_model([0.0, 0.0], "student")
    teacher = None if fed else _constant_model(t_logits, "teacher")
    d = tfc.Distiller(student=student, teacher=teacher)
    d.compile(distillation_loss_fn=KL_FORMS[form], alpha=0.0, temperature=2.0)
    x = np.ones((1, 1), "float32")
    y = {"teacher": np.array([t_logits], "float32")} if fed else None
    loss = d.compute_loss(x, y, d(x))
    assert float(loss) == pytest.approx(0.5232486, abs=1e-5)
    assert float(d.distillation_loss_tracker.result()) == pytest.approx(0.5232486, abs=1e-5)


@pytest.mark.parametrize("form", sorted(KL_FORMS))
def test_loss_matches_numpy(form):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 64)).astype("float32")
    y = rng.integers(0, 10, 16).astype("int32")
    w = rng.uniform(0.2, 2.0, 16).astype("float32")
    teacher, student = small_mlp(hidden=(32,), seed=1), small_mlp(hidden=(8,), seed=2)
    d = tfc.Distiller(student=student, teacher=teacher)
    d.compile(student_loss_fn=SCCE, distillation_loss_fn=KL_FORMS[form], alpha=0.3,
              temperature=4.0)
    t_np, s_np = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    expected, exp_student, exp_distill = _np_loss(t_np, s_np, y, 0.3, 4.0, w)
    loss = d.compute_loss(x, y, d(x), sample_weight=w)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert float(d.student_loss_tracker.result()) == pytest.approx(exp_student, rel=1e-4)
    assert float(d.distillation_loss_tracker.result()) == pytest.approx(exp_distill, rel=1e-4)


def test_student_loss_by_class_name_applies_sample_weights():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 64)).astype("float32")
    y = rng.integers(0, 10, 16).astype("int32")
    w = rng.uniform(0.2, 2.0, 16).astype("float32")
    teacher, student = small_mlp(hidden=(32,), seed=1), small_mlp(hidden=(8,), seed=2)
    student = keras.Model(student.inputs, keras.layers.Softmax()(student.outputs[0]))
    d = tfc.Distiller(student=student, teacher=teacher, student_output="probabilities")
    d.compile(student_loss_fn="SparseCategoricalCrossentropy", alpha=1.0)
    d.compute_loss(x, y, d(x), sample_weight=w)
    probs = student.predict(x, verbose=0).astype("float64")
    expected = np.mean(-np.log(probs[np.arange(16), y]) * w)
    assert float(d.student_loss_tracker.result()) == pytest.approx(expected, rel=1e-4)


def test_probability_teacher_equals_logit_teacher():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 64)).astype("float32")
    logit_teacher = small_mlp(hidden=(16,), seed=3)
    prob_teacher = keras.Sequential([logit_teacher, keras.layers.Softmax()])
    student = small_mlp(hidden=(8,), seed=4)
    losses = []
    for teacher, kind in ((logit_teacher, "logits"), (prob_teacher, "probabilities")):
        d = tfc.Distiller(student=student, teacher=teacher, teacher_output=kind)
        d.compile(alpha=0.0, temperature=2.5)
        losses.append(float(d.compute_loss(x, None, d(x))))
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_probability_student():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 64)).astype("float32")
    teacher, logit_student = small_mlp(hidden=(16,), seed=3), small_mlp(hidden=(8,), seed=4)
    prob_student = keras.Model(
        logit_student.inputs, keras.layers.Softmax()(logit_student.outputs[0])
    )
    expected = _np_loss(teacher.predict(x, verbose=0), logit_student.predict(x, verbose=0),
                        np.zeros(12, "int32"), 0.0, 2.0)[0]
    d = tfc.Distiller(student=prob_student, teacher=teacher, student_output="probabilities")
    d.compile(alpha=0.0, temperature=2.0)
    assert float(d.compute_loss(x, None, d(x))) == pytest.approx(expected, rel=1e-4)


def test_fit_trains_student_only_and_logs_metrics(digits):
    (x, y), _ = digits
    x, y = x[:256], y[:256]
    teacher = small_mlp(hidden=(32,), seed=1)
    teacher.trainable = True
    before = [w.copy() for w in teacher.get_weights()]
    student = small_mlp(hidden=(8,), seed=2)
    s_before = [w.copy() for w in student.get_weights()]
    d = tfc.Distiller(student=student, teacher=teacher)
    assert not teacher.trainable
    assert len(d.trainable_weights) == len(student.trainable_weights)
    d.compile(optimizer="adam", metrics=["accuracy"], student_loss_fn=SCCE,
              distillation_loss_fn=keras.losses.KLDivergence(), alpha=0.1, temperature=3)
    history = d.fit(x, y, batch_size=64, epochs=2, verbose=0).history
    assert set(history) == {"loss", "student_loss", "distillation_loss", "accuracy"}
    for after, orig in zip(teacher.get_weights(), before):
        np.testing.assert_array_equal(after, orig)
    assert any(not np.allclose(a, b) for a, b in zip(student.get_weights(), s_before))
    # The logged total is alpha * student + (1 - alpha) * distillation, per batch and so on average.
    logs = d.evaluate(x, y, batch_size=256, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(
        0.1 * logs["student_loss"] + 0.9 * logs["distillation_loss"], rel=1e-5
    )
    expected = _np_loss(teacher.predict(x, verbose=0), student.predict(x, verbose=0), y, 0.1, 3)
    assert logs["loss"] == pytest.approx(expected[0], rel=1e-4)
    assert logs["accuracy"] == pytest.approx(
        np.mean(student.predict(x, verbose=0).argmax(-1) == y), abs=1e-6
    )


def test_fed_teacher_outputs_match_teacher_model(digits):
    (x, y), _ = digits
    x, y = x[:128], y[:128]
    teacher = small_mlp(hidden=(32,), seed=1)
    weights = []
    for fed in (False, True):
        student = small_mlp(hidden=(8,), seed=2)
        d = tfc.Distiller(student=student, teacher=None if fed else teacher)
        d.compile(optimizer=keras.optimizers.SGD(0.1), student_loss_fn=SCCE, alpha=0.5)
        target = {"labels": y, "teacher": teacher.predict(x, verbose=0)} if fed else y
        d.fit(x, target, batch_size=32, epochs=1, shuffle=False, verbose=0)
        weights.append(student.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_pure_distillation_without_labels(digits):
    (x, _), _ = digits
    x = x[:256]
    teacher = small_mlp(hidden=(32,), seed=1)
    student = small_mlp(hidden=(16,), seed=2)
    d = tfc.Distiller(student=student, teacher=teacher)
    d.compile(optimizer=keras.optimizers.Adam(0.01), metrics=["accuracy"], alpha=0.5,
              temperature=1.0)
    history = d.fit(x, batch_size=64, epochs=8, verbose=0).history
    assert "accuracy" not in history
    assert history["distillation_loss"][-1] < 0.5 * history["distillation_loss"][0]
    agreement = np.mean(
        student.predict(x, verbose=0).argmax(-1) == teacher.predict(x, verbose=0).argmax(-1)
    )
    assert agreement > 0.8


def test_student_loss_without_labels_raises():
    d = tfc.Distiller(student=small_mlp(seed=2), teacher=small_mlp(seed=1))
    d.compile(student_loss_fn=SCCE)
    x = np.zeros((4, 64), "float32")
    with pytest.raises(ValueError, match="y=None"):
        d.compute_loss(x, None, d(x))


def test_missing_teacher_outputs_raise():
    d = tfc.Distiller(student=small_mlp(seed=2))
    d.compile()
    x = np.zeros((4, 64), "float32")
    with pytest.raises(ValueError, match="no teacher model"):
        d.compute_loss(x, np.zeros(4, "int32"), d(x))
    with pytest.raises(ValueError, match="keys"):
        d.compute_loss(x, {"label": np.zeros(4, "int32")}, d(x))


def _feature_pair(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(24, activation="relu", name="t_hidden")(inputs)
    teacher = keras.Model(inputs, keras.layers.Dense(10, name="t_out")(h), name="teacher")
    inputs = keras.Input((64,))
    h = keras.layers.Dense(6, activation="relu", name="s_hidden")(inputs)
    student = keras.Model(inputs, keras.layers.Dense(10, name="s_out")(h), name="student")
    return teacher, student


def test_feature_distillation_matches_numpy():
    teacher, student = _feature_pair()
    d = tfc.Distiller(student=student, teacher=teacher, feature_layers=[("t_hidden", "s_hidden")])
    assert d.projections[0].kernel.shape == (6, 24)
    d.compile(alpha=0.0, temperature=2.0, feature_weight=0.5)
    x = np.random.default_rng(0).normal(size=(8, 64)).astype("float32")
    t_feat = keras.Model(teacher.inputs, teacher.get_layer("t_hidden").output).predict(
        x, verbose=0
    )
    s_feat = keras.Model(student.inputs, student.get_layer("s_hidden").output).predict(
        x, verbose=0
    )
    mse = np.mean((s_feat @ d.projections[0].kernel.numpy() - t_feat) ** 2)
    distill = _np_loss(teacher.predict(x, verbose=0), student.predict(x, verbose=0),
                       np.zeros(8, "int32"), 0.0, 2.0)[0]
    loss = d.compute_loss(x, None, d(x))
    assert float(d.feature_loss_tracker.result()) == pytest.approx(mse, rel=1e-4)
    assert float(loss) == pytest.approx(distill + 0.5 * mse, rel=1e-4)


def test_feature_distillation_trains_projection(digits):
    (x, y), _ = digits
    teacher, student = _feature_pair()
    d = tfc.Distiller(student=student, teacher=teacher, feature_layers=[("t_hidden", "s_hidden")])
    d.compile(optimizer=keras.optimizers.Adam(0.01), student_loss_fn=SCCE)
    assert len(d.trainable_weights) == len(student.trainable_weights) + 1
    kernel = d.projections[0].kernel.numpy().copy()
    history = d.fit(x[:256], y[:256], batch_size=64, epochs=3, verbose=0).history
    assert "feature_loss" in history
    assert history["feature_loss"][-1] < history["feature_loss"][0]
    assert not np.allclose(kernel, d.projections[0].kernel.numpy())


def test_feature_projection_modes():
    teacher, student = _feature_pair()
    pairs = [("t_hidden", "s_hidden")]
    with pytest.raises(ValueError, match="projection=None"):
        tfc.Distiller(student=student, teacher=teacher, feature_layers=pairs, projection=None)
    same = tfc.Distiller(student=student, teacher=teacher, feature_layers=[("t_out", "s_out")])
    assert same.projections == [None]
    dense = tfc.Distiller(student=student, teacher=teacher, feature_layers=[("t_out", "s_out")],
                          projection="dense")
    assert dense.projections[0].kernel.shape == (10, 10)


def test_feature_distillation_bad_input():
    teacher, student = _feature_pair()
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        tfc.Distiller(student=student, teacher=teacher, feature_layers=[("nope", "s_hidden")])
    with pytest.raises(ValueError, match="feature_layers="):
        tfc.Distiller(student=student, teacher=teacher, feature_layers=["t_hidden"])
    with pytest.raises(ValueError, match="needs a teacher model"):
        tfc.Distiller(student=student, feature_layers=[("t_hidden", "s_hidden")])
    with pytest.raises(ValueError, match="projection="):
        tfc.Distiller(student=student, teacher=teacher, projection="conv")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": -0.1}, "alpha=-0.1"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"alpha": "0.5"}, "alpha=0.5"),
        ({"temperature": 0}, "temperature=0"),
        ({"temperature": -2.0}, "temperature=-2.0"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"feature_weight": -1.0}, "feature_weight=-1.0"),
        ({"loss": "mse"}, "loss='mse'"),
        ({"student_loss_fn": "not_a_loss"}, "student_loss_fn='not_a_loss'"),
        ({"student_loss_fn": "sparse_categorical_crossentropy"}, "from_logits=True"),
        ({"student_loss_fn": "CategoricalCrossentropy"}, "='CategoricalCrossentropy'"),
        ({"distillation_loss_fn": 3}, "distillation_loss_fn=3"),
        ({"distillation_loss_fn": None}, "distillation_loss_fn=None"),
        ({"distillation_loss_fn": keras.losses.KLDivergence(reduction="sum")}, "reduction='sum'"),
    ],
)
def test_compile_bad_input(kwargs, match):
    d = tfc.Distiller(student=small_mlp(seed=2), teacher=small_mlp(seed=1))
    with pytest.raises(ValueError, match=match):
        d.compile(**kwargs)
    assert not d.compiled and d.alpha == 0.1 and d.temperature == 3.0


def test_constructor_bad_input():
    teacher = small_mlp(seed=1)
    with pytest.raises(ValueError, match="output shape"):
        tfc.Distiller(student=small_mlp(classes=5, seed=2), teacher=teacher)
    with pytest.raises(ValueError, match="student="):
        tfc.Distiller(student=keras.layers.Dense(3), teacher=teacher)
    with pytest.raises(ValueError, match="teacher="):
        tfc.Distiller(student=small_mlp(seed=2), teacher="big_model")
    with pytest.raises(ValueError, match="teacher_output='soft'"):
        tfc.Distiller(student=small_mlp(seed=2), teacher=teacher, teacher_output="soft")
    softmax_teacher = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(10, activation="softmax")]
    )
    with pytest.raises(ValueError, match="teacher_output='logits'"):
        tfc.Distiller(student=small_mlp(seed=2), teacher=softmax_teacher)
    with pytest.raises(ValueError, match="teacher_output='probabilities'"):
        tfc.Distiller(student=small_mlp(seed=2), teacher=teacher, teacher_output="probabilities")
    with pytest.raises(ValueError, match="student_output='logits'"):
        tfc.Distiller(student=softmax_teacher, teacher=teacher)
    assert teacher.trainable  # nothing changed before the errors


class _SubclassedStudent(keras.Model):
    def __init__(self, classes=10, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.out = keras.layers.Dense(classes)

    def call(self, x):
        return self.out(self.hidden(x))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


def test_subclassed_student(digits):
    (x, y), _ = digits
    student = _SubclassedStudent()
    d = tfc.Distiller(student=student, teacher=small_mlp(seed=1))
    d.compile(student_loss_fn=SCCE)
    d.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    assert student.built and d.predict(x[:4], verbose=0).shape == (4, 10)
    wrong = tfc.Distiller(student=_SubclassedStudent(classes=5), teacher=small_mlp(seed=1))
    wrong.compile()
    with pytest.raises(ValueError, match="output shape"):
        wrong.compute_loss(x[:4], None, wrong(x[:4]))
    # The model kind is checked before any layer name (layer names depend on test order).
    teacher = small_mlp(seed=1)
    for t_name in (teacher.layers[0].name, "no_such_layer"):
        with pytest.raises(ValueError, match="Functional or Sequential student"):
            tfc.Distiller(student=_SubclassedStudent(), teacher=teacher,
                          feature_layers=[(t_name, "dense")])
    with pytest.raises(ValueError, match="Functional or Sequential teacher"):
        tfc.Distiller(student=small_mlp(seed=2), teacher=_SubclassedStudent(),
                      feature_layers=[("dense", teacher.layers[0].name)])
    assert teacher.trainable  # nothing changed before the errors


def test_get_config_round_trip():
    teacher, student = _feature_pair()
    d = tfc.Distiller(student=student, teacher=teacher, teacher_output="logits",
                      feature_layers=[("t_hidden", "s_hidden")], projection="dense",
                      name="my_distiller")
    config = d.get_config()
    clone = tfc.Distiller.from_config(config)
    assert clone.get_config() == config
    assert clone.feature_layers == (("t_hidden", "s_hidden"),)
    assert clone.projection == "dense" and clone.name == "my_distiller"
    assert not clone.teacher.trainable


@pytest.mark.slow
def test_keras_round_trip(tmp_path, digits):
    # A fresh process that imports only tfcompress reloads a Distiller in test_multiworker.py.
    (x, y), _ = digits
    teacher, student = _feature_pair()
    teacher.compile("adam", SCCE)  # a trained teacher carries its own optimizer state
    teacher.fit(x[:64], y[:64], batch_size=64, epochs=1, verbose=0)
    d = tfc.Distiller(student=student, teacher=teacher, feature_layers=[("t_hidden", "s_hidden")])
    d.compile(optimizer="adam", metrics=["accuracy"], student_loss_fn=SCCE,
              distillation_loss_fn=keras.losses.KLDivergence(), alpha=0.25, temperature=5,
              feature_weight=0.3)
    d.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0)
    d.save(tmp_path / "distiller.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Skipping variable loading for optimizer"
        clone = keras.saving.load_model(tmp_path / "distiller.keras")
    assert type(clone) is tfc.Distiller
    assert (clone.alpha, clone.temperature, clone.feature_weight) == (0.25, 5.0, 0.3)
    assert isinstance(clone.distillation_loss_fn, keras.losses.KLDivergence)
    assert not clone.teacher.trainable
    for a, b in zip(clone.weights, d.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(clone.predict(x[:64], verbose=0), d.predict(x[:64], verbose=0),
                               atol=1e-6)
    logs = d.evaluate(x[:64], y[:64], verbose=0, return_dict=True)
    clone_logs = clone.evaluate(x[:64], y[:64], verbose=0, return_dict=True)
    assert set(clone_logs) == {"loss", "student_loss", "distillation_loss", "feature_loss",
                               "accuracy"}
    for key, value in logs.items():
        assert clone_logs[key] == pytest.approx(value, rel=1e-5)
    # Training resumes with the restored optimizer state.
    assert len(clone.optimizer.variables) == len(d.optimizer.variables)
    for a, b in zip(clone.optimizer.variables, d.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_teacherless_round_trip(tmp_path, digits):
    (x, y), _ = digits
    teacher = small_mlp(hidden=(32,), seed=1)
    d = tfc.Distiller(student=small_mlp(seed=2))
    d.compile(student_loss_fn=SCCE, alpha=0.5, temperature=2.0)
    target = {"labels": y[:64], "teacher": teacher.predict(x[:64], verbose=0)}
    d.fit(x[:64], target, batch_size=32, verbose=0)
    d.save(tmp_path / "d.keras")
    clone = keras.saving.load_model(tmp_path / "d.keras")
    assert clone.teacher is None and (clone.alpha, clone.temperature) == (0.5, 2.0)
    np.testing.assert_allclose(clone.predict(x[:8], verbose=0), d.predict(x[:8], verbose=0),
                               atol=1e-6)
    loss = clone.evaluate(x[:64], target, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(d.evaluate(x[:64], target, verbose=0, return_dict=True)["loss"],
                                 rel=1e-5)


@pytest.mark.slow
def test_student_exports_alone(tmp_path, digits):
    (x, y), (x_te, _) = digits
    d = tfc.Distiller(student=small_mlp(hidden=(16,), seed=2), teacher=small_mlp(seed=1))
    d.compile(student_loss_fn=SCCE)
    d.fit(x[:256], y[:256], batch_size=64, epochs=2, verbose=0)
    expected = d.student.predict(x_te, verbose=0)
    float_lite = tfc.export.LiteModel(tfc.export.to_tflite(d.student, tmp_path / "s.tflite"))
    np.testing.assert_allclose(float_lite.predict(x_te), expected, atol=1e-4)
    int8 = tfc.export.to_tflite(d.student, tmp_path / "s_int8.tflite", quantization="int8",
                                representative_data=x[:200])
    lite = tfc.export.LiteModel(int8)
    assert lite.is_fully_int8()
    agree = np.mean(lite.predict(x_te).argmax(-1) == expected.argmax(-1))
    assert agree > 0.95

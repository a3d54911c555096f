"""Pruning schedules against tfmot's own schedule objects and the formula."""

import keras
import numpy as np
import pytest
from conftest import run_reference

from tfcompress.pruning import schedules
from tfcompress.pruning.schedules import ConstantSparsity, PolynomialDecay

POLY_GRID = [
    dict(
        initial_sparsity=0.0, final_sparsity=0.8, begin_step=0, end_step=100, power=3, frequency=10
    ),
    dict(initial_sparsity=0.2, final_sparsity=0.9, begin_step=7, end_step=53, power=1, frequency=4),
    dict(initial_sparsity=0.5, final_sparsity=0.5, begin_step=3, end_step=20, power=2, frequency=1),
    dict(
        initial_sparsity=0.1,
        final_sparsity=0.75,
        begin_step=10,
        end_step=95,
        power=0.5,
        frequency=7,
    ),
]
CONST_GRID = [
    dict(target_sparsity=0.5, begin_step=0, end_step=-1, frequency=100),
    dict(target_sparsity=0.3, begin_step=5, end_step=42, frequency=6),
    dict(target_sparsity=0.0, begin_step=2, end_step=30, frequency=3),
]
STEPS = list(range(0, 130))


@pytest.fixture(scope="module")
def tfmot_values():
    code = f"""
    import json
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    S = tfmot.sparsity.keras
    steps = tf.constant({STEPS!r}, tf.int64)  # tfmot's schedules are elementwise tf ops

    def values(s):
        should, sparsity = (np.broadcast_to(v.numpy(), steps.shape) for v in s(steps))
        return [[bool(a), float(b)] for a, b in zip(should, sparsity)]

    out = {{"poly": [], "const": [], "config": None}}
    for kw in {POLY_GRID!r}:
        out["poly"].append(values(S.PolynomialDecay(**kw)))
    for kw in {CONST_GRID!r}:
        out["const"].append(values(S.ConstantSparsity(**kw)))
    out["config"] = S.PolynomialDecay(**{POLY_GRID[1]!r}).get_config()
    print(json.dumps(out))
    """
    return run_reference(code)


def _ours(schedule):
    should, sparsity = schedule(np.array(STEPS))
    sparsity = np.broadcast_to(keras.ops.convert_to_numpy(sparsity), (len(STEPS),))
    return list(zip(keras.ops.convert_to_numpy(should).tolist(), sparsity.tolist()))


@pytest.mark.slow
@pytest.mark.parametrize(
    "cls,grid,key", [(PolynomialDecay, POLY_GRID, "poly"), (ConstantSparsity, CONST_GRID, "const")]
)
def test_schedules_match_tfmot(tfmot_values, cls, grid, key):
    for kw, theirs in zip(grid, tfmot_values[key]):
        ours = _ours(cls(**kw))
        np.testing.assert_allclose([o[1] for o in ours], [t[1] for t in theirs], atol=1e-6)
        for step, (o, t) in zip(STEPS, zip(ours, theirs)):
            # The one intended difference: tfcompress always prunes at end_step.
            assert o[0] == (t[0] or step == kw["end_step"]), (kw, step)


def test_tfmot_misses_end_step_where_ours_prunes(tfmot_values):
    # Grid entry 1: (53 - 7) % 4 != 0, so tfmot never updates at end_step.
    theirs = tfmot_values["poly"][1]
    assert not theirs[53][0] and theirs[53][1] == pytest.approx(0.9)
    assert bool(PolynomialDecay(**POLY_GRID[1])(53)[0])


def test_polynomial_formula_numpy_reference():
    s = PolynomialDecay(0.1, 0.7, begin_step=10, end_step=60, power=3, frequency=5)
    for t in (0, 10, 22, 35, 59, 60, 100):
        p = np.clip((t - 10) / 50, 0, 1)
        assert float(s(t)[1]) == pytest.approx(0.7 + (0.1 - 0.7) * (1 - p) ** 3, abs=1e-7)


@pytest.mark.parametrize(
    "schedule",
    [
        PolynomialDecay(0.0, 0.8, begin_step=3, end_step=23, frequency=5),
        PolynomialDecay(0.0, 0.6, begin_step=5, end_step=5, frequency=3),
        ConstantSparsity(0.5, begin_step=4, frequency=7),
        ConstantSparsity(0.5, begin_step=0, end_step=9, frequency=4),
    ],
)
def test_last_turn_is_the_latest_should_prune_step(schedule):
    steps = np.arange(40)
    turns = [t for t in steps if bool(schedule.should_prune(t))]
    expected = [max([t for t in turns if t <= step], default=-1) for step in steps]
    assert keras.ops.convert_to_numpy(schedule.last_turn(steps)).tolist() == expected


def test_begin_equals_end_is_one_shot():
    s = PolynomialDecay(0.0, 0.6, begin_step=5, end_step=5, frequency=3)
    assert [bool(s(t)[0]) for t in (4, 5, 6, 8)] == [False, True, False, False]
    assert [float(s(t)[1]) for t in (4, 5, 9)] == pytest.approx([0.0, 0.6, 0.6])


def test_tfmot_config_converts(tfmot_values):
    class PolynomialDecayStandIn:
        def __init__(self, config):
            self.config = config

        def get_config(self):
            return self.config

        def __call__(self, step):
            raise AssertionError("converted, not called")

    PolynomialDecayStandIn.__name__ = "PolynomialDecay"
    converted = schedules.get(PolynomialDecayStandIn(tfmot_values["config"]))
    assert isinstance(converted, PolynomialDecay)
    assert converted.get_config() == {k: v for k, v in POLY_GRID[1].items()}


def test_duck_typed_schedule_is_used_as_is():
    def every_third(step):
        return step % 3 == 0, 0.25

    assert schedules.get(every_third) is every_third


@pytest.mark.parametrize(
    "cls,kw", [(PolynomialDecay, POLY_GRID[1]), (ConstantSparsity, CONST_GRID[1])]
)
def test_serialization_round_trip(cls, kw):
    s = cls(**kw)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert type(again) is cls and again.get_config() == s.get_config()
    assert _ours(again) == _ours(s)


BAD = [
    (
        PolynomialDecay,
        dict(initial_sparsity=-0.1, final_sparsity=0.5, begin_step=0, end_step=10),
        "initial_sparsity",
    ),
    (
        PolynomialDecay,
        dict(initial_sparsity=0.0, final_sparsity=1.0, begin_step=0, end_step=10),
        "final_sparsity",
    ),
    (
        PolynomialDecay,
        dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=10, end_step=5),
        "end_step",
    ),
    (
        PolynomialDecay,
        dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10, frequency=0),
        "frequency",
    ),
    (
        PolynomialDecay,
        dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=-1, end_step=10),
        "begin_step",
    ),
    (
        PolynomialDecay,
        dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=10, power=0),
        "power",
    ),
    (
        PolynomialDecay,
        dict(initial_sparsity=0.0, final_sparsity=0.5, begin_step=0, end_step=-1),
        "end_step",
    ),
    (ConstantSparsity, dict(target_sparsity=1.0, begin_step=0), "target_sparsity"),
    (ConstantSparsity, dict(target_sparsity=0.5, begin_step=4, end_step=2), "end_step"),
    (ConstantSparsity, dict(target_sparsity=0.5, begin_step=0, frequency=0), "frequency"),
]


def test_bad_input():
    for cls, kw, arg in BAD:
        with pytest.raises(ValueError, match=f"Received: {arg}="):
            cls(**kw)


def test_not_a_schedule():
    with pytest.raises(ValueError, match="Received: pruning_schedule="):
        schedules.get(0.5)

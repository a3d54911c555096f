import numpy as np
import pytest

import tfcompress as tfc


def test_digits_shapes_range_and_labels(digits, digits_image):
    (x, y), (xt, yt) = digits
    assert x.shape == (len(y), 64) and xt.shape == (len(yt), 64)
    assert len(y) + len(yt) == 1797
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    (xi, yi), _ = digits_image
    assert xi.shape == (len(y), 8, 8, 1)
    np.testing.assert_array_equal(xi.reshape(len(xi), 64), x)
    np.testing.assert_array_equal(yi, y)


def test_split_is_stratified_disjoint_and_seeded():
    from sklearn.datasets import load_digits

    raw = load_digits()
    (x, y), (xt, yt) = tfc.datasets.load_digits(test_size=0.2, seed=0)
    for label in range(10):
        n = np.sum(raw.target == label)
        assert abs(np.sum(yt == label) - 0.2 * n) <= 0.5
    rows = {r.tobytes() for r in (raw.data / 16.0).astype("float32")}
    assert {r.tobytes() for r in x} | {r.tobytes() for r in xt} <= rows
    again = tfc.datasets.load_digits(test_size=0.2, seed=0)
    np.testing.assert_array_equal(again[1][0], xt)
    other = tfc.datasets.load_digits(test_size=0.2, seed=1)
    assert not np.array_equal(other[1][0], xt)


@pytest.mark.parametrize(
    "kwargs, name", [({"test_size": 1.0}, "test_size"), ({"shape": "cube"}, "shape")]
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        tfc.datasets.load_digits(**kwargs)


def test_upscaled_rgb_digits_match_tensorflow_bilinear_resize():
    import tensorflow as tf

    (x8, y8), _ = tfc.datasets.load_digits(shape="image")
    (x, y), (xt, _) = tfc.datasets.load_digits(shape="image", size=32, channels=3)
    assert x.shape == (len(x8), 32, 32, 3) and xt.shape[1:] == (32, 32, 3)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(y, y8)
    reference = tf.image.resize(x8, (32, 32), method="bilinear").numpy()
    np.testing.assert_allclose(x[..., :1], reference, atol=1e-5)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"shape": "image", "size": 4}, "size"),
        ({"shape": "image", "size": 32.0}, "size"),
        ({"shape": "image", "channels": 2}, "channels"),
        ({"size": 32}, "shape"),
    ],
)
def test_bad_image_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"Received: {name}="):
        tfc.datasets.load_digits(**kwargs)


def test_sequence_digits_are_the_rows_in_order():
    (x, y), (xt, yt) = tfc.datasets.load_digits(shape="sequence")
    (flat, flat_y), (flat_t, _) = tfc.datasets.load_digits()
    assert x.shape == (len(flat), 8, 8) and xt.shape[1:] == (8, 8)
    np.testing.assert_array_equal(x[:, 2], flat[:, 16:24])  # step 2 is the third row
    np.testing.assert_array_equal(y, flat_y)
    with pytest.raises(ValueError, match="only apply to shape='image'"):
        tfc.datasets.load_digits(shape="sequence", size=16)

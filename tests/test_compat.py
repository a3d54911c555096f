"""Every private Keras/TensorFlow symbol that tfcompress relies on still exists.

`tfcompress._compat.REQUIRED` lists them; each is one test, named after the
symbol, so a Keras or TensorFlow upgrade that moves one names it here.
"""

import pytest

from tfcompress import _compat


@pytest.mark.parametrize(
    "description, check", _compat.REQUIRED, ids=[description for description, _ in _compat.REQUIRED]
)
def test_required_symbol(description, check):
    try:
        check()
    except Exception as e:  # any failure means the symbol is gone or changed
        pytest.fail(
            f"the installed Keras/TensorFlow lacks {description} ({type(e).__name__}: {e}); "
            "update tfcompress/_compat.py",
            pytrace=False,
        )


def test_required_names_are_unique():
    descriptions = [description for description, _ in _compat.REQUIRED]
    assert len(descriptions) == len(set(descriptions))

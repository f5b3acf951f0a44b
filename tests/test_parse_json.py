"""The worker's JSON body parser: exactly ``json.loads``, faster."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.base import parse_json

_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)


def _same(a: object, b: object) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) and type(a) is type(b)


@given(_VALUES)
def test_any_json_value_parses_as_the_standard_library_parses_it(value):
    data = json.dumps(value).encode()
    assert _same(parse_json(data), json.loads(data))


@given(
    st.binary(max_size=60)
    | st.text(alphabet='0123456789.eE+-[]{},":tfn ', max_size=60).map(str.encode)
)
def test_any_bytes_give_the_same_value_or_both_fail(data):
    try:
        expected = json.loads(data)
    except (ValueError, RecursionError):
        with pytest.raises((ValueError, RecursionError)):
            parse_json(data)
        return
    got = parse_json(data)
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got)
    else:
        assert _same(got, expected)


@pytest.mark.parametrize(
    "text",
    [
        "[-9223372036854775809, 18446744073709551616]",  # beyond 64 bits: exact integers
        "[0.00123456789012345678901, 1.5e-1234567890123456789]",  # long digits inside floats
        '{"a": NaN, "b": Infinity}',  # what orjson refuses
        '{"a": 1, "a": 2}',
    ],
)
def test_the_cases_orjson_reads_differently(text):
    assert repr(parse_json(text.encode())) == repr(json.loads(text))

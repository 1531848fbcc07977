import json

import pytest

from adapters_store.strict_json import MAX_DEPTH, MAX_INT, MIN_INT, JsonRefused, loads


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("text", [
    '{"a": [1, -2, 3.5, true, null, "x"], "b": {}}',
    str(MAX_INT), str(MIN_INT), "9.2e18", "-9.2e18", "1e-300", "-0.0",
    nested(MAX_DEPTH), '{"a": ' * (MAX_DEPTH - 1) + "{}" + "}" * (MAX_DEPTH - 1),
    '"\\ud83d\\ude00 paired"', '"\\\\ud800 an escaped backslash, not an escape"',
])
def test_what_json_allows_and_graft_can_keep_reads_as_json_loads(text):
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("text, says", [
    ("NaN", "NaN is not a JSON number"),
    ('{"x": [Infinity]}', "Infinity is not a JSON number"),
    ("-Infinity", "-Infinity is not a JSON number"),
    ("1e999", "out of range"),
    ("1e308", "numbers must lie within"),
    ("-1.5e19", "numbers must lie within"),
    (str(MAX_INT + 1), "signed 64 bits"),
    (str(MIN_INT - 1), "signed 64 bits"),
    ("9" * 5000, "signed 64 bits"),  # past int()'s digit limit too
    (nested(MAX_DEPTH + 1), f"deeper than {MAX_DEPTH}"),
    (nested(900), f"deeper than {MAX_DEPTH}"),  # json.loads reads it; the walk refuses it
    (nested(100_000), f"deeper than {MAX_DEPTH}"),  # json.loads raises RecursionError
    ('{"a": ' * MAX_DEPTH + "{}" + "}" * MAX_DEPTH, f"deeper than {MAX_DEPTH}"),
    ('["ok", "\\ud800"]', "unpaired UTF-16 surrogate"),
    ('{"\\udfff": 1}', "unpaired UTF-16 surrogate"),
    ('"\\ude00\\ud83d"', "unpaired UTF-16 surrogate"),  # the wrong order is no pair
])
def test_refused(text, says):
    for data in (text, text.encode()):
        with pytest.raises(JsonRefused, match=says) as info:
            loads(data)
        assert isinstance(info.value, ValueError) and info.value.msg == str(info.value)


def test_bytes_must_be_utf8():
    assert loads('\ufeff{"a": "é"}'.encode()) == {"a": "é"}  # a BOM is allowed
    for data in (b'"\xff"', b'"\xed\xa0\x80"', '{"a": 1}'.encode("utf-16")):  # an encoded surrogate
        with pytest.raises(ValueError):
            loads(data)


def test_syntax_errors_stay_json_decode_errors():
    with pytest.raises(json.JSONDecodeError):
        loads("{not json")

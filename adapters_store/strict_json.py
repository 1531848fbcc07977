"""The one reader of untrusted JSON: request bodies, uploaded adapter_config.json, JSONL records.

Python's json module takes more than RFC 8259 allows and more than graft can keep: NaN and
Infinity (once stored, every answer that serializes them fails), integers of any size (SQL
overflows past 64 bits; numbers of any kind are held to that range), nesting deep enough to exhaust the recursion limit, and unpaired UTF-16
surrogate escapes (not encodable as UTF-8, so neither storable nor returnable), and NUL characters
in strings or keys (PostgreSQL's text cannot hold them; SQLite would, so the two would differ).
Each is refused here with a ValueError, as a syntax error is, before anything reads the value.
"""

import json
import math
import re
from typing import Any

MAX_DEPTH = 64  # arrays and objects inside one another; real bodies and PEFT configs use < 10
MIN_INT, MAX_INT = -(2**63), 2**63 - 1  # what SQL's BIGINT (and SQLite's INTEGER) holds
_MAX_INT_DIGITS = len(str(MIN_INT))
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # \uD800-\uDFFF: paired or not
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUL_ESCAPE = "\\u0000"
NUL_REFUSED = "a string holds a NUL character (\\u0000), which graft does not store"


class JsonRefused(ValueError):
    """JSON that Python's json module reads but graft refuses. `msg`, as json.JSONDecodeError has."""

    def __init__(self, msg: str):
        super().__init__(msg)
        self.msg = msg


def loads(data: str | bytes) -> Any:
    """Parse JSON text (bytes must be UTF-8, with or without a BOM); raises ValueError."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise JsonRefused(f"not UTF-8 text: {exc}") from None
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_int=_int, parse_float=_float)
    except RecursionError:
        raise JsonRefused(f"nested deeper than {MAX_DEPTH} levels") from None
    # A paired escape decodes to one code point; only an unpaired one leaves a surrogate. A NUL can
    # only come from its escape (JSON refuses raw control characters). Strings are walked only then.
    _check_tree(value, strings=_SURROGATE_ESCAPE.search(data) is not None or _NUL_ESCAPE in data)
    return value


def _refuse_constant(name: str) -> None:
    raise JsonRefused(f"{name} is not a JSON number: send a finite number or null")


def _int(literal: str) -> int:
    value = int(literal) if len(literal) <= _MAX_INT_DIGITS else None
    if value is None or not MIN_INT <= value <= MAX_INT:
        shown = literal if len(literal) <= 30 else literal[:27] + "..."
        raise JsonRefused(f"integer {shown} is out of range: integers must fit in signed 64 bits")
    return value


def _float(literal: str) -> float:
    # The integers' range bounds every number: the API documents one range for all of them (JSON
    # Schema cannot tell 1e30 from 10**30), and a number past it has no use in graft.
    value = float(literal)
    if not math.isfinite(value) or not MIN_INT <= value <= MAX_INT:
        raise JsonRefused(f"number {literal[:30]} is out of range: numbers must lie within ±2**63")
    return value


def _check_tree(value: Any, strings: bool) -> None:
    """Depth of every array and object; with `strings`, every string and key for surrogates."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
            if strings:
                stack.extend((key, depth) for key in node)
        elif isinstance(node, list):
            children = node
        else:
            if strings and isinstance(node, str):
                if _SURROGATE.search(node):
                    raise JsonRefused("a string holds an unpaired UTF-16 surrogate (\\ud800-\\udfff): "
                                      "not valid Unicode")
                if "\x00" in node:
                    raise JsonRefused(NUL_REFUSED)
            continue
        if depth > MAX_DEPTH:
            raise JsonRefused(f"nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children
                     if strings or isinstance(child, (dict, list)))

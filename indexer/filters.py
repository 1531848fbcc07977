"""Metadata filters: which documents a domain, an API key or a request may retrieve from.

A filter is a JSON object mapping a metadata key to an allowed value or a non-empty list of
allowed values:

    {"group": ["hr", "all"], "lang": "en"}    means    group in {hr, all} AND lang == en

A document matches when, for every key of the filter, its metadata has that key with an allowed
value; a document whose value is a list matches when any element is allowed (a document tagged
`{"group": ["hr", "finance"]}` is for both groups). A key the document lacks, or holds an object or
null under, matches nothing. Values are strings, numbers or booleans, compared as JSON values:
`true` is not `1`, `1` and `1.0` are the same number, `"1"` is neither.

Filters only narrow. A domain's, a key's and a request's filter apply together as their
intersection (`intersect`, the one place it is computed): on a key several of them name, the
allowed values are those all of them allow; when none is left, nothing matches, never "no filter".

Validation is strict and bounded (`parse`): the error names the offending field.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import WithJsonSchema

from adapters_store.errors import Invalid

MAX_KEYS = 16  # keys in one filter
MAX_VALUES = 256  # allowed values of one key
MAX_KEY_CHARS = 128
MAX_STRING_CHARS = 512  # of one allowed string value

Scalar = str | int | float | bool
# A value as compared: its JSON kind and the value ("s", "hr"), ("n", 1), ("b", True). Python has
# True == 1 and hash(True) == hash(1): the kind keeps them apart.
Token = tuple[str, Scalar]


def token(value: Any) -> Token | None:
    """The comparable form of a metadata value; None for what no filter value equals (null,
    objects, lists, non-finite numbers)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, (int, float)):
        return ("n", value) if math.isfinite(value) else None
    return None


def tokens_of(value: Any) -> list[Token]:
    """The tokens a document's metadata value offers: itself, or each scalar element of a list."""
    if isinstance(value, list):
        return [t for t in map(token, value) if t is not None]
    t = token(value)
    return [] if t is None else [t]


@dataclass(frozen=True)
class MetadataFilter:
    """Immutable and hashable (searchers cache per filter). `terms`: (key, allowed tokens), by key."""
    terms: tuple[tuple[str, frozenset[Token]], ...]

    @property
    def matches_nothing(self) -> bool:
        return any(not allowed for _, allowed in self.terms)

    def matches(self, metadata: Mapping[str, Any] | None) -> bool:
        metadata = metadata or {}
        for key, allowed in self.terms:
            if key not in metadata or allowed.isdisjoint(tokens_of(metadata[key])):
                return False
        return True

    def as_dict(self) -> dict[str, list[Scalar]]:
        """The canonical JSON form: every key with its allowed values as a sorted list."""
        return {key: [value for _, value in sorted(allowed, key=_order)] for key, allowed in self.terms}

    def __str__(self) -> str:
        return str(self.as_dict())


def _order(t: Token) -> tuple:
    kind, value = t
    return (kind, str(value)) if kind != "n" else (kind, "", value)


def parse(value: Any, param: str = "filter") -> MetadataFilter | None:
    """A filter from its JSON form; None for null or `{}` (no constraint). Raises Invalid naming the
    offending field (`filter`, `filter.group`, `filter.group[2]`)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise Invalid(f"{param} must be an object mapping a metadata key to an allowed value or a "
                      f"list of allowed values, e.g. {{\"group\": [\"hr\", \"all\"]}}", param=param)
    if len(value) > MAX_KEYS:
        raise Invalid(f"{param} has {len(value)} keys; at most {MAX_KEYS}", param=param)
    terms = []
    for key, allowed in value.items():
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            raise Invalid(f"{param}: keys must be non-empty strings of at most {MAX_KEY_CHARS} characters",
                          param=param)
        where = f"{param}.{key}"
        if isinstance(allowed, list):
            if not allowed:
                raise Invalid(f"{where}: the list of allowed values is empty (leave the key out, or name "
                              "at least one value)", param=where)
            if len(allowed) > MAX_VALUES:
                raise Invalid(f"{where}: {len(allowed)} allowed values; at most {MAX_VALUES}", param=where)
            tokens = frozenset(_scalar(v, f"{where}[{i}]") for i, v in enumerate(allowed))
        else:
            tokens = frozenset([_scalar(allowed, where)])
        terms.append((key, tokens))
    if not terms:
        return None
    return MetadataFilter(tuple(sorted(terms, key=lambda term: term[0])))


def _scalar(value: Any, param: str) -> Token:
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        raise Invalid(f"{param}: string values are at most {MAX_STRING_CHARS} characters", param=param)
    t = token(value)
    if t is None:
        raise Invalid(f"{param}: an allowed value is a string, a finite number or a boolean "
                      f"(or a list of them), not {_kind(value)}", param=param)
    return t


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list inside the list"
    return type(value).__name__


def intersect(*filters: MetadataFilter | None) -> MetadataFilter | None:
    """What all the filters allow together (None where none is given). A key several of them name
    keeps the values all of them allow, possibly none: then the result matches nothing."""
    return _intersect(f for f in filters if f is not None)


def _intersect(filters: Iterable[MetadataFilter]) -> MetadataFilter | None:
    merged: dict[str, frozenset[Token]] = {}
    seen = False
    for f in filters:
        seen = True
        for key, allowed in f.terms:
            merged[key] = merged[key] & allowed if key in merged else allowed
    if not seen:
        return None
    return MetadataFilter(tuple(sorted(merged.items())))


# A filter's JSON form as an API document states it; a pydantic field typed `JsonFilter` shows it
# (validation stays `parse`'s).
_SCALAR = {"anyOf": [{"type": "string", "maxLength": MAX_STRING_CHARS}, {"type": "number"}, {"type": "boolean"}]}
SCHEMA = {
    "type": "object", "maxProperties": MAX_KEYS,
    "propertyNames": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS},
    "additionalProperties": {"anyOf": [_SCALAR, {"type": "array", "items": _SCALAR, "minItems": 1,
                                                 "maxItems": MAX_VALUES}]},
    "description": "{metadata_key: value | [values]}: a document matches when its metadata has every key "
                   "with an allowed value",
}
JsonFilter = Annotated[dict[str, Any], WithJsonSchema(SCHEMA)]

"""The metadata filter language: validation, matching, intersection."""

import pytest

from adapters_store.errors import Invalid
from indexer import filters
from indexer.filters import MAX_KEYS, MAX_VALUES, intersect, parse


def test_a_filter_is_an_and_of_keys_each_an_or_of_values():
    f = parse({"group": ["hr", "all"], "lang": "en"})
    assert f.as_dict() == {"group": ["all", "hr"], "lang": ["en"]}
    assert f.matches({"group": "hr", "lang": "en", "other": 1})
    assert f.matches({"group": "all", "lang": "en"})
    assert not f.matches({"group": "eng", "lang": "en"})
    assert not f.matches({"group": "hr", "lang": "de"})
    assert not f.matches({"group": "hr"})  # a key the document lacks matches nothing
    assert not f.matches({})
    assert not f.matches(None)


def test_a_document_tagged_with_a_list_matches_when_any_element_is_allowed():
    f = parse({"group": "hr"})
    assert f.matches({"group": ["finance", "hr"]})
    assert not f.matches({"group": ["finance", "eng"]})
    assert not f.matches({"group": []})


def test_values_compare_as_json_values():
    assert parse({"level": 1}).matches({"level": 1.0})
    assert not parse({"level": 1}).matches({"level": True})  # Python has True == 1; JSON does not
    assert not parse({"level": True}).matches({"level": 1})
    assert not parse({"level": 1}).matches({"level": "1"})
    assert parse({"public": False}).matches({"public": False})
    assert not parse({"public": False}).matches({"public": 0})
    for unmatched in (None, {"nested": "hr"}, [["hr"]]):
        assert not parse({"group": "hr"}).matches({"group": unmatched})


def test_no_filter():
    assert parse(None) is None
    assert parse({}) is None
    assert intersect() is None
    assert intersect(None, None) is None


def test_intersection_only_narrows_and_an_empty_one_matches_nothing():
    domain = parse({"group": ["hr", "all"]})
    key = parse({"group": ["hr", "eng"], "lang": "en"})
    both = intersect(domain, None, key)
    assert both.as_dict() == {"group": ["hr"], "lang": ["en"]}
    assert both.matches({"group": "hr", "lang": "en"})
    assert not both.matches({"group": "all", "lang": "en"})

    nothing = intersect(both, parse({"group": "eng"}))
    assert nothing.matches_nothing and nothing.as_dict()["group"] == []
    assert not nothing.matches({"group": ["hr", "eng"], "lang": "en"})
    assert intersect(domain) == domain and not domain.matches_nothing
    # Commutative, and equal filters are equal (searchers cache by filter).
    assert intersect(key, domain) == both
    assert hash(parse({"lang": "en", "group": ["hr"]})) == hash(parse({"group": "hr", "lang": ["en"]}))


@pytest.mark.parametrize("value, param", [
    ([], "filter"),
    ("group=hr", "filter"),
    ({"group": []}, "filter.group"),
    ({"group": None}, "filter.group"),
    ({"group": {"in": ["hr"]}}, "filter.group"),
    ({"group": ["hr", None]}, "filter.group[1]"),
    ({"group": ["hr", ["eng"]]}, "filter.group[1]"),
    ({"group": ["hr", {"a": 1}]}, "filter.group[1]"),
    ({"score": float("nan")}, "filter.score"),
    ({"score": [float("inf")]}, "filter.score[0]"),
    ({"": "x"}, "filter"),
    ({"k" * 129: "x"}, "filter"),
    ({"group": "x" * 513}, "filter.group"),
    ({f"k{i}": "x" for i in range(MAX_KEYS + 1)}, "filter"),
    ({"group": [f"g{i}" for i in range(MAX_VALUES + 1)]}, "filter.group"),
])
def test_invalid_filters_name_the_offending_field(value, param):
    with pytest.raises(Invalid) as raised:
        parse(value)
    assert raised.value.param == param
    assert raised.value.message.startswith(param)


def test_param_prefix_and_limits_accepted():
    with pytest.raises(Invalid) as raised:
        parse({"group": []}, param="retrieval.filter")
    assert raised.value.param == "retrieval.filter.group"
    largest = {f"k{i}": [f"v{j}" for j in range(MAX_VALUES)] for i in range(MAX_KEYS)}
    assert len(parse(largest).terms) == MAX_KEYS


def test_tokens_of_document_values():
    assert filters.tokens_of(["hr", 1, True, None, {"a": 1}]) == [("s", "hr"), ("n", 1), ("b", True)]
    assert filters.tokens_of({"a": 1}) == []
    assert filters.tokens_of(float("nan")) == []

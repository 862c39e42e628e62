"""Mixtures: construction and validation, JSON form, and resolution against a query result."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixplane.errors import MixplaneError, MixtureError
from mixplane.mixture.mixture import Mixture, parse_selector
from mixplane.query.result import QueryResult, build_result

BY = ("language", "source")


def make_result(
    keys: list[tuple[Any, ...]], samples: list[int], by: tuple[str, ...] = BY
) -> QueryResult:
    """A result with one run per component of ``samples[i]`` samples (none when 0)."""
    rows: dict[str, list[int]] = {n: [] for n in ("component", "file_id", "start", "count")}
    start = 0
    for i, n in enumerate(samples):
        if n > 0:
            rows["component"].append(i)
            rows["file_id"].append(0)
            rows["start"].append(start)
            rows["count"].append(n)
            start += n
    runs = pa.table({**rows, "bytes": [10 * n for n in rows["count"]]})
    return build_result(sql="", params=[], by=by, keys=keys, runs=runs, file_fingerprints={})


def sizes_of(result: QueryResult) -> np.ndarray:
    return np.array([c.samples for c in result.components], dtype=np.float64)


def weights_by_selector(mixture: Mixture) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(sel): w for sel, w in mixture.weights}


# -- selectors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("language=en", (("language", "en"),)),
        (" language = en , source=web ", (("language", "en"), ("source", "web"))),
        ("url=a=b", (("url", "a=b"),)),  # split at the first '='
        ({"language": "en"}, (("language", "en"),)),
        ({"flag": True, "n": None, "k": 3}, (("flag", "true"), ("n", "null"), ("k", "3"))),
        ({"flag": False, "x": 0.5}, (("flag", "false"), ("x", "0.5"))),
    ],
)
def test_parse_selector(text: Any, expected: tuple[tuple[str, str], ...]) -> None:
    assert parse_selector(text) == expected


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("language", "invalid selector 'language'; write PROP=VALUE"),
        ("language=", "invalid selector"),
        ("=en", "invalid selector"),
        ("language=en,", "invalid selector"),
        ("", "invalid selector"),
        ("language=en,language=de", "names a property twice"),
        ({}, "empty selector"),
    ],
)
def test_parse_selector_rejects(text: Any, match: str) -> None:
    with pytest.raises(MixtureError, match=match):
        parse_selector(text)


# -- static mixtures ---------------------------------------------------------------------------
def test_static_keeps_weights_and_lists_properties_in_first_use_order() -> None:
    m = Mixture.static({"language=en,source=web": 0.25, "quality=high": 0.5, "source=wiki": 0.25})
    assert m.kind == "static"
    assert m.weights == (
        ((("language", "en"), ("source", "web")), 0.25),
        ((("quality", "high"),), 0.5),
        ((("source", "wiki"),), 0.25),
    )
    assert m.properties == ("language", "source", "quality")


def test_static_accepts_pairs_with_mapping_selectors() -> None:
    m = Mixture.static([({"flag": True}, 0.5), ("flag=false", 0.5)])
    assert m.weights == (((("flag", "true"),), 0.5), ((("flag", "false"),), 0.5))


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"language=en": -0.1, "language=de": 1.1}, r"weight of 'language=en' is -0\.1; .*>= 0"),
        ({"language=en": math.nan, "language=de": 1.0}, r"weight of 'language=en' is nan"),
        ({"language=en": math.inf, "language=de": 1.0}, r"is inf; weights must be finite"),
        ({"language=en": 0.5, "language=de": 0.4}, r"sum to 0\.9, not 1; .*normalize=True"),
        ({"language=en": 0.0, "language=de": 0.0}, r"sum to 0; give at least one positive"),
        (
            [("language=en,source=web", 0.5), ("source=web, language=en", 0.5)],
            r"selector 'source=web,language=en' appears twice",
        ),
        ({"language": 1.0}, r"invalid selector 'language'"),
        ({}, r"needs at least one selector"),
        ([], r"needs at least one selector"),
    ],
)
def test_static_rejects(weights: Any, match: str) -> None:
    with pytest.raises(MixtureError, match=match) as info:
        Mixture.static(weights)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, MixplaneError)


def test_static_normalize_rescales_weights() -> None:
    m = Mixture.static({"language=en": 1, "language=de": 3}, normalize=True)
    assert weights_by_selector(m) == {
        frozenset({("language", "en")}): 0.25,
        frozenset({("language", "de")}): 0.75,
    }
    # within the tolerance no rescaling happens
    m = Mixture.static({"language=en": 0.5, "language=de": 0.5 + 1e-9})
    assert m.weights[1][1] == 0.5 + 1e-9


@settings(max_examples=100, deadline=None)
@given(raw=st.lists(st.floats(0, 1e6), min_size=1, max_size=8).filter(lambda w: sum(w) > 0))
def test_static_normalize_sums_to_one_and_keeps_ratios(raw: list[float]) -> None:
    m = Mixture.static({f"k={i}": w for i, w in enumerate(raw)}, normalize=True)
    weights = [w for _, w in m.weights]
    assert math.isclose(sum(weights), 1.0, rel_tol=1e-9)
    total = sum(raw)
    for w, r in zip(weights, raw, strict=True):
        assert math.isclose(w, r / total, rel_tol=1e-9, abs_tol=1e-15)


# -- hierarchical mixtures ---------------------------------------------------------------------
TREE = {
    "language=en": {"weight": 0.7, "children": {"source=web": 0.5, "source=wiki": 0.5}},
    "language=de": 0.3,
}
FLAT = {
    frozenset({("language", "en"), ("source", "web")}): 0.35,
    frozenset({("language", "en"), ("source", "wiki")}): 0.35,
    frozenset({("language", "de")}): 0.3,
}


def assert_weights(m: Mixture, expected: dict[frozenset[tuple[str, str]], float]) -> None:
    got = weights_by_selector(m)
    assert got.keys() == expected.keys()
    for key, w in expected.items():
        assert got[key] == pytest.approx(w)


def test_hierarchical_flattens_to_products() -> None:
    m = Mixture.hierarchical(TREE)
    assert m.kind == "static"
    assert_weights(m, FLAT)
    assert dict(m.weights)[(("language", "en"), ("source", "web"))] == pytest.approx(0.35)


def test_hierarchical_normalize_rescales_every_level() -> None:
    tree = {
        "language=en": {"weight": 7, "children": {"source=web": 1, "source=wiki": 1}},
        "language=de": 3,
    }
    assert_weights(Mixture.hierarchical(tree, normalize=True), FLAT)


def test_hierarchical_leaf_may_be_a_weight_mapping() -> None:
    m = Mixture.hierarchical({"language=en": {"weight": 0.4}, "language=de": {"weight": 0.6}})
    assert_weights(m, {frozenset({("language", "en")}): 0.4, frozenset({("language", "de")}): 0.6})


@pytest.mark.parametrize(
    ("tree", "match"),
    [
        (
            {
                "language=en": {"weight": 0.7, "children": {"source=web": 0.5, "source=wiki": 0.3}},
                "language=de": 0.3,
            },
            r"weights under 'language=en' sum to 0\.8, not 1; .*normalize=True",
        ),
        ({"language=en": 0.7, "language=de": 0.2}, r"weights under 'the root' sum to 0\.9"),
        ({"language=en": "0.5", "language=de": 0.5}, r"must be a number, got '0\.5'"),
        ({"language=en": True}, r"must be a number, got True"),
    ],
)
def test_hierarchical_rejects(tree: dict[str, Any], match: str) -> None:
    with pytest.raises(MixtureError, match=match):
        Mixture.hierarchical(tree)


# -- uniform and inferred ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["uniform", "inferred"])
def test_rule_mixtures_take_properties_as_list_or_text(kind: str) -> None:
    make = getattr(Mixture, kind)
    assert make(["language", "source"]) == Mixture(kind=kind, by=BY)
    assert make("language, source") == Mixture(kind=kind, by=BY)
    assert make(["language"]).properties == ("language",)
    for empty in ([], "", " , "):
        with pytest.raises(MixtureError, match="name at least one property"):
            make(empty)


# -- JSON form ---------------------------------------------------------------------------------
def test_from_json_flat() -> None:
    m = Mixture.from_json({"language=en": 0.6, "language=de": 0.4})
    assert m == Mixture.static({"language=en": 0.6, "language=de": 0.4})
    with pytest.raises(MixtureError, match="not 1"):
        Mixture.from_json({"language=en": 2, "language=de": 2})
    m = Mixture.from_json({"language=en": 2, "language=de": 2}, normalize=True)
    assert [w for _, w in m.weights] == [0.5, 0.5]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"language=en": "1"}, r"weight of 'language=en' must be a number, got '1'"),
        ({"language=en": None}, r"must be a number, got None"),
        ({"language=en": True}, r"must be a number, got True"),
    ],
)
def test_from_json_rejects_non_numbers(data: dict[str, Any], match: str) -> None:
    with pytest.raises(MixtureError, match=match):
        Mixture.from_json(data)


def test_from_json_nested() -> None:
    assert_weights(Mixture.from_json(TREE), FLAT)


@pytest.mark.parametrize("kind", ["uniform", "inferred"])
def test_from_json_rules(kind: str) -> None:
    assert Mixture.from_json({kind: ["language", "source"]}) == Mixture(kind=kind, by=BY)
    assert Mixture.from_json({kind: "language"}) == Mixture(kind=kind, by=("language",))


@pytest.mark.parametrize(
    "mixture",
    [
        Mixture.static({"language=en,source=web": 0.1, "language=de": 0.2, "flag=true": 0.7}),
        Mixture.static({"a=1": 1, "a=2": 2}, normalize=True),
        Mixture.static([({"n": None}, 1.0)]),
        Mixture.uniform(["language", "source"]),
        Mixture.inferred(["language"]),
    ],
)
def test_to_json_round_trips(mixture: Mixture) -> None:
    data = json.loads(json.dumps(mixture.to_json()))
    assert Mixture.from_json(data) == mixture


selector_text_values = st.text(
    alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="_-./:"),
    min_size=1,
    max_size=8,
)


@settings(max_examples=100, deadline=None)
@given(
    entries=st.dictionaries(
        st.dictionaries(
            st.sampled_from(["language", "source", "flag", "k"]),
            selector_text_values,
            min_size=1,
            max_size=3,
        ).map(lambda d: tuple(sorted(d.items()))),
        st.integers(1, 100),
        min_size=1,
        max_size=6,
    )
)
def test_to_json_round_trips_any_static_mixture(
    entries: dict[tuple[tuple[str, str], ...], int],
) -> None:
    mixture = Mixture.static([(dict(sel), w) for sel, w in entries.items()], normalize=True)
    data = json.loads(json.dumps(mixture.to_json()))
    assert Mixture.from_json(data) == mixture


def test_to_json_round_trips_allow_empty() -> None:
    mixture = Mixture.static({"language=en": 0.5, "language=xx": 0.5}, allow_empty=True)
    assert Mixture.from_json(json.loads(json.dumps(mixture.to_json()))) == mixture


def test_selector_values_with_commas_are_rejected() -> None:
    with pytest.raises(MixtureError, match="contain ','"):
        Mixture.static([({"source": "books,fiction"}, 1.0)])


# -- resolve: static ---------------------------------------------------------------------------
KEYS = [("en", "web"), ("en", "wiki"), ("de", "web"), ("fr", "wiki")]


def test_resolve_splits_a_coarse_selector_by_size() -> None:
    result = make_result(KEYS, [30, 10, 50, 20])
    m = Mixture.static({"language=en": 0.6, "language=de": 0.4})
    weights = m.resolve(result, sizes_of(result))
    assert weights == pytest.approx([0.45, 0.15, 0.4, 0.0])
    assert weights[3] == 0.0  # matched by no selector


def test_resolve_exact_selectors() -> None:
    result = make_result(KEYS, [30, 10, 50, 20])
    m = Mixture.static(
        {"language=en,source=web": 0.1, "source=wiki,language=en": 0.2, "language=fr": 0.7}
    )
    assert m.resolve(result, sizes_of(result)) == pytest.approx([0.1, 0.2, 0.0, 0.7])


def test_resolve_renormalizes_when_components_are_left_out() -> None:
    result = make_result(KEYS, [30, 10, 50, 20])
    m = Mixture.static({"language=xx": 0.5, "language=de": 0.5}, allow_empty=True)
    assert m.resolve(result, sizes_of(result)).tolist() == [0.0, 0.0, 1.0, 0.0]


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 10**6), min_size=4, max_size=4),
    share=st.floats(0.01, 0.99),
)
def test_resolve_coarse_selector_weights_are_proportional_to_size(
    sizes: list[int], share: float
) -> None:
    result = make_result(KEYS, sizes)
    m = Mixture.static({"source=web": share, "source=wiki": 1 - share})
    weights = m.resolve(result, np.array(sizes, dtype=np.float64))
    assert weights.sum() == pytest.approx(1.0)
    for idx, total in (([0, 2], share), ([1, 3], 1 - share)):
        assert weights[idx].sum() == pytest.approx(total)
        expected = [total * sizes[i] / sum(sizes[j] for j in idx) for i in idx]
        assert weights[idx] == pytest.approx(expected)


def test_resolve_rejects_overlapping_selectors_naming_both() -> None:
    result = make_result(KEYS, [30, 10, 50, 20])
    m = Mixture.static({"language=en": 0.5, "source=web": 0.5})
    with pytest.raises(
        MixtureError,
        match=r"selectors 'language=en' and 'source=web' overlap on component "
        r"language=en,source=web; make them disjoint",
    ):
        m.resolve(result, sizes_of(result))


def test_overlap_on_an_absent_component_is_no_error() -> None:
    # language=en and source=web would overlap on en/web, but the result holds no such component
    result = make_result([("en", "wiki"), ("de", "web")], [5, 5])
    m = Mixture.static({"language=en": 0.5, "source=web": 0.5})
    assert m.resolve(result, sizes_of(result)).tolist() == [0.5, 0.5]


@pytest.mark.parametrize("sizes", [[30, 10, 50, 20], [30, 10, 50, 0]])
def test_resolve_rejects_a_selector_matching_nothing(sizes: list[int]) -> None:
    # fr/wiki is absent from the sizes in the second case: a component of size 0 is empty
    result = make_result(KEYS, sizes)
    selector = "language=xx" if sizes[3] else "language=fr"
    m = Mixture.static({"language=en": 0.5, selector: 0.5})
    with pytest.raises(
        MixtureError, match=f"selector '{selector}' matches 0 samples; .*allow_empty=True"
    ):
        m.resolve(result, np.array(sizes, dtype=np.float64))
    allowed = Mixture.static({"language=en": 0.5, selector: 0.5}, allow_empty=True)
    assert allowed.resolve(result, np.array(sizes, dtype=np.float64)) == pytest.approx(
        [0.75, 0.25, 0, 0]
    )


def test_resolve_zero_weight_selector_may_match_nothing() -> None:
    result = make_result(KEYS, [30, 10, 50, 20])
    m = Mixture.static({"language=de": 1.0, "language=xx": 0.0})
    assert m.resolve(result, sizes_of(result)).tolist() == [0.0, 0.0, 1.0, 0.0]


def test_resolve_rejects_a_property_the_result_is_not_grouped_by() -> None:
    result = make_result(KEYS, [30, 10, 50, 20])
    m = Mixture.static({"quality=high": 0.5, "language=en": 0.5})
    with pytest.raises(
        MixtureError,
        match=r"selector 'quality=high' names \['quality'\], which the query does not group by; "
        r"group by \['language', 'quality', 'source'\]",
    ):
        m.resolve(result, sizes_of(result))


def test_resolve_rejects_a_mixture_selecting_nothing() -> None:
    result = make_result(KEYS, [30, 10, 50, 20])
    m = Mixture.static({"language=xx": 1.0}, allow_empty=True)
    with pytest.raises(MixtureError, match="selects no samples"):
        m.resolve(result, sizes_of(result))


def test_resolve_compares_values_in_text_form() -> None:
    by = ("flag", "n", "k")
    result = make_result([(True, None, 3), (False, "x", 3), (True, "x", 4)], [1, 2, 3], by=by)
    sizes = sizes_of(result)
    m = Mixture.static({"flag=true,n=null": 0.5, "k=4": 0.25, "flag=false": 0.25})
    assert m.resolve(result, sizes).tolist() == [0.5, 0.25, 0.25]
    # mapping-form selectors print their values the same way
    m = Mixture.static([({"flag": True, "k": 3}, 0.5), ({"n": "x"}, 0.5)])
    assert m.resolve(result, sizes) == pytest.approx([0.5, 0.5 * 2 / 5, 0.5 * 3 / 5])
    # flag=true (components 0, 2) and k=3 (components 0, 1) overlap on component 0
    with pytest.raises(
        MixtureError, match="'flag=true' and 'k=3' overlap on component flag=true,n=null,k=3"
    ):
        Mixture.static([({"flag": True}, 0.5), ({"k": 3}, 0.5)]).resolve(result, sizes)


# -- resolve: uniform and inferred -------------------------------------------------------------
def test_uniform_gives_each_value_combination_an_equal_share() -> None:
    result = make_result(KEYS, [30, 10, 50, 20])
    sizes = sizes_of(result)
    by_language = Mixture.uniform(["language"]).resolve(result, sizes)
    assert by_language == pytest.approx([0.25, 1 / 12, 1 / 3, 1 / 3])
    assert Mixture.uniform(BY).resolve(result, sizes) == pytest.approx([0.25] * 4)


def test_uniform_splits_a_shared_combination_by_size() -> None:
    # two components built from identical keys are one combination of values
    result = make_result([("de", "web"), ("de", "web"), ("en", "web")], [10, 30, 20])
    weights = Mixture.uniform(BY).resolve(result, sizes_of(result))
    assert weights == pytest.approx([0.125, 0.375, 0.5])


def test_uniform_leaves_out_empty_combinations() -> None:
    result = make_result(KEYS, [30, 10, 0, 20])
    weights = Mixture.uniform(["language"]).resolve(result, sizes_of(result))
    assert weights == pytest.approx([0.375, 0.125, 0.0, 0.5])


def test_uniform_compares_values_in_text_form() -> None:
    # True and "true" print alike, so they are one combination
    result = make_result([(True,), ("true",), (None,)], [1, 3, 4], by=("flag",))
    assert Mixture.uniform(["flag"]).resolve(result, sizes_of(result)) == pytest.approx(
        [0.125, 0.375, 0.5]
    )


@settings(max_examples=100, deadline=None)
@given(
    comps=st.lists(
        st.tuples(
            st.sampled_from(["en", "de", "fr"]),
            st.sampled_from(["web", "wiki"]),
            st.integers(1, 1000),
        ),
        min_size=1,
        max_size=10,
    ),
    by=st.sampled_from([("language",), ("source",), BY, ("source", "language")]),
)
def test_uniform_property(comps: list[tuple[str, str, int]], by: tuple[str, ...]) -> None:
    result = make_result([(lang, src) for lang, src, _ in comps], [n for *_, n in comps])
    weights = Mixture.uniform(by).resolve(result, sizes_of(result))
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, c in enumerate(result.components):
        groups[tuple(c.properties[p] for p in by)].append(i)
    assert weights.sum() == pytest.approx(1.0)
    for members in groups.values():
        share = weights[members].sum()
        assert share == pytest.approx(1 / len(groups))
        size = sum(comps[i][2] for i in members)
        assert weights[members] == pytest.approx([share * comps[i][2] / size for i in members])


@pytest.mark.parametrize("kind", ["uniform", "inferred"])
def test_rule_mixture_rejects_a_property_the_result_is_not_grouped_by(kind: str) -> None:
    result = make_result(KEYS, [30, 10, 50, 20])
    with pytest.raises(MixtureError, match="quality"):
        getattr(Mixture, kind)(["quality"]).resolve(result, sizes_of(result))


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 10**9), min_size=4, max_size=4).filter(lambda s: sum(s) > 0),
    by=st.sampled_from([("language",), BY]),
)
def test_inferred_is_the_natural_proportion(sizes: list[int], by: tuple[str, ...]) -> None:
    result = make_result(KEYS, sizes)
    array = np.array(sizes, dtype=np.float64)
    weights = Mixture.inferred(by).resolve(result, array)
    assert weights == pytest.approx(array / array.sum())


@pytest.mark.parametrize("kind", ["uniform", "inferred"])
def test_rule_mixture_over_an_empty_result_raises(kind: str) -> None:
    result = make_result(KEYS, [0, 0, 0, 0])
    with pytest.raises(MixtureError, match="selects no samples"):
        getattr(Mixture, kind)(["language"]).resolve(result, sizes_of(result))
    empty = make_result([], [])
    with pytest.raises(MixtureError, match="selects no samples"):
        getattr(Mixture, kind)(["language"]).resolve(empty, np.zeros(0))

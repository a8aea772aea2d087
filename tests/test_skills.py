import pytest

from symoe_agents.skills import infer_keywords, parse_keywords, pool_keywords


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Keywords: Algebra, Number Theory", ["algebra", "number theory"]),
        ("Some reasoning.\nKeywords: a, b\nKeywords: Geometry., Trig", ["geometry", "trig"]),  # last marker wins
        ("algebra, geometry", ["algebra", "geometry"]),  # no marker: the whole text
        ("Keywords: U.S. history,  , law", ["us history", "law"]),  # dots removed, empty dropped
        ("keywords: Biology", ["biology"]),
        ("", []),
    ],
)
def test_parse_keywords(text, expected):
    assert parse_keywords(text) == expected


def test_pool_keeps_keywords_named_twice_in_first_seen_order():
    samples = [["algebra", "geometry"], ["geometry", "calculus"], ["algebra"], ["calculus", "topology"], []]
    assert pool_keywords(samples) == ["algebra", "geometry", "calculus"]


def test_pool_drops_keywords_over_20_chars_before_counting():
    long = "a" * 21
    exactly_20 = "b" * 20
    assert pool_keywords([[long, exactly_20], [long, exactly_20]]) == [exactly_20]


def test_pool_counts_duplicates_within_one_sample():
    # the method pools the lists, so a keyword listed twice in one sample has two votes
    assert pool_keywords([["law", "law"], ["x"]]) == ["law"]


def test_question_can_end_with_no_keywords():
    assert infer_keywords(["Keywords: a", "Keywords: b", "Keywords: c"]) == []


def test_infer_keywords_end_to_end():
    texts = ["Keywords: Physics, Optics.", "Keywords: physics, waves", "Keywords: optics, physics"]
    assert infer_keywords(texts) == ["physics", "optics"]

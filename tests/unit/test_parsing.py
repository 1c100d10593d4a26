"""Tolerant parsing of LLM answers: examples of every accepted shape plus property tests."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdkt_flwr.parsing import LabelMatcher, parse_samples, parse_selection

LABELS = ["great", "other"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            "1. Label: great | Text: Crunchy crackers, fresh and salty.\n"
            "2. Label: other | Text: Stale and overpriced.",
            [("Crunchy crackers, fresh and salty.", 0), ("Stale and overpriced.", 1)],
        ),
        ("Text: Too sweet for me. | Label: Other", [("Too sweet for me.", 1)]),
        (
            "- [great] Amazing coffee!\n- (OTHER) Bland tea.",
            [("Amazing coffee!", 0), ("Bland tea.", 1)],
        ),
        ("* great: yummy bars\n* other - soggy chips", [("yummy bars", 0), ("soggy chips", 1)]),
        ("**Label:** great\n**Text:** Very good honey.", [("Very good honey.", 0)]),
        (
            "Label: great\nText: Good honey.\nLabel: other\nText: Runny.",
            [("Good honey.", 0), ("Runny.", 1)],
        ),
        ("Review: Good stuff.\nSentiment: great", [("Good stuff.", 0)]),
        ("Sample 1 (great): Crisp apples.", [("Crisp apples.", 0)]),
        ("I'd buy this tea again. (great)", [("I'd buy this tea again.", 0)]),
        ("Label: great Text: no separator needed", [("no separator needed", 0)]),
        (
            '```json\n[{"label": "Great", "text": "Tasty"}, '
            '{"label": "other", "review": "Meh"}]\n```\nHope this helps!',
            [("Tasty", 0), ("Meh", 1)],
        ),
        (
            '{"great": ["a nice snack", "lovely jam"], "other": "meh"}',
            [("a nice snack", 0), ("lovely jam", 0), ("meh", 1)],
        ),
        ('{"samples": [{"sentiment": "great", "text": "\\"Quoted\\""}]}', [("Quoted", 0)]),
    ],
)
def test_labelled_shapes(answer: str, expected: list[tuple[str, int]]) -> None:
    records, _ = parse_samples(answer, LABELS)
    assert records == expected


def test_unknown_labels_are_dropped_and_counted() -> None:
    answer = "Label: great | Text: ok one\nLabel: awful | Text: bad\n[terrible] worse\n"
    records, drops = parse_samples(answer, LABELS)
    assert records == [("ok one", 0)]
    assert drops == {"unknown_label": 2}
    # Even with a default label, a claimed unknown label is dropped, not relabelled.
    records, drops = parse_samples(answer, LABELS, default_label=1)
    assert records == [("ok one", 0)] and drops == {"unknown_label": 2}


def test_negated_label_is_not_matched() -> None:
    records, drops = parse_samples("Label: not great | Text: hmm", LABELS)
    assert records == [] and drops == {"unknown_label": 1}


def test_default_label_for_unlabelled_lines_and_preamble_dropped() -> None:
    answer = (
        "Sure! Here are 3 new reviews:\n\n"
        '1. "These cookies are delicious."\n'
        "2. **Best pasta ever, would buy again**\n"
        "- I love this olive oil.\n"
        "I hope these help."
    )
    records, drops = parse_samples(answer, LABELS, default_label=1)
    assert [t for t, _ in records] == [
        "These cookies are delicious.",
        "Best pasta ever, would buy again",
        "I love this olive oil.",
    ]
    assert {lbl for _, lbl in records} == {1}
    assert drops == {"preamble": 2}
    # Without a default label the same lines carry no label and are dropped.
    records, drops = parse_samples(answer, LABELS)
    assert records == [] and drops["no_label"] == 3


def test_explicit_label_wins_over_default() -> None:
    records, _ = parse_samples("- [other] Too salty.\n- Lovely.", LABELS, default_label=0)
    assert records == [("Too salty.", 1), ("Lovely.", 0)]


def test_colon_inside_text_is_not_a_label() -> None:
    records, _ = parse_samples("Great taste: the sauce is wonderful", LABELS, default_label=0)
    assert records == [("Great taste: the sauce is wonderful", 0)]


def test_list_answers_drop_unmarked_commentary() -> None:
    answer = (
        "1. I am hungry today for sure.\n\nAnd a stray continuation line.\n\n"
        "2. The food is bad here.\nThese should help your classifier!"
    )
    records, drops = parse_samples(answer, LABELS, default_label=1)
    assert records == [("I am hungry today for sure.", 1), ("The food is bad here.", 1)]
    assert drops == {"outside_list": 2}


def test_garbage_and_empty_answers() -> None:
    assert parse_samples("", LABELS) == ([], {})
    assert parse_samples("```\n```", LABELS)[0] == []
    assert parse_samples("[1, 2, {", LABELS, default_label=0)[0] == [("[1, 2, {", 0)]
    assert parse_samples("hello", [])[0] == []
    # Out-of-range default labels are ignored rather than returned.
    assert parse_samples("some text here", LABELS, default_label=7)[0] == []


def test_label_matcher_aliases_and_descriptions() -> None:
    m = LabelMatcher(["World", "Sports", "Business", "Sci/Tech"], aliases={"science": 3})
    assert m.match("sports") == 1
    assert m.match("**Sci/Tech**") == 3
    assert m.match("Science") == 3
    assert m.match("Sports news") == 1
    assert m.match("sports and business") is None  # ambiguous
    assert m.match("2") is None  # numbers are never guessed as indices


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("1, 3, 4", {0, 2, 3}),
        ("Keep: 2 and 5", {1, 4}),
        ("Keep 1-3", {0, 1, 2}),
        ("[1,3]", {0, 2}),
        ('```json\n{"keep": [2]}\n```', {1}),
        ('{"remove": [1]}', {1, 2, 3, 4}),
        ("all", {0, 1, 2, 3, 4}),
        ("Keep: all", {0, 1, 2, 3, 4}),
        ("None of them.", set()),
        ("Keep: none", set()),
        ("Remove: 2", {0, 2, 3, 4}),
        ("All except 3", {0, 1, 3, 4}),
        ("1. Yes\n2. No\n3. yes - fine\n4. no\n5. No", {0, 2}),
        ("Samples 1 and 3 are good.", {0, 2}),
        ("Keep: 2, 9", {1}),
    ],
)
def test_selection_answers(answer: str, expected: set[int]) -> None:
    assert parse_selection(answer, 5) == expected


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "blah blah",
        "I think 9 and 12",
        "Keep: 7",
        "[0]",
        # Echoes of the examples (what SmolLM2-135M tends to answer) decide nothing.
        "1. [great] This stuffed bread was better than expected. The outside is",
        "Example 1:\n- Great: a glowing five-star review from a",
        "A very good side dish for 2 people",
        "1. Good bread, crusty outside and soft inside, we ate it all in a day.",
    ],
)
def test_unusable_selection_answers(answer: str) -> None:
    assert parse_selection(answer, 5) is None


def test_selection_n_zero() -> None:
    assert parse_selection("1, 2", 0) is None


# ----------------------------------------------------------------------------------------------
# Properties: never crash, never leave the label set or the index range.
# ----------------------------------------------------------------------------------------------

_label_sets = st.lists(
    st.text(min_size=1, max_size=12).filter(lambda s: s.strip()), min_size=1, max_size=5
)
_fragments = st.sampled_from(
    ["Label:", "Text:", " | ", "\n", "- ", "1. ", "[", "]", "(", ")", "{", "}", '"', ":", "great",
     "other", "```json\n", "```", "Keep:", "none", "all", ",", "5", "-3", "Review 2 (", "**"]
)  # fmt: skip
_answers = st.one_of(
    st.text(max_size=300),
    st.lists(st.one_of(_fragments, st.text(max_size=10)), max_size=40).map("".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=_answers, labels=_label_sets, default=st.one_of(st.none(), st.integers(-2, 6)))
def test_parse_samples_properties(answer: str, labels: list[str], default: int | None) -> None:
    records, drops = parse_samples(answer, labels, default_label=default)
    for text, label in records:
        assert isinstance(text, str) and text.strip()
        assert isinstance(label, int) and 0 <= label < len(labels)
    assert all(isinstance(k, str) and v > 0 for k, v in drops.items())


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.text(min_size=1, max_size=40), st.sampled_from(["great", "other", "bad"])),
        max_size=5,
    )
)
def test_parse_samples_json_round_trip(records: list[tuple[str, str]]) -> None:
    answer = json.dumps([{"label": lbl, "text": t} for t, lbl in records])
    parsed, _ = parse_samples(answer, LABELS)
    assert all(0 <= lbl < 2 for _, lbl in parsed)
    assert len(parsed) <= len(records)


@settings(max_examples=300, deadline=None)
@given(answer=_answers, n=st.integers(0, 12))
def test_parse_selection_properties(answer: str, n: int) -> None:
    chosen = parse_selection(answer, n)
    assert chosen is None or (isinstance(chosen, set) and all(0 <= i < n for i in chosen))

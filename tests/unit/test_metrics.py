"""Metrics: per-class F1 with absent classes, summaries, FDKT-vs-baseline gains, tables."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fdkt_flwr.metrics import (
    classification_metrics,
    format_table,
    gain,
    majority_rate,
    summarize,
)


def test_classification_metrics_basic() -> None:
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], 2, ["neg", "pos"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["per_class_f1"] == pytest.approx({"neg": 2 / 3, "pos": 0.8})
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["support"] == {"neg": 2, "pos": 2}
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["n"] == 4
    json.dumps(m)  # plain Python types only


def test_absent_class_has_zero_f1_and_counts_in_macro() -> None:
    # Class 2 never occurs in the truth nor in the predictions.
    m = classification_metrics([0, 1, 0, 1], [0, 1, 0, 1], 3, ["a", "b", "c"])
    assert m["accuracy"] == 1.0
    assert m["per_class_f1"] == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["support"]["c"] == 0
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]
    # Predicted but never true: precision 0, F1 0, no crash.
    m = classification_metrics([0, 0], [2, 0], 3)
    assert m["per_class_f1"]["2"] == 0.0 and m["per_class_f1"]["1"] == 0.0


def test_classification_metrics_empty_and_errors() -> None:
    m = classification_metrics([], [], 2, ["x", "y"])
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0 and m["n"] == 0
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]
    with pytest.raises(ValueError, match="label names"):
        classification_metrics([0], [0], 2, ["only-one"])
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 2], [0, 0], 2)
    with pytest.raises(ValueError, match="items"):
        classification_metrics([0, 1], [0], 2)


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=40))
def test_metrics_are_consistent(pairs: list[tuple[int, int]]) -> None:
    y_true = [t for t, _ in pairs]
    y_pred = [p for _, p in pairs]
    m = classification_metrics(y_true, y_pred, 4)
    cm = m["confusion_matrix"]
    assert sum(map(sum, cm)) == len(pairs) == m["n"]
    assert sum(m["support"].values()) == len(pairs)
    if pairs:
        assert m["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(4)) / len(pairs))
    assert 0.0 <= m["macro_f1"] <= 1.0
    assert m["macro_f1"] == pytest.approx(sum(m["per_class_f1"].values()) / 4)


def test_summarize() -> None:
    s = summarize([0.70, 0.74, 0.72])
    assert s["mean"] == pytest.approx(0.72) and s["std"] == pytest.approx(0.02) and s["n"] == 3
    assert summarize([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert summarize([]) == {"mean": None, "std": None, "n": 0}


def test_gain_in_points() -> None:
    fdkt = {"accuracy": 0.80, "macro_f1": 0.75}
    base = {"accuracy": 0.75, "macro_f1": 0.77}
    g = gain(fdkt, base)
    assert g["accuracy"] == pytest.approx(5.0)
    assert g["macro_f1"] == pytest.approx(-2.0)
    assert gain(base, base) == {"accuracy": 0.0, "macro_f1": 0.0}


def test_majority_rate() -> None:
    assert majority_rate([1, 1, 0], [1, 0, 0, 0]) == pytest.approx(0.25)
    assert majority_rate([0, 1], [0, 0, 1]) == pytest.approx(2 / 3)  # tie -> smallest id
    assert majority_rate([], [0]) == 0.0


def test_format_table() -> None:
    rows = [
        {"client": 0, "method": "baseline", "accuracy": 0.7512345, "note": "a|b"},
        {"client": 1, "method": "fdkt", "accuracy": None},
    ]
    table = format_table(rows, ["client", "method", "accuracy", "note"])
    lines = table.splitlines()
    assert len(lines) == 4 and not table.endswith("\n")
    assert lines[0].startswith("| client") and "accuracy" in lines[0]
    assert set(lines[1]) <= set("|-: ")
    assert "0.7512" in lines[2] and "a\\|b" in lines[2]
    # Every row has the same number of (unescaped) cell separators.
    counts = {line.replace("\\|", "").count("|") for line in lines}
    assert counts == {5}
    assert "0.75" in format_table(rows[:1], ["accuracy"], float_format=".2f")
    with pytest.raises(ValueError):
        format_table(rows, [])

"""Classification metrics, summaries over seeds, FDKT-vs-baseline gains and a markdown table.

Every function returns plain Python types (floats, ints, lists, dicts) so results can be written
to JSON and sent in Flower ``ConfigRecord``/``MetricRecord`` values without conversion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

__all__ = ["classification_metrics", "format_table", "gain", "majority_rate", "summarize"]


def classification_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    num_labels: int,
    label_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class F1, support and the confusion matrix of a prediction.

    Contract:
    * ``y_true`` and ``y_pred`` are equally long sequences of label ids in ``[0, num_labels)``;
      anything else raises ``ValueError``.
    * Every metric is computed over **all** ``num_labels`` classes (``labels=range(num_labels)``),
      so a class absent from ``y_true`` and ``y_pred`` does not crash anything: its F1 is 0
      (``zero_division=0``) and it still counts in ``macro_f1``. This keeps macro-F1 comparable
      between an FDKT run and its baseline on the same test split.
    * ``label_names`` (default ``"0"``, ``"1"``, ...) keys ``per_class_f1`` and ``support``.
    * An empty prediction gives accuracy and macro-F1 of 0.0 and ``n == 0``, not NaN.

    Returns ``{"accuracy", "macro_f1", "per_class_f1": {name: f1}, "support": {name: count},
    "confusion_matrix": [[count]] (rows = true label, columns = predicted label), "n"}``.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    names = [str(i) for i in range(num_labels)] if label_names is None else list(label_names)
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} label names for {num_labels} labels")
    true = np.asarray(list(y_true), dtype=np.int64)
    pred = np.asarray(list(y_pred), dtype=np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} items but y_pred has {pred.size}")
    for which, arr in (("y_true", true), ("y_pred", pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_labels):
            raise ValueError(f"{which} holds a label outside [0, {num_labels})")
    labels = list(range(num_labels))
    if true.size == 0:
        return {
            "accuracy": 0.0,
            "macro_f1": 0.0,
            "per_class_f1": {name: 0.0 for name in names},
            "support": {name: 0 for name in names},
            "confusion_matrix": [[0] * num_labels for _ in labels],
            "n": 0,
        }
    per_class = f1_score(true, pred, labels=labels, average=None, zero_division=0)
    cm = confusion_matrix(true, pred, labels=labels)
    return {
        "accuracy": float(accuracy_score(true, pred)),
        "macro_f1": float(f1_score(true, pred, labels=labels, average="macro", zero_division=0)),
        "per_class_f1": {name: float(f) for name, f in zip(names, per_class, strict=True)},
        "support": {name: int(s) for name, s in zip(names, cm.sum(axis=1), strict=True)},
        "confusion_matrix": cm.astype(int).tolist(),
        "n": int(true.size),
    }


def majority_rate(train_labels: Sequence[int], test_labels: Sequence[int]) -> float:
    """Accuracy on ``test_labels`` of always predicting the most frequent ``train_labels`` class.

    The reference a trained classifier must beat. Ties go to the smallest label id; an empty
    ``train_labels`` or ``test_labels`` gives 0.0.
    """
    if not train_labels or not test_labels:
        return 0.0
    counts = np.bincount(np.asarray(train_labels, dtype=np.int64))
    top = int(np.argmax(counts))
    return float(np.mean(np.asarray(test_labels) == top))


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"mean", "std", "n"}`` of repeated measurements (e.g. one metric over seeds).

    ``std`` is the sample standard deviation (ddof=1), 0.0 for a single value. An empty list gives
    ``{"mean": None, "std": None, "n": 0}`` (None rather than NaN, which JSON cannot carry).
    """
    vals = [float(v) for v in values]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    mean = math.fsum(vals) / len(vals)
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(vals)}


def gain(metrics: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float]:
    """FDKT minus baseline, in percentage points: ``{"accuracy": Δ, "macro_f1": Δ}``.

    Both arguments are :func:`classification_metrics` results (e.g. ``result["test"]`` of two
    runs on the same test split). ``+5.0`` means five points better than the baseline.
    """
    return {
        key: 100.0 * (float(metrics[key]) - float(baseline[key]))
        for key in ("accuracy", "macro_f1")
    }


def _cell(value: Any, float_format: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, float_format)
    # A pipe or newline inside a cell would break the markdown row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], float_format: str = ".4f"
) -> str:
    """A GitHub-markdown table of ``rows`` restricted to ``columns``, in that order.

    Missing keys and None print as empty cells; floats use ``float_format``; numbers are
    right-aligned. The result has no trailing newline.
    """
    if not columns:
        raise ValueError("format_table needs at least one column")
    cells = [[_cell(row.get(col), float_format) for col in columns] for row in rows]
    numeric = [
        all(isinstance(row.get(col), int | float) or row.get(col) is None for row in rows)
        and any(row.get(col) is not None for row in rows)
        for col in columns
    ]
    widths = [
        max([len(col)] + [len(r[i]) for r in cells] + [3]) for i, col in enumerate(columns)
    ]

    def line(items: Sequence[str]) -> str:
        padded = [
            item.rjust(w) if num else item.ljust(w)
            for item, w, num in zip(items, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric,
                                                                          strict=True)]
    header = [col.replace("|", "\\|") for col in columns]
    return "\n".join([line(header), "| " + " | ".join(rule) + " |"] + [line(r) for r in cells])

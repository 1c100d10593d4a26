"""Tolerant parsers for LLM answers.

Small instruction models (SmolLM2-135M here) rarely follow an output format exactly, so these
parsers accept many shapes and *count* what they drop instead of failing:

* :func:`parse_samples` turns an augmentation answer into ``(text, label_index)`` records.
  Accepted shapes: JSON (bare, or in a code fence) as a list of objects/strings, an object
  with a list inside, or ``{label: [texts]}``; and line-based records — numbered or bulleted
  lists, ``Label: x | Text: y`` (either order, ``|`` or on consecutive lines), ``[x] y``,
  ``(x) y``, ``x: y``, ``y (x)``, ``Sample 1 (x): y``, with quotes and markdown stripped.
* :func:`parse_selection` turns a selection answer into the set of kept sample indices.

Contracts (property-tested): never raise on any string; every returned label is an index into
``label_names``; every returned selection index is in ``range(n)``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

Record = tuple[str, int]

# Keys a model may use for the label and for the text of a record.
LABEL_KEYS = frozenset(
    {
        "label", "labels", "sentiment", "category", "class", "rating", "score", "topic", "type",
        "tag", "stars", "polarity", "classification",
    }
)  # fmt: skip
TEXT_KEYS = frozenset(
    {
        "text", "review", "sample", "sentence", "content", "example", "comment", "news",
        "article", "headline", "body", "message", "output", "answer", "new", "review_text",
    }
)  # fmt: skip
_NEGATIONS = frozenset({"not", "no", "non", "never", "isn't", "isnt", "wasn't", "wasnt", "n't"})

_LIST_MARKER = re.compile(r"^\s*(?:[-*•·>+]+|#{1,6}|\(?\d{1,3}[.):\]]|\d{1,3}\s*-\s)\s*")
_WORDY_MARKER = re.compile(
    r"^\s*(?:new\s+)?(?:sample|review|example|text|sentence|item|record|comment|article)s?"
    r"\s*#?\s*\d{0,3}\s*(?:\(([^()]{1,60})\))?\s*[:.)\-]\s*",
    re.IGNORECASE,
)
_BRACKET_PREFIX = re.compile(r"^\s*[\[({<]\s*([^\])}>]{1,60}?)\s*[\])}>]\s*[:\-–—|]?\s*")
_BRACKET_SUFFIX = re.compile(r"\s*[\[({<]\s*([^\[\](){}<>]{1,60}?)\s*[\])}>]\s*[.!]?\s*$")
_KEY_VALUE = re.compile(r"^\s*([A-Za-z_][A-Za-z _]{0,30}?)\s*[:=]\s*(.*)$", re.DOTALL)
_CODE_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_PREAMBLE = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|ok|here (?:are|is)|below (?:are|is)|i hope|note|"
    r"as an ai|i(?:'m| am) (?:happy|glad)|let me|these (?:reviews|samples|examples)|"
    r"feel free|i have|i've)\b",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’«»„"


def _norm_label(s: str) -> str:
    """Lower-case, drop markdown/quotes/brackets/punctuation at the ends, squeeze spaces."""
    s = s.replace("*", "").replace("_", " ").strip().strip(_QUOTES + "[](){}<>.,;:!?-– ").strip()
    return re.sub(r"\s+", " ", s).casefold()


def _strip_text(s: str) -> str:
    """Clean a record's text: markdown emphasis, surrounding quotes, whitespace."""
    s = s.strip()
    s = re.sub(r"^\*\*(.*?)\*\*$", r"\1", s).strip()
    s = s.replace("**", "")
    for _ in range(2):  # "“text”" or '"text".'
        s = s.strip()
        if len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
            s = s[1:-1]
        elif len(s) >= 3 and s[0] in _QUOTES and s[-2] in _QUOTES and s[-1] in ".,;":
            s = s[1:-2]
    # A lone opening quote (answer cut off mid-sample) or closing quote.
    if s and s[0] in _QUOTES and s.count(s[0]) == 1:
        s = s[1:]
    elif s and s[-1] in _QUOTES and s[-1] not in "'’" and s.count(s[-1]) == 1:
        s = s[:-1]
    return re.sub(r"\s+", " ", s).strip()


class LabelMatcher:
    """Maps free-form label strings onto indices of a fixed label set.

    Matching is case-insensitive on exact names first, then on optional aliases (e.g. words of
    a label description), then — only when unambiguous and not negated — on a label name
    appearing as a whole word inside the string (``"great (5 stars)"`` → ``great``).
    Numbers are *not* treated as indices: ``"1"`` could be 0- or 1-based, or a star rating.
    """

    def __init__(self, label_names: list[str], aliases: dict[str, int] | None = None) -> None:
        self.label_names = list(label_names)
        self.exact: dict[str, int] = {}
        for i, name in enumerate(self.label_names):
            self.exact.setdefault(_norm_label(name), i)
        self.aliases: dict[str, int] = {}
        for alias, idx in (aliases or {}).items():
            if 0 <= idx < len(self.label_names):
                self.aliases.setdefault(_norm_label(alias), idx)
        self._word_patterns = [
            (i, re.compile(r"(?<![\w-])" + re.escape(_norm_label(n)) + r"(?![\w-])"))
            for i, n in enumerate(self.label_names)
            if _norm_label(n)
        ]

    def match(self, raw: str) -> int | None:
        """Index of the label ``raw`` names, or None."""
        key = _norm_label(raw)
        if not key:
            return None
        if key in self.exact:
            return self.exact[key]
        if key in self.aliases:
            return self.aliases[key]
        if len(key) > 60:
            return None
        words = set(re.findall(r"[\w']+", key))
        if words & _NEGATIONS:
            return None
        hits = {i for i, pat in self._word_patterns if pat.search(key)}
        if len(hits) == 1:
            return hits.pop()
        return None


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def _json_candidates(answer: str) -> list[Any]:
    """Decode JSON values found in code fences, or the outermost ``[...]``/``{...}`` span."""
    found: list[Any] = []
    spans = [m.group(1) for m in _CODE_FENCE.finditer(answer)]
    if not spans:
        spans = [answer]
    decoder = json.JSONDecoder()
    for span in spans:
        span = span.strip()
        # Try the earliest opener first: '{"great": [...]}' is an object, not a list.
        positions = sorted(p for p in (span.find("["), span.find("{")) if p >= 0)
        for pos in positions:
            try:
                value, _ = decoder.raw_decode(span[pos:])
            except (ValueError, RecursionError):
                continue
            if isinstance(value, (list, dict)) and value:
                found.append(value)
                break
    return found


def _records_from_json(
    value: Any, matcher: LabelMatcher, default_label: int | None, drops: Counter[str]
) -> list[Record] | None:
    """Records from a decoded JSON value; None if the value does not look like records."""
    if isinstance(value, dict):
        # {"samples": [...]} or {"great": ["...", ...], "other": [...]} or a single record.
        lists = [v for v in value.values() if isinstance(v, list)]
        label_keyed = [k for k in value if matcher.match(str(k)) is not None]
        if label_keyed and all(isinstance(value[k], (list, str)) for k in label_keyed):
            out: list[Record] = []
            for k in value:
                idx = matcher.match(str(k))
                items = value[k] if isinstance(value[k], list) else [value[k]]
                for item in items:
                    if idx is None:
                        drops["unknown_label"] += 1
                        continue
                    text = _strip_text(str(item)) if isinstance(item, (str, int, float)) else ""
                    if text:
                        out.append((text, idx))
                    else:
                        drops["empty"] += 1
            return out
        if any(str(k).casefold() in TEXT_KEYS for k in value):
            value = [value]
        elif len(lists) == 1:
            value = lists[0]
        else:
            return None
    if not isinstance(value, list):
        return None
    out = []
    for item in value:
        if isinstance(item, str):
            out.extend(_records_from_lines([item], matcher, default_label, drops))
            continue
        if not isinstance(item, dict):
            drops["malformed"] += 1
            continue
        text, label_raw = None, None
        for k, v in item.items():
            key = str(k).casefold().strip()
            if key in TEXT_KEYS and isinstance(v, (str, int, float)) and text is None:
                text = str(v)
            elif key in LABEL_KEYS and isinstance(v, (str, int, float)) and label_raw is None:
                label_raw = str(v)
        if text is None or not _strip_text(text):
            drops["empty"] += 1
            continue
        if label_raw is None:
            if default_label is None:
                drops["no_label"] += 1
                continue
            idx: int | None = default_label
        else:
            idx = matcher.match(label_raw)
            if idx is None:
                drops["unknown_label"] += 1
                continue
        out.append((_strip_text(text), idx))
    return out


# --------------------------------------------------------------------------------------------
# Line-based records
# --------------------------------------------------------------------------------------------


def _split_segments(line: str) -> list[tuple[str | None, str]]:
    """Split ``"Label: x | Text: y"`` into ``[("label","x"), ("text","y")]``.

    Segments without a recognised key get key None. Also splits ``Label: x Text: y`` with no
    separator when both keys occur.
    """
    parts = [p for p in re.split(r"\s+\|\s+|\s*\|\s*(?=[A-Za-z_ ]{1,30}[:=])|\t+", line) if p]
    if len(parts) == 1:
        m = _LABEL_THEN_TEXT.match(line)
        if m:
            return [("label", m.group(2)), ("text", m.group(4))]
    segs: list[tuple[str | None, str]] = []
    for p in parts:
        kv = _KEY_VALUE.match(p)
        if kv:
            key = kv.group(1).strip().casefold().replace(" ", "_")
            if key in LABEL_KEYS:
                segs.append(("label", kv.group(2)))
                continue
            if key in TEXT_KEYS or key.rstrip("_0123456789") in TEXT_KEYS:
                segs.append(("text", kv.group(2)))
                continue
        segs.append((None, p))
    return segs


_LABEL_THEN_TEXT = re.compile(
    r"^\s*(" + "|".join(sorted(LABEL_KEYS, key=len, reverse=True)) + r")\s*[:=]\s*(.{1,60}?)"
    r"\s+(" + "|".join(sorted(TEXT_KEYS, key=len, reverse=True)) + r")\s*[:=]\s*(.*)$",
    re.IGNORECASE | re.DOTALL,
)


@dataclass
class _Line:
    """One parsed line: its text (may be empty) and label (None when the line names none)."""

    text: str
    label: int | None
    labelled: bool
    marked: bool = False  # started with a list marker ("1.", "-", "*", ...)


def _parse_line(line: str, matcher: LabelMatcher) -> _Line | str:
    """Parse one line into a :class:`_Line`, or return a drop reason."""
    s = line.strip()
    if not s:
        return "empty"
    unmarked = _LIST_MARKER.sub("", s, count=1)
    marked = unmarked != s
    s = unmarked
    s = s.replace("**", "").strip()
    label: int | None = None
    labelled = False
    wordy = _WORDY_MARKER.match(s)
    if wordy:
        if wordy.group(1):
            labelled = True
            label = matcher.match(wordy.group(1))
        s = s[wordy.end() :]
    segs = _split_segments(s)
    text_parts: list[str] = []
    for key, val in segs:
        if key == "label":
            labelled = True
            label = matcher.match(val)
        else:
            text_parts.append(val)
    text = " | ".join(p for p in text_parts if p.strip())
    if len(segs) == 1 and segs[0][0] is None and not labelled:
        text, label, labelled = _inline_label(text, matcher)
    text = _strip_text(text)
    if labelled and label is None:
        return "unknown_label"
    if not labelled:
        if not text:
            return "empty"
        if _norm_label(text) in matcher.exact:  # a bare label name on its own line
            return _Line("", matcher.exact[_norm_label(text)], True, marked)
        if text.endswith(":") or _PREAMBLE.match(text):
            return "preamble"
    return _Line(text, label, labelled, marked)


def _inline_label(text: str, matcher: LabelMatcher) -> tuple[str, int | None, bool]:
    """Labels written without a key: ``[great] t``, ``(great) t``, ``great: t``, ``t (great)``."""
    m = _BRACKET_PREFIX.match(text)
    if m and matcher.match(m.group(1)) is not None:
        return text[m.end() :], matcher.match(m.group(1)), True
    if m and text[m.end() :].strip() and len(m.group(1).split()) <= 3 and text.lstrip()[0] == "[":
        # "[awful] text": a short bracketed tag in front is a label claim, just not ours.
        return text[m.end() :], None, True
    m2 = re.match(r"^\s*([^:\-–—|]{1,40}?)\s*(?::|\s[-–—|]\s)\s*(.*)$", text, re.DOTALL)
    # Only an exact name here: "Great taste: ..." must not become the label "great".
    if m2 and _norm_label(m2.group(1)) in matcher.exact.keys() | matcher.aliases.keys():
        return m2.group(2), matcher.match(m2.group(1)), True
    m3 = _BRACKET_SUFFIX.search(text)
    if m3 and _norm_label(m3.group(1)) in matcher.exact:
        return text[: m3.start()], matcher.match(m3.group(1)), True
    return text, None, False


def _records_from_lines(
    lines: list[str], matcher: LabelMatcher, default_label: int | None, drops: Counter[str]
) -> list[Record]:
    """Line-based records; a label-only line labels the text line next to it.

    When the answer is a list (two or more marked lines), an unmarked line that would only get
    the default label is commentary or a stray continuation, not a sample: it is dropped as
    ``outside_list``.
    """
    parsed: list[_Line | str] = []
    for line in lines:
        if not line.strip() or re.fullmatch(r"\s*(?:```\w*|[-=*_]{3,})\s*", line):
            continue
        parsed.append(_parse_line(line, matcher))
    list_mode = sum(1 for p in parsed if isinstance(p, _Line) and p.marked) >= 2
    records: list[Record] = []
    pending: int | None = None  # label from a "Label: x" line waiting for its text
    i = 0
    while i < len(parsed):
        cur = parsed[i]
        i += 1
        if isinstance(cur, str):
            drops[cur] += 1
            pending = None if cur == "unknown_label" else pending
            continue
        if not cur.text:  # label-only line
            if pending is not None:
                drops["empty"] += 1  # two labels in a row: the first had no text
            pending = cur.label
            continue
        label = cur.label
        if not cur.labelled:
            if pending is not None:
                label = pending
            elif i < len(parsed) and isinstance(parsed[i], _Line):
                nxt = parsed[i]
                assert isinstance(nxt, _Line)
                if not nxt.text and nxt.labelled:  # "Review: ..." then "Sentiment: great"
                    label = nxt.label
                    i += 1
            if label is None:
                if list_mode and not cur.marked:
                    drops["outside_list"] += 1
                    continue
                label = default_label
        pending = None
        if label is None:
            drops["no_label"] += 1
            continue
        records.append((cur.text, label))
    if pending is not None:
        drops["empty"] += 1
    return records


def parse_samples(
    answer: str,
    label_names: list[str],
    default_label: int | None = None,
    aliases: dict[str, int] | None = None,
) -> tuple[list[Record], dict[str, int]]:
    """Parse ``(text, label_index)`` records out of an LLM answer.

    ``label_names`` is the label set; labels are matched case-insensitively (see
    :class:`LabelMatcher`; ``aliases`` adds extra names per index). A record naming a label
    outside the set is dropped as ``unknown_label``. Lines without a label take
    ``default_label`` (use it when the prompt asked for one label only) or are dropped as
    ``no_label``. Introductory lines ("Here are 3 reviews:") are dropped as ``preamble``.

    Returns the records in answer order and a dict of drop counts by reason. Never raises.
    """
    drops: Counter[str] = Counter()
    if not isinstance(answer, str) or not label_names:
        return [], {}
    if default_label is not None and not 0 <= default_label < len(label_names):
        default_label = None
    matcher = LabelMatcher(label_names, aliases)
    try:
        for value in _json_candidates(answer):
            recs = _records_from_json(value, matcher, default_label, drops)
            if recs is not None and (recs or sum(drops.values())):
                return _valid(recs, len(label_names)), dict(drops)
            drops.clear()
        records = _records_from_lines(answer.splitlines(), matcher, default_label, drops)
    except RecursionError:  # pathological nesting; treat as unusable rather than crash
        return [], {"malformed": 1}
    return _valid(records, len(label_names)), dict(drops)


def _valid(records: list[Record], n_labels: int) -> list[Record]:
    """Final guard of the contract: non-empty text, label index in range."""
    return [(t, lbl) for t, lbl in records if t and isinstance(lbl, int) and 0 <= lbl < n_labels]


# --------------------------------------------------------------------------------------------
# Selection answers
# --------------------------------------------------------------------------------------------

_KEEP_WORDS = r"keep|kept|select(?:ed)?|choose|chosen|accept(?:ed)?|good|valid|retain(?:ed)?|answer"
_DROP_WORDS = r"remove[ds]?|drop(?:ped)?|discard(?:ed)?|reject(?:ed)?|exclude[ds]?|delete[ds]?|bad"
_ALL = re.compile(r"\b(?:all(?: of them| samples| the samples)?|every(?:thing| sample)?)\b", re.I)
_NONE = re.compile(r"\b(?:none|nothing|no samples?)\b", re.I)
_DECISION_LINE = re.compile(
    rf"^\W*(?:answer\W*|i\s+(?:would|will)\s+|please\s+)?({_KEEP_WORDS}|{_DROP_WORDS})\b"
    r"[^:\d]{0,25}?[:=]?\s*(.*)$",
    re.I,
)
_FILLER = frozenset(
    {
        "sample", "samples", "example", "examples", "number", "numbers", "no", "and", "or",
        "the", "are", "is", "good", "keep", "only", "to", "of", "them", "these", "those", "all",
        "except", "but", "not", "other", "than", "besides", "items", "item", "ones", "should",
        "be", "kept", "correct", "valid", "i", "would", "answer", "removed", "remove", "drop",
    }
)  # fmt: skip
_EXCEPT = re.compile(r"\b(?:except|but not|other than|besides)\b", re.I)
_VERDICT = re.compile(
    r"^\s*(?:sample\s*)?#?(\d{1,3})\s*[.):\-]?\s*(?:\*\*)?\s*"
    r"(yes|no|keep|remove|drop|discard|reject|good|bad|valid|invalid|correct|incorrect)\b",
    re.I,
)


def _numbers(s: str) -> list[int]:
    """1-based numbers in ``s``, expanding ranges like ``2-4``."""
    out: list[int] = []
    for m in re.finditer(r"(\d{1,4})(?:\s*(?:-|–|to)\s*(\d{1,4}))?", s):
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if b < a or b - a > 100:
            b = a
        out.extend(range(a, b + 1))
    return out


def _to_indices(numbers: list[int], n: int) -> set[int] | None:
    """1-based numbers → 0-based indices in range; None if none were in range."""
    idx = {k - 1 for k in numbers if 1 <= k <= n}
    return idx if idx or not numbers else None


def parse_selection(answer: str, n: int) -> set[int] | None:
    """Which of ``n`` numbered samples (shown as 1..n) the LLM kept, as 0-based indices.

    Understands ``"1, 3, 4"``, ``"Keep: 2 and 5"``, ``"Keep 1-3"``, JSON (``[1, 3]`` or
    ``{"keep": [1, 3]}``), ``"all"``, ``"none"``, ``"Remove: 2"`` / ``"all except 2"``
    (complement), and per-sample verdicts (``"1. Yes\\n2. No"``). Returns None when the answer
    is unusable (no recognisable decision, or only out-of-range numbers) so the caller can fall
    back. Never raises; indices are always in ``range(n)``.
    """
    if not isinstance(answer, str) or n <= 0:
        return None
    full = set(range(n))
    try:
        return _parse_selection(answer, n, full)
    except (RecursionError, ValueError):
        return None


def _parse_selection(answer: str, n: int, full: set[int]) -> set[int] | None:
    text = answer.strip()
    if not text:
        return None
    # JSON first: a list of numbers, or an object with a keep/drop list.
    for value in _json_candidates(text):
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            return _to_indices([int(v) for v in value], n)
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, list) and all(isinstance(x, int) for x in v):
                    idx = _to_indices([int(x) for x in v], n)
                    if idx is None:
                        return None
                    return full - idx if re.fullmatch(_DROP_WORDS, str(k), re.I) else idx
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # Per-sample verdicts: "1. Yes", "2: no - off topic".
    # Short lines only: "1. Good bread, crusty and fresh ..." is an echoed sample, not a verdict.
    verdicts = [m for m in (_VERDICT.match(ln) for ln in lines if len(ln.split()) <= 12) if m]
    if len(verdicts) >= 2 or (verdicts and n == 1):
        keep = {
            int(m.group(1)) - 1
            for m in verdicts
            if m.group(2).casefold() in {"yes", "keep", "good", "valid", "correct"}
        }
        return {i for i in keep if i in full}
    # A "Keep: ..." or "Remove: ..." line wins over anything else.
    for ln in lines:
        m = _DECISION_LINE.match(ln)
        if not m:
            continue
        drop = re.fullmatch(_DROP_WORDS, m.group(1), re.I) is not None
        rest = m.group(2)
        nums = _numbers(rest)
        if not nums:
            if _ALL.search(rest) and not _NONE.search(rest):
                return set() if drop else set(full)
            if _NONE.search(rest):
                return set(full) if drop else set()
            continue
        if not _numbers_dominate(rest):
            continue
        idx = _to_indices(nums, n)
        if idx is None:
            return None
        if _EXCEPT.search(rest) and _ALL.search(rest):
            return full - idx if not drop else idx
        return full - idx if drop else idx
    first = lines[0]
    # "All", "None", "All except 2".
    head = first[:60]
    if _ALL.search(head) and _EXCEPT.search(first):
        idx = _to_indices(_numbers(first), n)
        return None if idx is None else full - idx
    if re.match(r"^\W*(?:all|every)\b", first, re.I):
        return set(full)
    if re.match(r"^\W*(?:none|nothing|no\b)", first, re.I):
        return set()
    # The first line that carries numbers, e.g. "1, 3, 4" or "Samples 1 and 3 are good".
    # A line that is mostly words ("1. [great] This bread was...") echoes a sample instead.
    for ln in lines:
        nums = _numbers(ln)
        if nums and ln.rstrip().endswith(":"):
            continue  # a header such as "Example 1:" introduces an echo, it decides nothing
        if nums:
            return _to_indices(nums, n) if _numbers_dominate(ln) else None
    return None


def _numbers_dominate(s: str) -> bool:
    """True when ``s`` is a list of numbers with at most a few words around them."""
    words = [w for w in re.findall(r"[^\W\d_]+", s) if w.casefold() not in _FILLER]
    return len(words) <= 3

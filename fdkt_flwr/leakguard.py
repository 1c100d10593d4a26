"""Leak guard: block any outgoing message that carries private text verbatim.

DP bounds what an attacker can *infer*; it does not stop a bug (or a malicious patch) from putting
a private example into a reply. The guard is a last line of defence on the client: a Flower mod
that inspects every string in every outgoing record and blocks the whole reply when one of them
contains a private training example verbatim, or any run of ``span`` consecutive words of one.
A blocked reply is replaced by an error reply whose reason names the record and the count, never
the text, so the server records the block as a failure and the run goes on.

Matching is on normalised word n-grams (lower-case, punctuation stripped), so whitespace or case
changes do not hide a copy. The index holds hashes of n-grams only, not the text.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _h(words: Iterable[str]) -> bytes:
    return hashlib.blake2b(" ".join(words).encode(), digest_size=8).digest()


@dataclass(frozen=True)
class Finding:
    record: str
    key: str
    kind: str  # "verbatim" or "span"


class LeakIndex:
    """Hashes of every private example and of its ``span``-word windows."""

    # Private examples shorter than the span but at least this long are also looked for
    # *inside* longer strings; shorter ones ("Great product!") only as a whole string, since
    # any fluent text may contain them by chance.
    MIN_INNER_WORDS = 6

    def __init__(self, private_texts: Iterable[str], span: int = 12) -> None:
        if span < 2:
            raise ValueError(f"leak guard span={span}: must be >= 2 words")
        self.span = span
        self._full: set[bytes] = set()
        self._short: dict[int, set[bytes]] = {}
        self._grams: set[bytes] = set()
        for text in private_texts:
            w = _words(text)
            if not w:
                continue
            self._full.add(_h(w))
            if self.MIN_INNER_WORDS <= len(w) < span:
                self._short.setdefault(len(w), set()).add(_h(w))
            for i in range(max(0, len(w) - span + 1)):
                self._grams.add(_h(w[i:i + span]))

    def __len__(self) -> int:
        return len(self._full)

    def check(self, text: str) -> str | None:
        """``"verbatim"``/``"span"`` if ``text`` carries private text, else None."""
        w = _words(text)
        if not w:
            return None
        if _h(w) in self._full:
            return "verbatim"
        for i in range(max(0, len(w) - self.span + 1)):
            if _h(w[i:i + self.span]) in self._grams:
                return "span"
        return self._short_inside(w)

    def _short_inside(self, w: list[str]) -> str | None:
        for n, hashes in self._short.items():
            for i in range(len(w) - n + 1):
                if _h(w[i:i + n]) in hashes:
                    return "verbatim"
        return None


def _strings(content: Any) -> Iterator[tuple[str, str, str]]:
    """Yield ``(record, key, text)`` for every string in a RecordDict's config records."""
    for rname, record in content.items():
        if not hasattr(record, "items"):
            continue
        for key, value in record.items():
            if isinstance(value, str):
                yield rname, key, value
            elif isinstance(value, list):
                for v in value:
                    if isinstance(v, str):
                        yield rname, key, v
            elif isinstance(value, bytes | bytearray):
                yield rname, key, bytes(value).decode("utf-8", errors="ignore")


def scan(content: Any, index: LeakIndex) -> list[Finding]:
    findings = []
    for rname, key, text in _strings(content):
        kind = index.check(text)
        if kind:
            findings.append(Finding(rname, key, kind))
    return findings


def make_leak_guard(index_for: Callable[[Any], LeakIndex | None]) -> Callable:
    """A ClientApp mod; ``index_for(context)`` returns the client's index (None = guard off)."""
    from flwr.app import Error, Message

    def leak_guard(msg: Any, context: Any, call_next: Callable) -> Any:
        index = index_for(context)
        try:
            reply = call_next(msg, context)
        except Exception as exc:
            # Flower would send str(exc) to the server: it must not quote private text.
            if index is not None and index.check(str(exc)):
                log.error("leak guard: an exception message carried private text; "
                          "only its type is reported")
                raise RuntimeError(f"{type(exc).__name__} (message withheld by the leak guard: "
                                   "it contained private text)") from None
            raise
        if index is None:
            return reply
        if reply.has_error():
            if index.check(reply.error.reason):
                return Message(error=Error(code=reply.error.code, reason=(
                    "error reason withheld by the leak guard: it contained private text")),
                    reply_to=msg)
            return reply
        findings = scan(reply.content, index)
        if not findings:
            return reply
        where = sorted({f"{f.record}.{f.key}" for f in findings})
        reason = (f"leak guard blocked the reply: {len(findings)} string(s) in "
                  f"{', '.join(where)} carry private training text "
                  f"({', '.join(sorted({f.kind for f in findings}))}, span {index.span} words)")
        log.error(reason)
        return Message(error=Error(code=0, reason=reason), reply_to=msg)

    return leak_guard

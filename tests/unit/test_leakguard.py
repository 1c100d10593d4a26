"""The leak guard: blocks private text in outgoing messages (and the test of the test)."""

from __future__ import annotations

import time

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from hypothesis import given
from hypothesis import strategies as st

from fdkt_flwr.leakguard import LeakIndex, make_leak_guard, scan

PRIVATE = [
    "My daughter has celiac disease and these crackers were the only snack she could eat safely "
    "during our two week camping trip in Oregon.",
    "Arrived stale, tasted like cardboard, and the customer service never answered my emails.",
    "Great value!",
]


@pytest.fixture
def index() -> LeakIndex:
    return LeakIndex(PRIVATE, span=8)


def test_verbatim_copy_is_found_despite_case_and_spacing(index):
    assert index.check("  ARRIVED stale,   tasted like cardboard, and the customer service never "
                       "answered my emails  ") == "verbatim"


def test_long_span_inside_other_text_is_found(index):
    text = ("A new review: these crackers were the only snack she could eat safely, wow. "
            "Totally invented otherwise.")
    assert index.check(text) == "span"


def test_shorter_private_example_inside_a_longer_string_is_found(index):
    short = LeakIndex(["the jam tasted of burnt sugar and regret"], span=12)
    assert short.check("Honestly the jam tasted of burnt sugar and regret. Never again.")


def test_unrelated_and_common_phrases_pass(index):
    assert index.check("These cookies are crunchy and sweet, my kids loved them.") is None
    # A very short private example is only matched as a whole string, not inside others.
    assert index.check("Great value! The coffee is smooth and rich.") is None
    assert index.check("great value") == "verbatim"


@given(st.text(max_size=300))
def test_check_never_crashes(text):
    LeakIndex(PRIVATE, span=8).check(text)


def _msg(content: RecordDict, message_type: str) -> Message:
    md = Metadata(run_id=1, message_id="m1", src_node_id=1, dst_node_id=7,
                  reply_to_message_id="", group_id="1", created_at=time.time(), ttl=3600.0,
                  message_type=message_type)
    return Message(content, metadata=md)


def _app(leaky: bool, index: LeakIndex, crash: bool = False) -> ClientApp:
    app = ClientApp(mods=[make_leak_guard(lambda ctx: index)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if crash:  # an error whose message quotes a private example
            raise ValueError(f"could not parse row: {PRIVATE[1]}")
        texts = ["an honest synthetic review about tea"]
        if leaky:  # a deliberately broken client that ships a private example
            texts.append(PRIVATE[0])
        return Message(RecordDict({"demos": ConfigRecord({"texts": texts}),
                                   "metrics": MetricRecord({"n": 1})}), reply_to=msg)

    return app


def _ctx() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_a_leaky_client_is_blocked_with_a_reason_that_does_not_repeat_the_text(index):
    reply = _app(True, index)(_msg(RecordDict({}), "train"), _ctx())
    assert reply.has_error()
    reason = reply.error.reason
    assert reason.startswith("leak guard blocked the reply: 1 string(s) in demos.texts")
    assert "celiac" not in reason


def test_a_clean_client_passes_unchanged(index):
    reply = _app(False, index)(_msg(RecordDict({}), "train"), _ctx())
    assert not reply.has_error()
    assert list(reply.content["demos"]["texts"]) == ["an honest synthetic review about tea"]


def test_scan_reads_strings_in_lists_scalars_and_bytes(index):
    content = RecordDict({"a": ConfigRecord({"s": PRIVATE[1], "b": PRIVATE[1].encode()})})
    assert {(f.record, f.key) for f in scan(content, index)} == {("a", "s"), ("a", "b")}


def test_an_exception_quoting_private_text_is_reported_by_type_only(index):
    app = _app(False, index, crash=True)
    with pytest.raises(RuntimeError) as err:
        app(_msg(RecordDict({}), "train"), _ctx())
    assert "ValueError (message withheld by the leak guard" in str(err.value)
    assert "cardboard" not in str(err.value)

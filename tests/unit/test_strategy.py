"""The server strategy against a fake Grid: pools per client, failures survived and recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Error, Message

from fdkt_flwr.config import from_flat
from fdkt_flwr.llm import ScriptedLLM
from fdkt_flwr.protocol import (
    HELLO,
    SYNTHESIZE,
    TRAIN,
    DemonstrationReply,
    HelloReply,
    SynthesizeRequest,
    TrainReply,
    TrainRequest,
)
from fdkt_flwr.results import RunResults
from fdkt_flwr.strategy import FdktStrategy
from fdkt_flwr.tasks import TaskSpec

REVIEWS = TaskSpec("fine-food", "fine food product reviews", ["other", "great"])
TICKETS = TaskSpec("tickets", "IT support tickets", ["network", "printer", "login"])


class FakeEncoder:
    def encode(self, texts, **kw):
        rng = np.random.default_rng(len(texts))
        return rng.normal(size=(len(texts), 8)).astype("float32")


class FakeGrid:
    """Routes messages to in-process fake clients; a node in ``crash`` raises in ``phase``."""

    def __init__(self, tasks: dict[int, TaskSpec], crash: dict[int, str] | None = None,
                 names: dict[int, str] | None = None) -> None:
        self.tasks = tasks
        self.crash = crash or {}
        self.names = names or {}
        self.synthesize_requests: dict[str, int] = {}
        self.received: dict[int, list[list[tuple[str, int]]]] = {n: [] for n in tasks}
        self.zero_shot: dict[int, list] = {}
        self.cumulative: dict[int, list] = {}

    def get_node_ids(self):
        return list(self.tasks)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            nid = m.metadata.dst_node_id
            mtype = m.metadata.message_type
            if self.crash.get(nid) == mtype:
                replies.append(Message(error=Error(code=0, reason="RuntimeError: boom"),
                                       reply_to=m))
                continue
            task = self.tasks[nid]
            cid = self.names.get(nid, f"c{nid}")
            if mtype == HELLO:
                replies.append(Message(HelloReply(cid).to_record(), reply_to=m))
                continue
            if mtype == SYNTHESIZE:
                SynthesizeRequest.from_record(m.content)
                self.synthesize_requests[cid] = self.synthesize_requests.get(cid, 0) + 1
                demos = [(f"a {task.domain} example {i} about {name}", y)
                         for y, name in enumerate(task.label_names) for i in range(4)]
                rec = DemonstrationReply(client=cid, task=task, demos=demos,
                                         privacy={"epsilon": 2.5, "delta": 1e-5,
                                                  "private": True},
                                         stats={"demos_sent": len(demos)}).to_record()
            else:
                req = TrainRequest.from_record(m.content)
                # Requests carry every sample sent so far; keep this round's new ones.
                self.received[nid].append(req.samples[len(req.samples) - req.num_new:])
                self.cumulative.setdefault(nid, []).append(req.samples)
                self.zero_shot.setdefault(nid, []).append(req.zero_shot)
                rec = TrainReply(client=cid, metrics={
                    "accuracy": 0.8, "macro_f1": 0.7, "baseline_accuracy": 0.75,
                    "baseline_macro_f1": 0.6, "num_private": 10.0,
                    "num_synthetic": float(len(req.samples))}).to_record()
            replies.append(Message(rec, reply_to=m))
        return replies


def _answer(conv) -> str:
    # Unlabelled numbered lines: each prompt asks for one label, which the parser assigns.
    return "\n".join(f"{i + 1}. A brand new sample text number {i} that is long enough to keep."
                     for i in range(3))


def _strategy(tmp_path, llm=None, **extra):
    cfg = from_flat({"num-server-rounds": 2, "llm.samples-per-label": 2,
                     "selection.clusters": 2, "output-dir": str(tmp_path), **extra})
    results = RunResults(tmp_path, {})
    return FdktStrategy(cfg, llm or ScriptedLLM(_answer), FakeEncoder(), results), results


def test_each_client_gets_samples_in_its_own_label_set(tmp_path):
    strategy, results = _strategy(tmp_path)
    grid = FakeGrid({11: REVIEWS, 12: TICKETS})
    strategy.start(grid, num_rounds=2, timeout=10)
    for nid, task in grid.tasks.items():
        assert len(grid.received[nid]) == 2  # both rounds
        for samples in grid.received[nid]:
            assert samples, "no samples sent"
            assert {y for _, y in samples} <= set(range(len(task.label_names)))
    data = json.loads(results.path.read_text())
    assert set(data["clients"]) == {"c11", "c12"}
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert data["clients"]["c11"]["epsilon"] == 2.5


def test_fresh_samples_every_round(tmp_path):
    strategy, _ = _strategy(tmp_path)
    grid = FakeGrid({11: REVIEWS, 12: TICKETS})
    strategy.start(grid, num_rounds=2, timeout=10)
    r1, r2 = ({t for t, _ in s} for s in grid.received[11])
    assert not (r1 & r2)


@pytest.mark.parametrize("phase", [SYNTHESIZE, TRAIN])
def test_a_crashing_client_is_recorded_and_the_others_finish(tmp_path, phase):
    strategy, results = _strategy(tmp_path)
    grid = FakeGrid({11: REVIEWS, 12: TICKETS}, crash={12: phase})
    strategy.start(grid, num_rounds=1, timeout=10)
    data = json.loads(results.path.read_text())
    assert "c11" in data["rounds"][0]["clients"]
    assert len(data["failures"]) == 1
    failure = data["failures"][0]
    assert failure["round"] == 1 and "boom" in failure["reason"]
    assert failure["phase"] == ("synthesize" if phase == SYNTHESIZE else "train")


def test_missing_reply_is_recorded_as_a_timeout(tmp_path):
    strategy, results = _strategy(tmp_path)

    class SilentGrid(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            return [r for r in super().send_and_receive(messages, timeout)
                    if r.metadata.src_node_id != 12]

    strategy.start(SilentGrid({11: REVIEWS, 12: TICKETS}), num_rounds=1, timeout=5)
    reasons = [f["reason"] for f in json.loads(results.path.read_text())["failures"]]
    assert any("no reply within 5 s" in r for r in reasons)


def test_refused_release_is_recorded_and_nothing_is_augmented(tmp_path):
    strategy, results = _strategy(tmp_path)

    class RefusingGrid(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            out = []
            for m in messages:
                if m.metadata.message_type == SYNTHESIZE and m.metadata.dst_node_id == 12:
                    rec = DemonstrationReply(client="c12", task=TICKETS, demos=[],
                                             privacy={"epsilon": 8.0}, refused="budget spent"
                                             ).to_record()
                    out.append(Message(rec, reply_to=m))
                else:
                    out.extend(super().send_and_receive([m], timeout))
            return out

    grid = RefusingGrid({11: REVIEWS, 12: TICKETS})
    strategy.start(grid, num_rounds=1, timeout=5)
    data = json.loads(results.path.read_text())
    assert grid.received[12] == []
    assert any("refused: budget spent" in f["reason"] for f in data["failures"])


def test_zero_shot_baseline_samples_are_written_once_and_only_when_asked(tmp_path):
    strategy, _ = _strategy(tmp_path, baselines="local,zero-shot")
    grid = FakeGrid({11: REVIEWS, 12: TICKETS})
    strategy.start(grid, num_rounds=2, timeout=10)
    for nid, task in grid.tasks.items():
        first, second = grid.zero_shot[nid]
        assert first and second == first  # written once, re-sent (clients may restart)
        assert {y for _, y in first} <= set(range(len(task.label_names)))
    plain, _ = _strategy(tmp_path / "plain")
    grid = FakeGrid({11: REVIEWS, 12: TICKETS})
    plain.start(grid, num_rounds=1, timeout=10)
    assert grid.zero_shot[11] == [None]


def test_a_lost_node_is_attributed_through_reply_to_not_the_superlink_id(tmp_path):
    from fdkt_flwr.protocol import TRAIN as _TRAIN

    strategy, results = _strategy(tmp_path)

    class LosingGrid(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            for i, m in enumerate(messages):  # as the real Grid does on sending
                m.metadata.__dict__["_message_id"] = f"m{m.metadata.dst_node_id}-{i}"
            out = []
            for m in messages:
                if m.metadata.dst_node_id == 12 and m.metadata.message_type == _TRAIN:
                    err = Message(error=Error(code=0, reason="Node Unavailable"), reply_to=m)
                    err.metadata.__dict__["_src_node_id"] = 1  # the SuperLink answers for it
                    out.append(err)
                else:
                    out.extend(super().send_and_receive([m], timeout))
            return out

    strategy.start(LosingGrid({11: REVIEWS, 12: TICKETS}), num_rounds=1, timeout=5)
    failures = json.loads(results.path.read_text())["failures"]
    assert [(f["client"], f["reason"]) for f in failures] == [("c12", "Node Unavailable")]


def test_fewer_replies_than_the_minimum_end_the_run_with_results_written(tmp_path):
    strategy, results = _strategy(tmp_path, **{"min-replies": 2})
    grid = FakeGrid({11: REVIEWS, 12: TICKETS}, crash={12: TRAIN})
    with pytest.raises(RuntimeError, match="only 1 of 2 clients reported metrics, fewer than "
                                           "min-replies=2"):
        strategy.start(grid, num_rounds=2, timeout=5)
    data = json.loads(results.path.read_text())
    assert [r["round"] for r in data["rounds"]] == [1] and data["failures"]


def test_requests_carry_every_sample_sent_so_far(tmp_path):
    strategy, _ = _strategy(tmp_path)
    grid = FakeGrid({11: REVIEWS, 12: TICKETS})
    strategy.start(grid, num_rounds=2, timeout=10)
    first, second = grid.cumulative[11]
    assert second[: len(first)] == first and len(second) > len(first)


def test_a_run_killed_after_round_1_resumes_to_the_same_results(tmp_path, monkeypatch):
    import fdkt_flwr.server as server

    monkeypatch.setattr(server, "load_server_models",
                        lambda cfg: (ScriptedLLM(_answer), FakeEncoder()))
    base = {"num-server-rounds": 3, "llm.samples-per-label": 2, "selection.clusters": 2,
            "baselines": "local,dp-synthetic,zero-shot"}
    tasks = {11: REVIEWS, 12: TICKETS}
    full = FakeGrid(tasks)
    server.run_server(full, {**base, "output-dir": str(tmp_path / "full")})

    class Killed(Exception):
        pass

    class DiesInRound2(FakeGrid):
        def send_and_receive(self, messages, timeout=None):
            if any(m.metadata.message_type == TRAIN
                   and TrainRequest.from_record(m.content).server_round == 2 for m in messages):
                raise Killed("the server process was killed")
            return super().send_and_receive(messages, timeout)

    first = DiesInRound2(tasks)
    with pytest.raises(Killed):
        server.run_server(first, {**base, "output-dir": str(tmp_path / "part")})
    # A new run has new node ids; the clients are the same sites.
    second = FakeGrid({21: REVIEWS, 22: TICKETS}, names={21: "c11", 22: "c12"})
    server.run_server(second, {**base, "output-dir": str(tmp_path / "part"), "resume": True})

    a = json.loads((tmp_path / "full" / "results.json").read_text())
    b = json.loads((tmp_path / "part" / "results.json").read_text())
    assert b["status"] == "completed" and b["resumed"][0]["after_round"] == 1
    assert [r["clients"] for r in b["rounds"]] == [r["clients"] for r in a["rounds"]]
    assert b["clients"] == a["clients"]
    # Each client made exactly one DP release across both runs (none repeated on resume).
    for cid in ("c11", "c12"):
        assert first.synthesize_requests.get(cid, 0) + second.synthesize_requests.get(cid, 0) \
            == 1
    # What the clients trained on after the resume equals the uninterrupted run.
    assert second.cumulative[21] == full.cumulative[11][1:]

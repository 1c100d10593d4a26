"""Messages: round trips, and malformed content rejected with a clear error."""

from __future__ import annotations

import json
import math

import pytest
from flwr.app import ConfigRecord, RecordDict

from fdkt_flwr.client import ClientState
from fdkt_flwr.protocol import (
    DemonstrationReply,
    ProtocolError,
    SynthesizeRequest,
    TrainReply,
    TrainRequest,
)
from fdkt_flwr.results import RunResults
from fdkt_flwr.tasks import TaskSpec

TASK = TaskSpec("fine-food", "fine food product reviews", ["other", "great"],
                label_descriptions={"great": "glowing praise"})


def test_demonstration_reply_round_trip():
    reply = DemonstrationReply(client="client-0", task=TASK,
                               demos=[("tasty oats", 1), ("stale coffee", 0)],
                               privacy={"epsilon": 2.9, "delta": 1e-5, "private": True},
                               stats={"demos_sent": 2, "dp_training_s": 1.5})
    back = DemonstrationReply.from_record(reply.to_record())
    assert back == reply


def test_train_request_round_trip_with_and_without_zero_shot():
    for zs, demos in ((None, None), ([("zero shot text", 0)], [("own demo", 1)])):
        req = TrainRequest(2, [("a", 0), ("b", 1)], zs, num_new=1, demos=demos)
        assert TrainRequest.from_record(req.to_record()) == req


def test_train_reply_round_trip():
    rep = TrainReply("client-1", {"accuracy": 0.8}, {"per_class_f1": {"great": 0.9}})
    assert TrainReply.from_record(rep.to_record()) == rep
    assert SynthesizeRequest.from_record(SynthesizeRequest(3).to_record()).server_round == 3


def test_out_of_range_label_and_missing_records_are_rejected():
    rec = DemonstrationReply(client="c", task=TASK, demos=[("x", 5)], privacy={}).to_record()
    with pytest.raises(ProtocolError, match="label 5 outside"):
        DemonstrationReply.from_record(rec)
    with pytest.raises(ProtocolError, match="no 'synthetic' record"):
        TrainRequest.from_record(RecordDict({"config": ConfigRecord({"server-round": 1})}))


def test_client_state_round_trip_is_json_safe():
    st = ClientState(ledger={"epsilon": "inf"}, demos=[("d", 0)],
                     baselines={"local": {"accuracy": 0.7}})
    assert ClientState.from_state_dict(json.loads(json.dumps(st.state_dict()))) == st


def test_results_keep_inf_readable_and_write_atomically(tmp_path):
    res = RunResults(tmp_path, {"privacy.epsilon": math.inf})
    res.record_privacy("client-0", {"epsilon": math.inf, "delta": 1e-5, "private": False})
    res.record_round(1, {"client-0": {"accuracy": 0.9, "baseline_accuracy": 0.8,
                                      "num_private": 64.0, "num_synthetic": 10.0}}, {})
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["config"]["privacy.epsilon"] == "inf"
    assert data["clients"]["client-0"]["num_private"] == 64
    assert "∞" in res.summary_table()
    assert (tmp_path / "metrics.csv").read_text().startswith("round,client,accuracy")


def test_failure_reasons_keep_the_clients_exception_line():
    from fdkt_flwr.results import summarize_reason

    ray = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor"
           ".run()\x1b[39m (pid=1, ip=192.0.2.2)\n  File \"x.py\", line 3, in f\n    raise "
           "ConfigError(...)\nfdkt_flwr.config.ConfigError: dataset.private-size=120: client 1's "
           "partition has only 114 examples'>")
    assert summarize_reason(ray) == ("ConfigError: dataset.private-size=120: client 1's partition "
                                     "has only 114 examples")
    assert summarize_reason("Node Unavailable") == "Node Unavailable"
    flower = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor."
              "run() (pid=1)\n  File \"a.py\", line 65, in run\nflwr.clientapp.client_app."
              "ClientAppException: \nException ClientAppException occurred. Message: "
              "dataset.private-size=120: client 1's partition has only 114 examples'>")
    assert summarize_reason(flower) == ("dataset.private-size=120: client 1's partition has only "
                                        "114 examples")
    assert summarize_reason("") == "unknown"

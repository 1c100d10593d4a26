"""The messages between the FDKT server and its clients, and nothing else.

Two exchanges, each a typed dataclass with ``to_record``/``from_record`` so that what crosses the
network is defined in one place and checked on arrival:

* ``query.synthesize`` — the server asks for DP demonstrations; the client replies with
  :class:`DemonstrationReply`: (text, label) pairs sampled from its DP generator, the public task
  words, its privacy report and counts. Nothing else derived from private data leaves the client.
* ``train`` — the server sends :class:`TrainRequest` (fresh generated samples); the client trains
  its SLM on private + received data and replies with :class:`TrainReply` (metrics only).

Nested values (dicts) travel as JSON strings because Flower records hold scalars and flat lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fdkt_flwr.tasks import TaskSpec

SYNTHESIZE = "query.synthesize"
TRAIN = "train"


class ProtocolError(ValueError):
    """A message that does not follow the protocol (missing record, wrong types)."""


Sample = tuple[str, int]


def _samples_record(samples: list[Sample]) -> ConfigRecord:
    return ConfigRecord({"texts": [t for t, _ in samples], "labels": [int(y) for _, y in samples]})


def _samples_from(rec: Any) -> list[Sample]:
    texts, labels = list(rec["texts"]), list(rec["labels"])
    if len(texts) != len(labels):
        raise ProtocolError(f"{len(texts)} texts but {len(labels)} labels")
    return [(str(t), int(y)) for t, y in zip(texts, labels, strict=True)]


def _get(content: RecordDict, key: str) -> Any:
    if key not in content:
        raise ProtocolError(f"message has no '{key}' record (has: {', '.join(content.keys())})")
    return content[key]


@dataclass
class SynthesizeRequest:
    server_round: int

    def to_record(self) -> RecordDict:
        return RecordDict({"config": ConfigRecord({"server-round": self.server_round})})

    @classmethod
    def from_record(cls, content: RecordDict) -> SynthesizeRequest:
        return cls(server_round=int(_get(content, "config")["server-round"]))


@dataclass
class DemonstrationReply:
    """A client's DP release. ``refused`` is set (and ``demos`` empty) when its budget is spent."""

    client: str
    task: TaskSpec
    demos: list[Sample]
    privacy: dict[str, Any]
    stats: dict[str, int | float] = field(default_factory=dict)
    refused: str = ""

    def to_record(self) -> RecordDict:
        task = self.task.to_record()
        return RecordDict({
            "demos": _samples_record(self.demos),
            "task": ConfigRecord({"name": task["name"], "domain": task["domain"],
                                  "label_names": task["label_names"],
                                  "label_descriptions": task["label_descriptions"]}),
            "client": ConfigRecord({"id": self.client, "refused": self.refused,
                                    "privacy": json.dumps(self.privacy)}),
            "stats": MetricRecord({k: v for k, v in self.stats.items()}),
        })

    @classmethod
    def from_record(cls, content: RecordDict) -> DemonstrationReply:
        c = _get(content, "client")
        t = _get(content, "task")
        task = TaskSpec.from_record({k: t[k] for k in ("name", "domain", "label_names",
                                                        "label_descriptions")})
        demos = _samples_from(_get(content, "demos"))
        bad = [y for _, y in demos if not 0 <= y < len(task.label_names)]
        if bad:
            raise ProtocolError(f"demonstration label {bad[0]} outside the client's "
                                f"{len(task.label_names)} labels")
        return cls(client=str(c["id"]), task=task, demos=demos,
                   privacy=json.loads(str(c["privacy"])),
                   stats=dict(_get(content, "stats")), refused=str(c["refused"]))


@dataclass
class TrainRequest:
    """What a client trains on this round, all public: ``samples`` are *all* generated samples
    sent to it so far (the server owns that history, so a restarted client, or a resumed run,
    trains on exactly what an uninterrupted one would), of which the last ``num_new`` are this
    round's. ``zero_shot`` carries the zero-shot baseline's samples and ``demos`` echoes the
    client's own DP demonstrations for the dp-synthetic baseline, when those baselines are on.
    """

    server_round: int
    samples: list[Sample]
    zero_shot: list[Sample] | None = None
    num_new: int | None = None
    demos: list[Sample] | None = None

    def to_record(self) -> RecordDict:
        new = len(self.samples) if self.num_new is None else self.num_new
        content = RecordDict({"config": ConfigRecord({"server-round": self.server_round,
                                                      "num-new": new}),
                              "synthetic": _samples_record(self.samples)})
        if self.zero_shot is not None:
            content["zero-shot"] = _samples_record(self.zero_shot)
        if self.demos is not None:
            content["demos"] = _samples_record(self.demos)
        return content

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainRequest:
        cfg = _get(content, "config")
        samples = _samples_from(_get(content, "synthetic"))
        return cls(server_round=int(cfg["server-round"]), samples=samples,
                   zero_shot=_samples_from(content["zero-shot"]) if "zero-shot" in content
                   else None,
                   num_new=int(cfg["num-new"]) if "num-new" in cfg else len(samples),
                   demos=_samples_from(content["demos"]) if "demos" in content else None)


HELLO = "query.hello"


@dataclass
class HelloReply:
    """Who a node is (its client id). Sent when a resumed run maps new node ids to clients."""

    client: str

    def to_record(self) -> RecordDict:
        return RecordDict({"client": ConfigRecord({"id": self.client})})

    @classmethod
    def from_record(cls, content: RecordDict) -> HelloReply:
        return cls(client=str(_get(content, "client")["id"]))


@dataclass
class TrainReply:
    """Metrics of a client's SLM (and its local-only baseline) after a round. No data."""

    client: str
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> RecordDict:
        return RecordDict({
            "metrics": MetricRecord({k: float(v) for k, v in self.metrics.items()}),
            "client": ConfigRecord({"id": self.client, "details": json.dumps(self.details)}),
        })

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainReply:
        c = _get(content, "client")
        return cls(client=str(c["id"]), metrics=dict(_get(content, "metrics")),
                   details=json.loads(str(c["details"])))

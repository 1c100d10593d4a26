"""The FDKT augmentation strategy: the server half of FDKT, in Flower's configure/aggregate shape.

Per round, for every connected client:

1. ``configure_synthesize`` / ``aggregate_synthesize`` (first round, and for any client that has
   no demonstrations yet): ask for DP demonstrations, keep each client's in its own pool with its
   own task words (the paper's one-to-many, multi-task setting), and let the LLM filter them.
2. ``configure_train`` / ``aggregate_train``: write fresh samples for each client from its pool
   with the LLM, send them, collect the client's SLM metrics.

Failures (error replies, missing replies, refused releases) are recorded and survived: the round
goes on with the clients that answered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict

from fdkt_flwr.augmentation import AugmentationService, AugmentConfig
from fdkt_flwr.config import FdktConfig, parse_list
from fdkt_flwr.memory import release_memory
from fdkt_flwr.protocol import (
    HELLO,
    SYNTHESIZE,
    TRAIN,
    DemonstrationReply,
    HelloReply,
    ProtocolError,
    SynthesizeRequest,
    TrainReply,
    TrainRequest,
)
from fdkt_flwr.results import RunResults

log = logging.getLogger("flwr")


def augment_config(cfg: FdktConfig) -> AugmentConfig:
    """The server's augmentation settings from the run config."""
    return AugmentConfig(
        samples_per_label=cfg.llm.samples_per_label, demos_per_prompt=cfg.llm.demos_per_prompt,
        max_new_tokens=cfg.llm.max_new_tokens, temperature=cfg.llm.temperature,
        top_p=cfg.llm.top_p, selection_enabled=cfg.selection.enabled,
        clusters=cfg.selection.clusters,
        samples_per_cluster=cfg.selection.samples_per_cluster)


class FdktStrategy:
    """Owns the per-client demonstration pools and decides what each client gets each round."""

    def __init__(self, cfg: FdktConfig, llm: Any, encoder: Any, results: RunResults) -> None:
        self.cfg = cfg
        self.llm = llm
        self.encoder = encoder
        self.results = results
        self.service = AugmentationService(llm, augment_config(cfg), encoder, seed=cfg.seed)
        self.names: dict[int, str] = {}  # node id -> client id
        self._no_demos: set[str] = set()  # answered, but every demonstration was filtered out
        self._reply_node: dict[int, int] = {}  # id(reply) -> node its request went to
        self.sent: dict[str, list] = {}  # client id -> every generated sample sent so far
        self.client_demos: dict[str, list] = {}  # client id -> its DP demonstrations
        self.zero_shot: dict[str, list] = {}  # client id -> zero-shot baseline samples
        self.completed_rounds = 0
        self._round_server_stats: dict[str, dict[str, Any]] = {}

    def _node_of(self, reply: Message) -> int:
        return self._reply_node.get(id(reply), reply.metadata.src_node_id)

    def client_name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")

    # ------------------------------------------------------------------ synthesize

    def configure_synthesize(self, server_round: int, node_ids: Iterable[int]) -> list[Message]:
        return [Message(SynthesizeRequest(server_round).to_record(), dst_node_id=n,
                        message_type=SYNTHESIZE) for n in node_ids
                if self.names.get(n) not in self.service.pools
                and self.names.get(n) not in self._no_demos]

    def aggregate_synthesize(self, server_round: int, replies: Iterable[Message]) -> None:
        for reply in replies:
            nid = self._node_of(reply)
            if reply.has_error():
                self.results.record_failure(self.client_name(nid), server_round, "synthesize",
                                            reply.error.reason)
                continue
            try:
                demo = DemonstrationReply.from_record(reply.content)
            except (ProtocolError, KeyError, ValueError) as exc:
                self.results.record_failure(self.client_name(nid), server_round, "synthesize",
                                            f"malformed reply: {exc}")
                continue
            self.names[nid] = demo.client
            self.results.record_privacy(demo.client, demo.privacy)
            if demo.refused:
                log.warning("[server] %s refused the DP release: %s", demo.client, demo.refused)
                self.results.record_failure(demo.client, server_round, "synthesize",
                                            f"refused: {demo.refused}")
                continue
            if not demo.demos:
                # Survived and counted: the client still trains (on private data only).
                self.results.record_failure(demo.client, server_round, "synthesize",
                                            "no DP demonstrations left after cleaning; the "
                                            "client trains on private data only")
                self._no_demos.add(demo.client)
                self.client_demos[demo.client] = []
                continue
            self.client_demos[demo.client] = list(demo.demos)
            added = self.service.receive(demo.client, demo.task.to_record(), demo.demos)
            self._round_server_stats.setdefault(demo.client, {}).update(
                {"client_stats": demo.stats, "demonstrations": added})
            for k in ("dp_training_s", "sampling_s", "generator_load_s"):
                if k in demo.stats:
                    self.results.add_time(f"client_{k[:-2]}", float(demo.stats[k]))
            log.info("[server] %s: %d DP demonstrations received (%d new)", demo.client,
                     len(demo.demos), added.get("added", 0))

    # ------------------------------------------------------------------ train

    def _train_message(self, nid: int, name: str, server_round: int, new: list) -> Message:
        self.sent.setdefault(name, []).extend(new)
        baselines = parse_list(self.cfg.baselines)
        demos = self.client_demos.get(name, []) if "dp-synthetic" in baselines else None
        req = TrainRequest(server_round, list(self.sent[name]),
                           self._zero_shot_for(name, server_round), num_new=len(new),
                           demos=demos)
        return Message(req.to_record(), dst_node_id=nid, message_type=TRAIN)

    def configure_train(self, server_round: int, node_ids: Iterable[int]) -> list[Message]:
        messages = []
        to_serve: dict[str, int] = {}
        no_demos: dict[str, int] = {}
        for nid in node_ids:
            name = self.client_name(nid)
            pool = self.service.pools.get(name)
            if pool is None or not pool.demonstrations:
                if name in self._no_demos:  # nothing to augment from, but metrics still count
                    no_demos[name] = nid
                continue  # failed or refused: no train request
            to_serve[name] = nid
        self._write_zero_shot([*to_serve, *no_demos], server_round)
        messages += [self._train_message(nid, name, server_round, [])
                     for name, nid in no_demos.items()]
        # All clients' prompts go to the LLM together: one round costs about as many generate
        # calls as the slowest client needs, not their sum (benchmarks/bench.py augment).
        t0 = time.perf_counter()
        served = self.service.serve_all(to_serve, server_round) if to_serve else {}
        self.results.add_time("server_augmentation", time.perf_counter() - t0)
        for name, nid in to_serve.items():
            outcome = served[name]
            if isinstance(outcome, Exception):  # one client's LLM trouble must not end the run
                self.results.record_failure(name, server_round, "augment",
                                            f"{type(outcome).__name__}: {outcome}")
                # Survived and counted: the client still trains on what it has.
                messages.append(self._train_message(nid, name, server_round, []))
                continue
            samples, stats = outcome
            self._round_server_stats.setdefault(name, {}).update(stats)
            self.results.write_samples(name, server_round,
                                       self.service.pools[name].task.label_names, samples)
            log.info("[server] round %d: %d generated samples for %s", server_round,
                     len(samples), name)
            messages.append(self._train_message(nid, name, server_round, samples))
        release_memory()  # generation's activations are freed; the clients train next
        return messages

    def _zero_shot_for(self, name: str, server_round: int) -> list | None:
        """The zero-shot baseline's samples for ``name`` (written by :meth:`_write_zero_shot`),
        or None when that baseline is off or could not be written."""
        if "zero-shot" not in parse_list(self.cfg.baselines):
            return None
        return self.zero_shot.get(name)

    def _write_zero_shot(self, names: Iterable[str], server_round: int) -> None:
        """Zero-shot baseline samples, written once per client (the same per-label budget as a
        round of FDKT; all clients' prompts together) and sent every round; a client whose
        baseline failed is retried next round."""
        if "zero-shot" not in parse_list(self.cfg.baselines):
            return
        todo = [n for n in names if n not in self.zero_shot]
        if not todo:
            return
        t0 = time.perf_counter()
        out = self.service.serve_all(todo, server_round, zero_shot=True)
        self.results.add_time("server_zero_shot", time.perf_counter() - t0)
        for name, outcome in out.items():
            if isinstance(outcome, Exception):  # a baseline's trouble must not end the run
                self.results.record_failure(name, server_round, "zero-shot",
                                            f"{type(outcome).__name__}: {outcome}")
                continue
            samples, stats = outcome
            self._round_server_stats.setdefault(name, {})["zero_shot"] = stats
            self.zero_shot[name] = samples

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the last completed round (JSON-safe)."""
        return {"completed_rounds": self.completed_rounds,
                "service": self.service.state_dict(),
                "sent": {k: [list(x) for x in v] for k, v in self.sent.items()},
                "client_demos": {k: [list(x) for x in v] for k, v in self.client_demos.items()},
                "zero_shot": {k: [list(x) for x in v] for k, v in self.zero_shot.items()},
                "no_demos": sorted(self._no_demos)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def samples(d: dict) -> dict[str, list]:
            return {k: [(str(t), int(y)) for t, y in v] for k, v in d.items()}

        self.completed_rounds = int(state["completed_rounds"])
        self.service.load_state_dict(state["service"])
        self.sent = samples(state["sent"])
        self.client_demos = samples(state["client_demos"])
        self.zero_shot = samples(state["zero_shot"])
        self._no_demos = set(state["no_demos"])

    def identify(self, grid: Any, nodes: list[int], timeout: float) -> None:
        """Ask every node who it is (no data): a resumed run has new node ids."""
        msgs = [Message(RecordDict(), dst_node_id=n, message_type=HELLO) for n in nodes]
        for reply in self._send(grid, msgs, timeout, "hello", self.completed_rounds + 1):
            if not reply.has_error():
                self.names[self._node_of(reply)] = HelloReply.from_record(reply.content).client

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> dict[str, dict[str, Any]]:
        metrics: dict[str, dict[str, Any]] = {}
        for reply in replies:
            nid = self._node_of(reply)
            name = self.client_name(nid)
            if reply.has_error():
                self.results.record_failure(name, server_round, "train", reply.error.reason)
                continue
            try:
                tr = TrainReply.from_record(reply.content)
            except (ProtocolError, KeyError, ValueError) as exc:
                self.results.record_failure(name, server_round, "train",
                                            f"malformed reply: {exc}")
                continue
            metrics[tr.client] = {**tr.metrics, **tr.details}
            if "slm_s" in tr.metrics:
                self.results.add_time("client_slm_training", float(tr.metrics["slm_s"]))
        return metrics

    # ------------------------------------------------------------------ loop

    def _send(self, grid: Any, messages: list[Message], timeout: float, phase: str,
              server_round: int) -> list[Message]:
        if not messages:
            return []
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        # The SuperLink answers for a node it lost (src = the SuperLink itself), so a reply is
        # attributed to the node its request went to, found through reply_to_message_id.
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages
                if m.metadata.message_id}
        self._reply_node = {id(r): sent.get(r.metadata.reply_to_message_id,
                                            r.metadata.src_node_id) for r in replies}
        answered = set(self._reply_node.values())
        for m in messages:
            if m.metadata.dst_node_id not in answered:
                self.results.record_failure(self.client_name(m.metadata.dst_node_id),
                                            server_round, phase,
                                            f"no reply within {timeout:.0f} s")
        return replies

    def wait_for_clients(self, grid: Any, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.cfg.min_clients or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if len(nodes) < self.cfg.min_clients:
            raise RuntimeError(f"only {len(nodes)} client(s) connected after {timeout:.0f} s; "
                               f"min-clients={self.cfg.min_clients}")
        return nodes

    def start(self, grid: Any, num_rounds: int, timeout: float = 3600.0,
              checkpoint: Any = None) -> RunResults:
        """Run rounds ``completed_rounds + 1 .. num_rounds``; after each, ``checkpoint(self)``
        (if given) saves what a resumed run needs."""
        nodes = self.wait_for_clients(grid, timeout=min(timeout, 600.0))
        log.info("[server] %d clients connected; %d rounds", len(nodes), num_rounds)
        if self.completed_rounds:
            self.identify(grid, nodes, timeout)
            log.info("[server] resuming after round %d: %s", self.completed_rounds,
                     ", ".join(sorted(self.names.values())))
        for server_round in range(self.completed_rounds + 1, num_rounds + 1):
            self._round_server_stats = {}
            t0 = time.perf_counter()
            synth = self.configure_synthesize(server_round, nodes)
            if synth:
                log.info("[server] round %d: asking %d clients for DP demonstrations",
                         server_round, len(synth))
                self.aggregate_synthesize(server_round, self._send(grid, synth, timeout,
                                                                   "synthesize", server_round))
            train = self.configure_train(server_round, nodes)
            metrics = self.aggregate_train(server_round, self._send(grid, train, timeout,
                                                                    "train", server_round))
            self.results.record_round(server_round, metrics, self._round_server_stats)
            if len(metrics) < self.cfg.min_replies:
                raise RuntimeError(
                    f"round {server_round}: only {len(metrics)} of {len(nodes)} clients "
                    f"reported metrics, fewer than min-replies={self.cfg.min_replies} (see "
                    f"'failures' in {self.results.path})")
            self.results.add_time("rounds", time.perf_counter() - t0)
            self.completed_rounds = server_round
            if checkpoint is not None:
                checkpoint(self)
            log.info("[server] round %d done in %.1f s: %s", server_round,
                     time.perf_counter() - t0,
                     ", ".join(f"{c} acc={m.get('accuracy', float('nan')):.3f}"
                               for c, m in sorted(metrics.items())))
        return self.results

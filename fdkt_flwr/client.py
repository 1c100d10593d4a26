"""What an FDKT client does, without Flower: DP demonstrations out, SLM metrics out.

:class:`FdktClient` holds one client's private data, its privacy ledger and the synthetic
samples it has received. ``client_app.py`` builds one per message from the run config, the node
config and ``context.state`` (where :meth:`state_dict` goes between rounds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fdkt_flwr.config import ConfigError, DatasetConfig, FdktConfig
from fdkt_flwr.data import ClientData, client_data, local_client_data
from fdkt_flwr.memory import release_memory
from fdkt_flwr.protocol import DemonstrationReply, Sample, TrainReply
from fdkt_flwr.tasks import TaskSpec, load_task

if TYPE_CHECKING:  # privacy imports Opacus lazily; keep this module light to import
    from fdkt_flwr.privacy import PrivacySpec

log = logging.getLogger(__name__)


def client_identity(node_config: Mapping[str, Any], node_id: int) -> str:
    """A stable, human-readable client id: the node's ``name``, else ``client-<partition>``."""
    if "name" in node_config:
        return str(node_config["name"])
    if "partition-id" in node_config:
        return f"client-{int(node_config['partition-id'])}"
    return f"node-{node_id}"


def node_dataset_config(cfg: FdktConfig, node_config: Mapping[str, Any]) -> DatasetConfig:
    """A deployment node may name its own data in ``--node-config`` (``dataset-name=...``)."""
    ds = DatasetConfig(**{f: getattr(cfg.dataset, f) for f in cfg.dataset.__dataclass_fields__})
    for key, attr in (("dataset-name", "name"), ("text-column", "text_column"),
                      ("label-column", "label_column"), ("domain", "domain")):
        if key in node_config:
            setattr(ds, attr, str(node_config[key]))
    if "private-size" in node_config:
        ds.private_size = int(node_config["private-size"])
    return ds


def _data_key(cfg: FdktConfig, node_config: Mapping[str, Any]) -> tuple:
    return (repr(node_dataset_config(cfg, node_config)), cfg.seed,
            tuple(sorted((k, str(v)) for k, v in node_config.items())))


_CLIENT_DATA: dict[tuple, ClientData] = {}


def load_client_data(cfg: FdktConfig, node_config: Mapping[str, Any]) -> ClientData:
    """The client's data, partitioned once per process (every message and the leak guard
    ask for it; the source corpus itself is cached by :func:`fdkt_flwr.data.load_source`)."""
    key = _data_key(cfg, node_config)
    if key not in _CLIENT_DATA:
        ds = node_dataset_config(cfg, node_config)
        if "dataset-name" in node_config:  # deployment: the node's own data, no shared corpus
            _CLIENT_DATA[key] = local_client_data(ds, cfg.seed)
        elif "partition-id" not in node_config:
            raise ConfigError("node-config: needs partition-id/num-partitions (simulation) or "
                              "dataset-name (deployment)")
        else:
            _CLIENT_DATA[key] = client_data(ds, int(node_config["partition-id"]),
                                            int(node_config["num-partitions"]), cfg.seed)
    return _CLIENT_DATA[key]


_LEAK_INDEXES: dict[tuple, Any] = {}


def leak_index_for(cfg: FdktConfig, node_config: Mapping[str, Any]):
    """The client's leak-guard index (cached per process), or None when the guard is off."""
    if not cfg.privacy.leak_guard:
        return None
    from fdkt_flwr.leakguard import LeakIndex

    key = (_data_key(cfg, node_config), cfg.privacy.leak_guard_span)
    if key not in _LEAK_INDEXES:
        data = load_client_data(cfg, node_config)
        _LEAK_INDEXES[key] = LeakIndex(data.private.texts, span=cfg.privacy.leak_guard_span)
    return _LEAK_INDEXES[key]


@dataclass
class ClientState:
    """What a client keeps between rounds (and, for the ledger, between runs)."""

    ledger: dict[str, Any] | None = None
    demos: list[Sample] = field(default_factory=list)  # own DP demonstrations (public)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> metrics

    def state_dict(self) -> dict[str, Any]:
        return {"ledger": self.ledger, "demos": [list(s) for s in self.demos],
                "baselines": self.baselines}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> ClientState:
        def samples(key: str) -> list[Sample]:
            return [(str(t), int(y)) for t, y in d.get(key, [])]

        return cls(ledger=d.get("ledger"), demos=samples("demos"),
                   baselines=dict(d.get("baselines", {})))


class FdktClient:
    def __init__(self, cfg: FdktConfig, node_config: Mapping[str, Any], node_id: int,
                 state: ClientState | None = None, ledger_path: Path | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.client_id = client_identity(node_config, node_id)
        self.data = load_client_data(cfg, node_config)
        self.task: TaskSpec = load_task(self.data.task, self.data.label_names,
                                        node_config.get("domain", cfg.dataset.domain))
        self.node_config = dict(node_config)
        self.state = state or ClientState()
        self.ledger_path = ledger_path
        self._progress = progress

    def progress(self, msg: str) -> None:
        line = f"[{self.client_id}] {msg}"
        if self._progress:
            self._progress(line)
        else:
            log.info(line)

    # ------------------------------------------------------------------ privacy

    def privacy_spec(self):
        """The client's privacy settings; a deployment node may lower its own budget with
        ``privacy-epsilon`` in its node config (never raise it above the run's)."""
        from fdkt_flwr.privacy import PrivacySpec

        p = self.cfg.privacy
        epsilon = p.epsilon
        if "privacy-epsilon" in self.node_config:
            epsilon = min(epsilon, float(self.node_config["privacy-epsilon"]))
        return PrivacySpec(epsilon=epsilon, delta=p.delta, max_grad_norm=p.max_grad_norm,
                           noise_multiplier=p.noise_multiplier, accountant=p.accountant)

    def ledger(self):
        """The client's ledger: the node-local file if any (composes across runs), else
        ``context.state`` (composes across rounds of this run)."""
        from fdkt_flwr.privacy import PrivacyLedger

        spec = self.privacy_spec()
        if self.ledger_path is not None:
            return PrivacyLedger.load_or_create(self.ledger_path, spec)
        ledger = PrivacyLedger.for_spec(spec)
        if self.state.ledger is not None:
            ledger.load_state_dict(self.state.ledger)
        return ledger

    def _save_ledger(self, ledger) -> None:
        self.state.ledger = ledger.state_dict()
        if self.ledger_path is not None:
            ledger.save(self.ledger_path)

    # ------------------------------------------------------------------ synthesize

    def _refusal(self, server_round: int, exc: Exception, spec: PrivacySpec,
                 spent: float | None = None) -> DemonstrationReply:
        """An empty release that says why; ``spent`` is the ledger's ε when it could be read."""
        self.progress(f"round {server_round}: refused: {exc}")
        privacy = {"target_epsilon": spec.epsilon, "delta": spec.delta,
                   "private": spec.epsilon != float("inf")}
        if spent is not None:
            privacy["epsilon"] = spent
        return DemonstrationReply(client=self.client_id, task=self.task, demos=[],
                                  refused=str(exc), privacy=privacy,
                                  stats={"num_private": len(self.data.private)})

    def synthesize(self, server_round: int) -> DemonstrationReply:
        """DP fine-tune the generator on private data and release DP demonstrations."""
        from fdkt_flwr.generator import (
            GeneratorTrainConfig,
            clean_demonstrations,
            sample_demonstrations,
            train_dp_generator,
        )
        from fdkt_flwr.models import load_causal_lm
        from fdkt_flwr.privacy import BudgetExceededError, PrivacyError

        g = self.cfg.generator
        spec = self.privacy_spec()
        try:
            ledger = self.ledger()
        except PrivacyError as exc:
            # A node-local ledger kept under other settings (budget, δ, accountant): releasing
            # under the new ones would reset or mis-state what was spent, so refuse cleanly.
            return self._refusal(server_round, exc, spec)
        codes = self.task.control_codes()
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        model, tok = load_causal_lm(g.model, fresh=True)
        timing["generator_load_s"] = time.perf_counter() - t0
        gcfg = GeneratorTrainConfig(
            lora_rank=g.lora_rank, epochs=g.epochs, batch_size=g.batch_size,
            max_physical_batch_size=g.max_physical_batch_size, learning_rate=g.learning_rate,
            max_length=g.max_length, seed=self.cfg.seed * 1000 + self.data.partition_id)
        private = self.data.private
        self.progress(f"round {server_round}: DP fine-tuning {g.model} on {len(private)} private "
                      f"examples (budget ε={spec.epsilon:g}, δ={spec.delta:g})")
        t0 = time.perf_counter()
        try:
            model, report = train_dp_generator(
                model, tok, private.texts, [codes[y] for y in private.labels], spec, ledger,
                gcfg, progress=self.progress, label=f"round-{server_round}")
        except BudgetExceededError as exc:
            return self._refusal(server_round, exc, spec, spent=ledger.spent())
        timing["dp_training_s"] = time.perf_counter() - t0
        self._save_ledger(ledger)
        self.progress(f"round {server_round}: spent ε={report.epsilon:.3f}; sampling "
                      f"{g.demos_per_label} demonstrations per label")
        t0 = time.perf_counter()
        samples = sample_demonstrations(
            model, tok, codes, g.demos_per_label, max_new_tokens=g.max_new_tokens,
            temperature=g.temperature, top_p=g.top_p, batch_size=g.sample_batch_size,
            seed=gcfg.seed)
        demos, drops = clean_demonstrations(samples, codes, min_chars=20, max_chars=2000,
                                            near_dup_threshold=0.8)
        timing["sampling_s"] = time.perf_counter() - t0
        del model  # the trained generator is not needed again; give its memory back
        release_memory()
        self.state.demos = list(demos)
        stats = {"num_private": len(private), "demos_sampled": len(samples),
                 # label counts of the private data are not released: they would leak the
                 # label histogram, which DP-SGD does not cover. Only the size is reported.
                 "demos_sent": len(demos), **{f"demos_dropped_{k}": v for k, v in drops.items()},
                 **timing}
        return DemonstrationReply(client=self.client_id, task=self.task, demos=demos,
                                  privacy=report.to_dict(), stats=stats)

    # ------------------------------------------------------------------ train + evaluate

    def _slm_config(self):
        from fdkt_flwr.slm import SLMConfig

        s = self.cfg.slm
        return SLMConfig(model=s.model, epochs=s.epochs, batch_size=s.batch_size,
                         learning_rate=s.learning_rate, max_length=s.max_length,
                         synthetic_weight=s.synthetic_weight, schedule=s.schedule,
                         validation_fraction=s.validation_fraction,
                         seed=self.cfg.seed * 1000 + self.data.partition_id)

    def _fit(self, synthetic: list[Sample]) -> dict[str, Any]:
        """Train the SLM on private + ``synthetic`` and evaluate it on the held-out split."""
        from fdkt_flwr.slm import train_and_evaluate

        result = train_and_evaluate(
            (self.data.private.texts, self.data.private.labels),
            ([t for t, _ in synthetic], [y for _, y in synthetic]),
            (self.data.test.texts, self.data.test.labels),
            self.task.label_names, self._slm_config(), progress=self.progress)
        release_memory()  # the trained SLM is gone; the actor waits for the next round
        test = result["test"]
        return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
                "per_class_f1": test.get("per_class_f1", {}),
                "best_epoch": result.get("best_epoch"),
                "seconds": float(result.get("seconds", 0.0))}

    def _valid(self, samples: list[Sample]) -> list[Sample]:
        k = len(self.task.label_names)
        return [(t, y) for t, y in samples if 0 <= y < k]

    def train(self, server_round: int, received: list[Sample],
              zero_shot: list[Sample] | None = None, num_new: int | None = None,
              demos: list[Sample] | None = None) -> TrainReply:
        """Train the SLM on private + ``received`` (every sample sent so far); evaluate on the
        held-out split.

        Baselines (``baselines`` setting) are trained once, on the same private and test
        split: ``local`` (private only), ``dp-synthetic`` (private + this client's own DP
        demonstrations, no LLM; echoed by the server as ``demos`` so that a restarted client
        needs no state) and ``zero-shot`` (private + the LLM's samples written without
        demonstrations, sent by the server as ``zero_shot``).
        """
        from fdkt_flwr.config import parse_list

        synth = self._valid(received)
        if demos is not None:
            self.state.demos = self._valid(demos)
        self.progress(f"round {server_round}: training SLM {self.cfg.slm.model} on "
                      f"{len(self.data.private)} private + {len(synth)} synthetic examples")
        fdkt = self._fit(synth)
        new = len(received) if num_new is None else num_new
        metrics = {"accuracy": fdkt["accuracy"], "macro_f1": fdkt["macro_f1"],
                   "num_private": float(len(self.data.private)),
                   "num_synthetic": float(len(synth)), "num_received": float(new),
                   "num_test": float(len(self.data.test)), "slm_s": fdkt["seconds"]}
        details: dict[str, Any] = {"per_class_f1": fdkt["per_class_f1"],
                                   "best_epoch": fdkt["best_epoch"]}
        sources = {"local": lambda: [], "dp-synthetic": lambda: self.state.demos,
                   "zero-shot": lambda: self._valid(zero_shot or [])}
        for name in parse_list(self.cfg.baselines):
            if name not in self.state.baselines:
                if name == "zero-shot" and zero_shot is None:
                    continue  # the server has not sent them (yet)
                if name == "dp-synthetic" and not self.state.demos and demos is None:
                    continue
                self.progress(f"round {server_round}: training the {name} baseline")
                self.state.baselines[name] = self._fit(sources[name]())
            b = self.state.baselines[name]
            prefix = "baseline" if name == "local" else name.replace("-", "_")
            metrics[f"{prefix}_accuracy"] = b["accuracy"]
            metrics[f"{prefix}_macro_f1"] = b["macro_f1"]
            details[f"{prefix}_per_class_f1"] = b["per_class_f1"]
        if "baseline_accuracy" in metrics:
            metrics["gain_accuracy"] = metrics["accuracy"] - metrics["baseline_accuracy"]
        self.progress(f"round {server_round}: accuracy {metrics['accuracy']:.3f}" + "".join(
            f", {k.removesuffix('_accuracy')} {v:.3f}" for k, v in metrics.items()
            if k.endswith("_accuracy") and k != "gain_accuracy"))
        return TrainReply(client=self.client_id, metrics=metrics, details=details)

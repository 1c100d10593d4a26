"""Real Flower: an own SuperLink, `flwr run`, the run's true status, results.json.

Small settings but real embedded models, real DP-SGD, a real LLM call and a real SLM.
"""

from __future__ import annotations

import json
import math

import pytest

from fdkt_flwr.launcher import run_app
from tests.conftest import requires_embedded_models

pytestmark = [pytest.mark.integration, requires_embedded_models]

TINY = {
    "num-server-rounds": 1,
    "dataset.private-size": 24,
    "dataset.test-size": 24,
    "generator.epochs": 1,
    "generator.batch-size": 8,
    "generator.max-length": 32,
    "generator.demos-per-label": 2,
    "generator.max-new-tokens": 24,
    "llm.samples-per-label": 2,
    "llm.max-new-tokens": 64,
    "selection.clusters": 2,
    "slm.epochs": 1,
    "slm.max-length": 48,
}


def test_one_round_with_two_clients_completes_and_writes_the_contract(tmp_path):
    out = tmp_path / "run"
    outcome = run_app({**TINY, "privacy.epsilon": 3.0, "output-dir": str(out)},
                      num_clients=2, timeout=1200, stream=False)
    assert outcome.status == "finished:completed", outcome.details
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "completed"
    assert res["config"]["privacy.epsilon"] == 3.0
    assert res["config"]["dataset.private-size"] == 24
    assert set(res["clients"]) == {"client-0", "client-1"}
    for c in res["clients"].values():
        for key in ("accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1",
                    "epsilon", "delta", "num_private", "num_synthetic"):
            assert key in c, key
        assert 0 < float(c["epsilon"]) <= 3.0
        assert c["num_private"] == 24
    assert len(res["rounds"]) == 1
    assert res["timing"]["total"] > 0
    # A normal run at ε ≤ 8 passes the leak guard: no blocked reply, no failure of any kind.
    assert res["failures"] == []
    assert (out / "metrics.csv").exists()


def test_invalid_value_fails_the_run_with_a_message_naming_the_key(tmp_path):
    outcome = run_app({"privacy.epsilon": -1.0, "output-dir": str(tmp_path / "bad")},
                      num_clients=2, timeout=300, stream=False, validate=False)
    assert outcome.status == "finished:failed"
    assert "privacy.epsilon=-1.0: must be > 0" in outcome.details + outcome.log_path.read_text()


def test_inf_epsilon_is_reported_as_non_private(tmp_path):
    out = tmp_path / "inf"
    outcome = run_app({**TINY, "privacy.epsilon": math.inf, "output-dir": str(out)},
                      num_clients=2, timeout=1200, stream=False)
    assert outcome.status == "finished:completed", outcome.details
    res = json.loads((out / "results.json").read_text())
    for report in res["privacy"].values():
        assert report["private"] is False
        assert "non-private" in report["mode"]


def test_a_crashing_client_does_not_stop_the_run_and_is_recorded(tmp_path):
    # With Dirichlet α=0.1 and seed 0, client 1's partition holds 114 examples, so asking for
    # 120 makes that client raise in its handler, every round; the others must finish.
    out = tmp_path / "crash"
    outcome = run_app({**TINY, "dataset.partitioner": "dirichlet", "dataset.dirichlet-alpha": 0.1,
                       "dataset.private-size": 120, "generator.batch-size": 24,
                       "output-dir": str(out)}, num_clients=3, timeout=1500, stream=False)
    assert outcome.status == "finished:completed", outcome.details
    res = json.loads((out / "results.json").read_text())
    assert set(res["rounds"][0]["clients"]) == {"client-0", "client-2"}
    failure = next(f for f in res["failures"] if "private-size=120" in f["reason"])
    assert failure["round"] == 1 and failure["phase"] == "synthesize"

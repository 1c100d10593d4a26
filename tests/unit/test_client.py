"""The client's privacy gate, without Flower and without loading a model."""

from __future__ import annotations

import pytest

from fdkt_flwr.client import FdktClient
from fdkt_flwr.config import from_flat
from fdkt_flwr.privacy import PrivacyLedger, PrivacySpec


@pytest.fixture
def cfg():
    return from_flat({"dataset.private-size": 16, "dataset.test-size": 8,
                      "privacy.epsilon": 3.0})


def test_a_ledger_kept_under_another_budget_is_a_clean_refusal(cfg, tmp_path, monkeypatch):
    # The node's ledger file was written under ε=2; this run asks for ε=3. Releasing would
    # reset or mis-state what was already spent, so the client refuses before any training.
    path = tmp_path / "ledger.json"
    PrivacyLedger.for_spec(PrivacySpec(epsilon=2.0, delta=1e-5, max_grad_norm=1.0)).save(path)
    before = path.read_text()

    def no_model(*a, **k):
        raise AssertionError("a refused release must not load or train the generator")

    monkeypatch.setattr("fdkt_flwr.models.load_causal_lm", no_model)
    client = FdktClient(cfg, {"partition-id": 0, "num-partitions": 2}, node_id=1,
                        ledger_path=path)
    reply = client.synthesize(server_round=1)
    assert reply.demos == []
    assert "budget ε=2" in reply.refused and "ε=3" in reply.refused
    assert reply.privacy["target_epsilon"] == 3.0
    assert path.read_text() == before  # nothing recorded, nothing reset

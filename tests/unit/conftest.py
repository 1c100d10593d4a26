"""Unit-tier fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    # Flower builds a Message only inside a running task; let unit tests pretend to be one.
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)

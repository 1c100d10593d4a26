"""A real two-job Hydra sweep: two Flower simulations, each on its own SuperLink, then the report.

Tiny settings (2 clients, 1 round, small data and models' budgets) but the real pipeline: the
embedded models, DP-SGD, the server LLM and the client SLMs. Takes a few minutes on a CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fdkt_flwr.sweep import owned_processes
from tests.conftest import requires_embedded_models

pytestmark = [pytest.mark.integration, requires_embedded_models]

ROOT = Path(__file__).resolve().parents[2]

# tests/integration/test_flower_run.py's TINY, in Hydra's underscore spelling.
TINY = {
    "num_server_rounds": 1,
    "dataset.private_size": 24,
    "dataset.test_size": 24,
    "generator.epochs": 1,
    "generator.batch_size": 8,
    "generator.max_length": 32,
    "generator.demos_per_label": 2,
    "generator.max_new_tokens": 24,
    "llm.samples_per_label": 2,
    "llm.max_new_tokens": 64,
    "selection.clusters": 2,
    "slm.epochs": 1,
    "slm.max_length": 48,
}


def test_two_job_privacy_sweep_runs_reports_and_leaves_no_process(tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fdkt_flwr.sweep", "-m", "privacy.epsilon=3,inf",
           *(f"{k}={v}" for k, v in TINY.items()), "launch.clients=2", "launch.timeout=1500",
           f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "FDKT_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3000)
    out = proc.stdout + proc.stderr
    (tmp_path / "sweep_output.txt").write_text(out)  # kept by pytest's tmp_path for a look

    jobs = [json.loads(p.read_text()) for p in sweep_dir.rglob("job.json")]
    assert len(jobs) == 2, out[-3000:]
    for job in jobs:
        assert job["status"] == "completed", (job.get("details"), out[-3000:])
        assert Path(job["config"]["output-dir"]).is_absolute()
        res = json.loads((Path(job["config"]["output-dir"]) / "results.json").read_text())
        assert res["status"] == "completed"
        assert set(res["clients"]) == {"client-0", "client-1"}
    assert proc.returncode == 0, out[-3000:]
    assert "job 1/2" in out and "job 2/2" in out

    df = pd.read_csv(sweep_dir / "sweep.csv")
    assert df["job"].nunique() == 2
    assert set(df["status"]) == {"completed"}
    assert len(df) == 2 * 2  # jobs × clients
    md = (sweep_dir / "sweep.md").read_text()
    assert "| FDKT, ε=3 | 3 |" in md
    assert "| FDKT, non-private (ε=∞) | ∞ |" in md
    assert "| local-only baseline |" in md
    png = sweep_dir / "privacy_utility.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"

    # every process a job started (SuperLink, SuperExec, simulation, Ray) carries the sweep
    # folder in its command line or environment; none may be left
    assert owned_processes(str(sweep_dir)) == []
    leftover = subprocess.run(["pgrep", "-af", "flower-superlink"], capture_output=True,
                              text=True).stdout
    assert str(sweep_dir) not in leftover

    # the same sweep again: both jobs are skipped, nothing starts
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert (again.stdout + again.stderr).count("skipped: already completed") == 2

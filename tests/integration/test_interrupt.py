"""`fdkt-run` interrupted mid-run stops everything it started (Flower 1.42 leaves a SuperLink,
its simulation and Ray running when its parent just exits)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import requires_embedded_models
from tests.integration.test_flower_run import TINY

pytestmark = [pytest.mark.integration, requires_embedded_models]


def test_sigterm_while_the_run_streams_stops_every_process_it_started(tmp_path):
    args = [f"{k}={v}" for k, v in {**TINY, "output-dir": f'"{tmp_path / "run"}"'}.items()]
    proc = subprocess.Popen([sys.executable, "-m", "fdkt_flwr.launcher", "--clients", "2", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 600
        for line in proc.stdout:  # until the clients are at work: SuperLink, simulation, Ray
            seen.append(line)
            if "DP fine-tuning" in line or time.monotonic() > deadline:
                break
        assert any("DP fine-tuning" in line for line in seen), "".join(seen[-20:])
        started = psutil.Process(proc.pid).children(recursive=True)
        assert any("superlink" in " ".join(p.cmdline()) for p in started)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        proc.communicate(timeout=120)
        assert time.monotonic() - t0 < 90
    finally:
        if proc.poll() is None:
            proc.kill()
    _, alive = psutil.wait_procs(started, timeout=30)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [" ".join(p.cmdline())[:120] for p in alive]

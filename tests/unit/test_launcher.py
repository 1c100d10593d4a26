"""The launcher's process handling, without a real SuperLink."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from fdkt_flwr import launcher


def _fake_flwr(bin_dir: Path, pid_file: Path) -> None:
    """A `flwr` that, like `flwr log --stream`, prints a line and then follows for a minute."""
    exe = bin_dir / "flwr"
    exe.write_text(f"#!/bin/sh\necho $$ > {pid_file}\necho 'streaming'\nexec sleep 60\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child that is not reaped yet is a zombie: not alive for our purpose
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_interrupted_log_follower_is_killed_not_awaited(tmp_path, monkeypatch):
    """SIGTERM while streaming a run's log must end promptly and leave no follower behind
    (the old code waited for `flwr log --stream` to finish, i.e. for the whole run)."""
    pid_file = tmp_path / "pid"
    _fake_flwr(tmp_path, pid_file)
    monkeypatch.setattr(launcher, "BIN", tmp_path)
    sl = launcher.SuperLink(tmp_path, port=1)

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt("signal 15")

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sl.flwr("log", "1", "--stream", timeout=120, stream_to=interrupt)
    assert time.monotonic() - t0 < 10
    assert not _alive(int(pid_file.read_text()))


def test_sigterm_during_log_stream_raises_in_main_thread(tmp_path, monkeypatch):
    """The real path: run_app's SIGTERM handler turns the signal into KeyboardInterrupt."""
    pid_file = tmp_path / "pid"
    _fake_flwr(tmp_path, pid_file)
    monkeypatch.setattr(launcher, "BIN", tmp_path)
    sl = launcher.SuperLink(tmp_path, port=1)
    previous = signal.signal(signal.SIGTERM, launcher._raise_interrupt)
    try:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            sl.flwr("log", "1", "--stream", timeout=120, stream_to=lambda line: None)
        assert time.monotonic() - t0 < 10
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not _alive(int(pid_file.read_text()))

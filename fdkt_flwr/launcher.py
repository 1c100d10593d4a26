"""Run the app through real Flower with a SuperLink this process owns, and report the true status.

``flwr run`` alone leaves a background SuperLink behind and exits 0 even when the run failed.
:func:`run_app` starts its own ``flower-superlink --simulation`` on a free loopback port (with
runtime dependency installation disabled), submits the app with ``flwr run``, follows the logs,
asks ``flwr list`` for the run's real status, and stops the SuperLink by its PID, always.

CLI (the README's first command uses it)::

    fdkt-run [--clients 3] [--cpus-per-client 1] [key=value ...]   # keys as in --run-config
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fdkt_flwr.config import ConfigError, from_flat, toml_value
from fdkt_flwr.results import default_output_dir

APP_DIR = Path(__file__).resolve().parent.parent
CONNECTION = "fdkt-local"
BIN = Path(sys.executable).parent  # flower-superlink, flwr, flower-superexec of this venv


@dataclass
class RunOutcome:
    run_id: int | None
    status: str  # e.g. "finished:completed", "finished:failed", "timeout"
    details: str
    results_path: Path
    log_path: Path

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed" and self.results_path.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config_arg(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["privacy.epsilon=3", 'output-dir="/x"']`` -> typed values, as TOML would read them."""
    import tomllib

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{pair}: expected key=value")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = tomllib.loads(f"x = {v}")["x"]
        except tomllib.TOMLDecodeError:
            out[k.strip()] = v  # a bare word: treat as a string
    return out


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment of every Flower process we start: own FLWR_HOME, no runtime installs.

    The SuperLink starts ``flower-superexec`` and ``flwr-*`` by name, so this interpreter's
    ``bin`` goes first on PATH: a venv used without activation (``.venv/bin/python -m pytest``,
    as CI does) must still resolve them.
    """
    env = dict(os.environ)
    env.update({"FLWR_HOME": str(flwr_home),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
                "HF_HUB_OFFLINE": env.get("HF_HUB_OFFLINE", "1"),
                "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
                "TOKENIZERS_PARALLELISM": "false",
                # see fdkt_flwr/__init__.py: spinning OpenMP threads starve co-located apps
                "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE")})
    return env


class SuperLink:
    """A ``flower-superlink --simulation`` owned by this process (context manager)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.flwr_home = workdir / ".flwr"
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "superlink.log"

    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home)

    def __enter__(self) -> SuperLink:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        exe = BIN / "flower-superlink"
        self.proc = subprocess.Popen(
            [str(exe), "--insecure", "--simulation", "--host", "127.0.0.1", "--port",
             str(self.port), "--disable-runtime-dependency-installation",
             "--database", str(self.workdir / "state.db")],
            cwd=self.workdir, env=self.env(), stdout=self.log_path.open("w"),
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_healthy()
        except BaseException:
            # __exit__ does not run when __enter__ raises (or is interrupted): stop it here.
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float = 120) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with {self.proc.returncode}; see "
                                   f"{self.log_path}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"flower-superlink did not become healthy in {timeout:.0f} s; see "
                           f"{self.log_path}")

    def stop(self) -> None:
        """Stop the SuperLink and everything it started (superexec, simulation, Ray), by PID.

        Descendants are collected first: some (Ray) start their own sessions, so killing the
        process group alone can leave them behind.
        """
        if not self.proc or self.proc.poll() is not None:
            return
        import psutil

        try:
            procs = [psutil.Process(self.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def flwr(self, *args: str, timeout: float = 120, stream_to=None) -> subprocess.CompletedProcess:
        exe = BIN / "flwr"
        if stream_to is not None:
            p = subprocess.Popen([str(exe), *args], cwd=self.workdir, env=self.env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            out = []
            # A silent log must not block past the deadline: a timer kills the follower.
            timer = threading.Timer(timeout, p.kill)
            timer.start()
            try:
                assert p.stdout is not None
                for line in p.stdout:
                    out.append(line)
                    stream_to(line)
            except BaseException:
                # Interrupted (SIGTERM, Ctrl-C): `flwr log --stream` would follow the run to its
                # end, and the wait below would hang the shutdown with it.
                p.kill()
                raise
            finally:
                timer.cancel()
                p.wait()
            return subprocess.CompletedProcess(p.args, p.returncode, "".join(out), "")
        return subprocess.run([str(exe), *args], cwd=self.workdir, env=self.env(),
                              capture_output=True, text=True, timeout=timeout)


def run_app(overrides: dict[str, Any], *, num_clients: int = 3, cpus_per_client: int = 1,
            timeout: float = 3600, app_dir: Path = APP_DIR, workdir: Path | None = None,
            stream: bool = True, validate: bool = True) -> RunOutcome:
    """Validate, run the app on an own SuperLink, and return its true outcome.

    ``validate=False`` skips the local check, so that tests can prove the ServerApp itself
    rejects a bad setting.
    """
    overrides = dict(overrides)
    if validate:
        from_flat(overrides)  # fail fast, before any process starts
    if not overrides.get("output-dir"):
        overrides["output-dir"] = str(default_output_dir("local"))
    out_dir = Path(overrides["output-dir"]).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fdkt-superlink-"))
    log_path = out_dir / "flwr_run.log"

    def emit(line: str) -> None:
        with log_path.open("a") as f:
            f.write(line)
        if stream:
            sys.stdout.write(line)
            sys.stdout.flush()

    start = time.monotonic()
    # A SIGTERM (CI timeout, `kill`) must still stop the SuperLink: turn it into an exception
    # so that the context manager below runs its cleanup.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _submit_and_follow(overrides, num_clients, cpus_per_client, timeout, app_dir,
                                  workdir, out_dir, log_path, emit, start)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _submit_and_follow(overrides: dict[str, Any], num_clients: int, cpus_per_client: int,
                       timeout: float, app_dir: Path, workdir: Path, out_dir: Path,
                       log_path: Path, emit: Any, start: float) -> RunOutcome:
    flat = {k.replace("_", "-"): v for k, v in overrides.items()}
    with SuperLink(workdir) as sl:
        submit = sl.flwr("run", str(app_dir), CONNECTION, "--format", "json", "--run-config",
                         run_config_arg(flat), "--federation-config",
                         f"num-supernodes={num_clients} "
                         f"client-resources-num-cpus={cpus_per_client}")
        try:
            answer = json.loads(submit.stdout)
        except ValueError:
            answer = {}
        if "run-id" not in answer:
            emit(submit.stdout + submit.stderr)
            text = (submit.stdout + submit.stderr).strip()
            why = str(answer.get("error-message") or (text.splitlines()[-1] if text else
                                                       "flwr run failed"))
            return RunOutcome(None, "submit-failed", why.replace("\n", "; "),
                              out_dir / "results.json", log_path)
        run_id = int(answer["run-id"])
        emit(f"[fdkt-run] run {run_id} submitted to the SuperLink on port {sl.port}\n")
        sl.flwr("log", str(run_id), CONNECTION, "--stream", timeout=timeout, stream_to=emit)
        status, details = "timeout", f"no final status after {timeout:.0f} s"
        while time.monotonic() - start < timeout + 60:
            listing = sl.flwr("list", CONNECTION, "--run-id", str(run_id), "--format", "json")
            try:
                run = json.loads(listing.stdout)["runs"][0]
                status, details = run["status"], run.get("status-details", "")
            except (ValueError, KeyError, IndexError):
                pass
            if status.startswith("finished"):
                break
            time.sleep(2)
    return RunOutcome(run_id, status, details, out_dir / "results.json", log_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="fdkt-run", description="Run FDKT as a Flower simulation on an own SuperLink.")
    ap.add_argument("overrides", nargs="*", help="run-config overrides, e.g. privacy.epsilon=3")
    ap.add_argument("--clients", type=int, default=3, help="simulated SuperNodes (clients)")
    ap.add_argument("--cpus-per-client", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--quiet", action="store_true", help="do not stream the run's logs")
    args = ap.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        outcome = run_app(overrides, num_clients=args.clients,
                          cpus_per_client=args.cpus_per_client, timeout=args.timeout,
                          stream=not args.quiet)
    except ConfigError as exc:
        print(f"fdkt-run: invalid setting: {exc}", file=sys.stderr)
        return 2
    if not outcome.ok:
        print(f"fdkt-run: run {outcome.run_id} {outcome.status}: {outcome.details}",
              file=sys.stderr)
        return 1
    print(f"fdkt-run: run {outcome.run_id} completed; results: {outcome.results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

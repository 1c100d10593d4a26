"""Multi-machine deployment: one SuperLink (TLS + SuperNode auth), SuperNodes with their own data.

Two layers:

* **Command builders** (:func:`superlink_command`, :func:`supernode_command`,
  :func:`write_connection`, :func:`write_node_config`): the exact ``flower-superlink`` /
  ``flower-supernode`` invocations and the Flower Configuration for ``flwr``. The CLI below and
  ``docs/deployment.md`` use them on real machines.
* **Process owners** (:class:`SecureSuperLink`, :class:`SuperNodeProcess`,
  :class:`LoopbackDeployment`): start those commands as child processes of this one, on
  loopback, and stop every process they caused *by PID* — including the detached
  ``flower-superexec`` / ``flwr-serverapp`` / ``flwr-clientapp`` descendants, which Flower starts
  in new sessions (so killing a process group alone leaves them running). Integration tests
  and the one-machine demo use these.

Security defaults: TLS and ``--enable-supernode-auth`` always; runtime dependency installation
disabled on the SuperLink (``--disable-runtime-dependency-installation`` and the environment
variable) and never enabled on SuperNodes (their default is off). **Insecure mode (no TLS, no
node auth) exists only for loopback demos**: the builders refuse it for any other address.

What crosses the network in an FDKT run: only the client replies (DP demonstrations, the
privacy report, counts and SLM metrics — every reply passes the client's leak guard) and the
server's requests (generated samples); private text and models stay on the SuperNode machines.

CLI (``python -m fdkt_flwr.deploy --help``)::

    # SuperLink machine
    python -m fdkt_flwr.deploy superlink --certs certs --host 0.0.0.0 --port 8000
    # operator / developer machine (once per node; the node's .pub key came from its owner)
    python -m fdkt_flwr.deploy connection --superlink link.example.org:8000 --ca certs/ca.crt
    flwr supernode register keys/site-a.pub fdkt-deploy --name site-a
    # each SuperNode machine
    python -m fdkt_flwr.deploy supernode --superlink link.example.org:8000 --ca ca.crt \\
        --key keys/site-a --name site-a --data /data/site.csv --text-column text \\
        --label-column label --ledger-path /var/lib/fdkt/ledger.json
    # operator: run, follow, and report the true status
    python -m fdkt_flwr.deploy run privacy.epsilon=4 output-dir='"/srv/fdkt/run1"'
    # everything on one machine (loopback demo with real TLS and node auth)
    python -m fdkt_flwr.deploy demo --node 'name="a" dataset-name="/tmp/a.csv"' --node ...
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shlex
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdkt_flwr.certs import CertBundle, make_ca_and_server, make_node_keypair
from fdkt_flwr.launcher import (
    APP_DIR,
    BIN,
    RunOutcome,
    flower_env,
    free_port,
    parse_overrides,
    run_config_arg,
    toml_value,
)

CONNECTION = "fdkt-deploy"
#: Environment variable carrying this deployment's id into every process it causes (Flower
#: passes the environment down to superexec, serverapp and clientapp processes), so that
#: :func:`marked_processes` can find any descendant that escaped the process tree.
MARKER_ENV = "FDKT_DEPLOY_ID"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

LineFn = Callable[[str], None]


class DeployError(RuntimeError):
    """A deployment step failed; the message names the step and where its log is."""


# --------------------------------------------------------------------------- addresses

def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[::1]:port"`` -> ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IPs (the only hosts where insecure mode is allowed)."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_loopback_for_insecure(host: str, what: str) -> None:
    if not is_loopback(host):
        raise ValueError(
            f"{what}: insecure mode (no TLS, no SuperNode authentication) is only allowed on "
            f"loopback (127.0.0.1/localhost/::1), not {host!r}; give certificates instead "
            "(python -m fdkt_flwr.certs ca-and-server --host ...)")


# --------------------------------------------------------------------------- command builders

def superlink_command(*, host: str = "0.0.0.0", port: int = 8000,
                      certs: CertBundle | None = None, database: Path | None = None,
                      log_file: Path | None = None) -> list[str]:
    """The ``flower-superlink`` command of a deployment SuperLink.

    With ``certs``: TLS on the one HTTP port (Fleet, Control and ServerApp runtime APIs) and
    ``--enable-supernode-auth`` (only registered node keys may connect). Without: insecure,
    allowed only when ``host`` is a loopback address. Runtime dependency installation is
    always disabled (1.42 would otherwise ``uv sync`` a fresh venv per run).
    """
    cmd = [str(BIN / "flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if certs is None:
        _require_loopback_for_insecure(host, "flower-superlink")
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile",
                str(certs.server_cert), "--ssl-keyfile", str(certs.server_key),
                "--enable-supernode-auth"]
    if database is not None:
        cmd += ["--database", str(database)]  # keeps registered nodes and runs across restarts
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    return cmd


def supernode_command(*, superlink: str, node_config: Path | str,
                      ca_cert: Path | None = None, private_key: Path | None = None,
                      runtime_port: int = 9094,
                      max_wait_time: float | None = None) -> list[str]:
    """The ``flower-supernode`` command of one site.

    ``node_config``: a ``.toml`` file (see :func:`write_node_config`; no shell quoting to get
    wrong) or a ``key="value" ...`` string as ``--node-config`` takes it. ``ca_cert`` and
    ``private_key`` together give TLS and SuperNode authentication; leaving both out means
    insecure, allowed only for a loopback ``superlink``. The runtime API (``--port``) stays
    on 127.0.0.1. Runtime dependency installation is not enabled (the SuperNode default).
    """
    host, _ = split_address(superlink)
    cmd = [str(BIN / "flower-supernode"), "--superlink", superlink,
           "--port", str(runtime_port), "--node-config", str(node_config)]
    if ca_cert is None and private_key is None:
        _require_loopback_for_insecure(host, "flower-supernode")
        cmd.append("--insecure")
    elif ca_cert is None or private_key is None:
        raise ValueError("flower-supernode: give both the CA certificate (TLS) and the node's "
                         "private key (SuperNode authentication), or neither (loopback demo)")
    else:
        cmd += ["--root-certificates", str(ca_cert),
                "--auth-supernode-private-key", str(private_key)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


def node_config_arg(node_config: Mapping[str, Any]) -> str:
    """``{"name": "site-a", "private-size": 24}`` -> ``name="site-a" private-size=24``."""
    return run_config_arg(dict(node_config))


def write_node_config(path: Path, node_config: Mapping[str, Any]) -> Path:
    """Write a node config as TOML (what ``--node-config file.toml`` reads; flat keys).

    The keys FDKT reads are in ``fdkt_flwr.client``: ``name``, ``dataset-name``,
    ``text-column``, ``label-column``, ``domain``, ``private-size``, ``ledger-path``.
    """
    path = Path(path)
    if path.suffix != ".toml":
        raise ValueError(f"{path}: flower-supernode only reads node config files ending .toml")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Quote every key: TOML would read a bare dotted key as a nested table.
    path.write_text("".join(f"{json.dumps(str(k))} = {toml_value(v)}\n"
                            for k, v in node_config.items()))
    return path


def write_connection(flwr_home: Path, address: str, ca_cert: Path | None,
                     name: str = CONNECTION, make_default: bool = True) -> Path:
    """Add (or replace) ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml``; keep the rest.

    With ``ca_cert``: ``root-certificates`` (absolute path; TLS verified against our CA).
    Without: ``insecure = true``, allowed only for a loopback ``address``.
    """
    import tomli_w

    host, _ = split_address(address)
    entry: dict[str, Any] = {"address": address}
    if ca_cert is None:
        _require_loopback_for_insecure(host, "Flower Configuration")
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(ca_cert).expanduser().resolve())
    path = Path(flwr_home).expanduser() / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    links = cfg.setdefault("superlink", {})
    links[name] = entry
    if make_default or "default" not in links:
        links["default"] = name
    path.write_text(tomli_w.dumps(cfg))
    return path


def base_env(flwr_home: Path, marker: str | None = None) -> dict[str, str]:
    """:func:`~fdkt_flwr.launcher.flower_env`, plus the marker that finds our processes."""
    env = flower_env(flwr_home)
    if marker:
        env[MARKER_ENV] = marker
    return env


# --------------------------------------------------------------------------- processes

def _psutil():
    import psutil  # installed with accelerate/peft; only needed to stop process trees

    return psutil


def process_tree(pid: int) -> list[Any]:
    """``pid`` and all its descendants (psutil processes), parents first; [] if it is gone."""
    psutil = _psutil()
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def marked_processes(marker: str) -> list[Any]:
    """Live processes (other than this one) whose environment carries ``MARKER_ENV=marker``."""
    psutil = _psutil()
    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if p.environ().get(MARKER_ENV) == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def terminate_processes(procs: Sequence[Any], timeout: float = 15.0) -> list[int]:
    """SIGTERM each process by PID, SIGKILL whatever is left after ``timeout``; returns PIDs."""
    psutil = _psutil()
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(list(procs), timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in procs]


def stop_process_tree(proc: subprocess.Popen, timeout: float = 15.0,
                      sig: int = signal.SIGTERM) -> list[int]:
    """Stop ``proc`` and every descendant by PID; returns the PIDs signalled.

    The tree is listed *before* any signal (a dead parent's children are re-parented and lost).
    ``sig=SIGKILL`` simulates a crash (no graceful deactivation at the SuperLink).
    """
    psutil = _psutil()
    procs = process_tree(proc.pid)
    if sig == signal.SIGKILL:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
    pids = terminate_processes(procs, timeout) if procs else []
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)  # reap our direct child
    return pids


class _Proc:
    """A child process with its own session and log file, stopped by PID (tree)."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.cmd, self.env, self.cwd, self.log_path = cmd, env, cwd, log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {shlex.join(self.cmd)}\n".encode())
            log.flush()
            # A new session so that a terminal's Ctrl-C reaches us first, not them.
            self.popen = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> list[int]:
        if self.popen is None:
            return []
        return stop_process_tree(self.popen, timeout=timeout, sig=sig)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# --------------------------------------------------------------------------- the flwr CLI

class FlowerCli:
    """``flwr`` commands against one connection of one Flower Configuration (FLWR_HOME).

    Every call has a hard timeout; ``follow`` kills ``flwr log`` at its deadline even when no
    line arrives (a silent stream must not hang a test or a script).
    """

    def __init__(self, flwr_home: Path, connection: str = CONNECTION, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.flwr_home = Path(flwr_home)
        self.connection = connection
        self.cwd = cwd or self.flwr_home.parent
        self.env = env or base_env(self.flwr_home)

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def _json(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        """Run ``flwr ... --format json``; a failure raises DeployError with Flower's message."""
        res = self(*args, "--format", "json", timeout=timeout)
        try:
            out = json.loads(res.stdout)
        except ValueError:
            msg = (res.stdout + res.stderr).strip().splitlines()
            raise DeployError(f"flwr {' '.join(args)}: {msg[-1] if msg else 'failed'}") from None
        if isinstance(out, dict) and out.get("success") is False:
            why = str(out.get("error-message", out)).strip().replace("\n\n", "; ")
            raise DeployError(f"flwr {' '.join(args[:2])}: {why}")
        return out

    def register(self, public_key: Path, name: str | None = None) -> int:
        """``flwr supernode register``: allow this key to connect; returns the node id."""
        args = ["supernode", "register", str(public_key), self.connection]
        if name:
            args += ["--name", name]
        out = self._json(*args)
        if not out.get("success") or "node-id" not in out:
            raise DeployError(f"flwr supernode register {public_key}: {out}")
        return int(out["node-id"])

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list``: ``[{"node-id": "...", "status": "online", ...}]``."""
        return list(self._json("supernode", "list", self.connection).get("nodes", []))

    def wait_online(self, node_ids: Sequence[int], timeout: float = 120) -> None:
        """Block until every node id is ``online`` at the SuperLink."""
        want = {str(n) for n in node_ids}
        deadline = time.monotonic() + timeout
        while True:
            online = {str(n.get("node-id")) for n in self.nodes() if n.get("status") == "online"}
            if want <= online:
                return
            if time.monotonic() > deadline:
                raise DeployError(f"nodes {sorted(want - online)} not online after {timeout:.0f} "
                                  "s (see the SuperNode logs)")
            time.sleep(1.0)

    def submit(self, overrides: Mapping[str, Any], app_dir: Path = APP_DIR,
               validate: bool = True) -> int:
        """``flwr run APP CONNECTION --run-config ...``; returns the run id (no waiting).

        ``validate`` checks the overrides here first, so that a typo or a bad value fails at
        once with one line naming the key (Flower itself only says "Invalid run configuration").
        """
        if validate:
            from fdkt_flwr.config import ConfigError, from_flat

            try:
                from_flat(dict(overrides))
            except ConfigError as exc:
                raise DeployError(f"invalid setting: {exc}") from None
        flat = {k.replace("_", "-"): v for k, v in overrides.items()}
        args = ["run", str(app_dir), self.connection]
        if flat:
            args += ["--run-config", run_config_arg(flat)]
        out = self._json(*args, timeout=300)
        try:
            return int(out["run-id"])
        except (KeyError, TypeError, ValueError):
            raise DeployError(f"flwr run: no run id in {out}") from None

    def follow(self, run_id: int, timeout: float, on_line: LineFn | None = None) -> bool:
        """Stream ``flwr log RUN --stream`` to ``on_line`` until the run ends or ``timeout``.

        Returns False when the deadline killed the stream.
        """
        p = subprocess.Popen([str(BIN / "flwr"), "log", str(run_id), self.connection,
                              "--stream"], cwd=self.cwd, env=self.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            assert p.stdout is not None
            for line in p.stdout:
                if on_line is not None:
                    on_line(line)
        finally:
            timer.cancel()
            p.wait()
        return p.returncode != -signal.SIGKILL

    def status(self, run_id: int) -> tuple[str, str]:
        """The run's true status from ``flwr list`` (``flwr run``/``log`` exit 0 on failures)."""
        out = self._json("list", self.connection, "--run-id", str(run_id))
        try:
            run = out["runs"][0]
            return str(run["status"]), str(run.get("status-details", ""))
        except (KeyError, IndexError, TypeError):
            return "unknown", json.dumps(out)[:300]

    def wait_finished(self, run_id: int, timeout: float = 120) -> tuple[str, str]:
        deadline = time.monotonic() + timeout
        status, details = "timeout", f"no final status after {timeout:.0f} s"
        while time.monotonic() < deadline:
            with contextlib.suppress(DeployError, subprocess.TimeoutExpired):
                status, details = self.status(run_id)
            if status.startswith("finished"):
                break
            time.sleep(2)
        return status, details

    def stop_run(self, run_id: int) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self("stop", str(run_id), self.connection)

    def run(self, overrides: Mapping[str, Any], *, timeout: float = 3600,
            app_dir: Path = APP_DIR, on_line: LineFn | None = None,
            log_path: Path | None = None, validate: bool = True) -> RunOutcome:
        """Submit, follow the logs, and return the run's true outcome.

        ``output-dir`` should be an absolute path *on the SuperLink machine* (the ServerApp
        writes results.json there); ``RunOutcome.results_path`` points at it.
        """
        out_dir = Path(str(overrides.get("output-dir", ""))).expanduser()
        if log_path is None:
            # Next to results.json when that folder is usable here (loopback, shared disk);
            # an operator on another machine keeps the log in its working directory.
            log_path = self.cwd / "flwr_run.log"
            if str(out_dir) not in ("", "."):
                with contextlib.suppress(OSError):
                    out_dir.mkdir(parents=True, exist_ok=True)
                    log_path = out_dir / "flwr_run.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)

        def emit(line: str) -> None:
            with log_path.open("a") as f:
                f.write(line)
            if on_line is not None:
                on_line(line)

        try:
            run_id = self.submit(overrides, app_dir, validate=validate)
        except DeployError as exc:
            emit(f"{exc}\n")
            return RunOutcome(None, "submit-failed", str(exc), out_dir / "results.json",
                              log_path)
        emit(f"[fdkt-deploy] run {run_id} submitted via connection {self.connection}\n")
        start = time.monotonic()
        finished = self.follow(run_id, timeout, emit)
        status, details = self.wait_finished(run_id, 120 if finished else 20)
        if not status.startswith("finished"):
            self.stop_run(run_id)  # don't leave a run holding the nodes
            status, details = "timeout", (f"run {run_id} not finished after "
                                          f"{time.monotonic() - start:.0f} s ({status})")
        return RunOutcome(run_id, status, details, out_dir / "results.json", log_path)


# --------------------------------------------------------------------------- process owners

def _https_ok(url: str, ca_cert: Path | None) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else None
    try:
        with urllib.request.urlopen(url, timeout=3, context=ctx):
            return True
    except OSError:
        return False


class SecureSuperLink:
    """A deployment ``flower-superlink`` owned by this process (context manager).

    TLS + SuperNode authentication unless ``certs`` is None (loopback demos only). Writes the
    Flower Configuration (connection :data:`CONNECTION`) into ``workdir/.flwr`` and offers the
    ``flwr`` commands as :attr:`cli`. :meth:`stop` ends the SuperLink and every descendant.
    """

    def __init__(self, workdir: Path, certs: CertBundle | None, host: str = "127.0.0.1",
                 port: int | None = None, marker: str | None = None,
                 connect_host: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.certs = certs
        self.host = host
        self.port = port or free_port()
        # Clients dial this name; with host 0.0.0.0 that is still 127.0.0.1 here.
        self.connect_host = connect_host or ("127.0.0.1" if host in ("0.0.0.0", "::")
                                             else host)
        self.marker = marker or uuid.uuid4().hex
        self.flwr_home = self.workdir / ".flwr"
        self.env = base_env(self.flwr_home, self.marker)
        self.log_path = self.workdir / "superlink.log"
        self.proc = _Proc(superlink_command(host=host, port=self.port, certs=certs,
                                            database=self.workdir / "state.db"),
                          self.env, self.workdir, self.log_path)
        self.cli = FlowerCli(self.flwr_home, CONNECTION, cwd=self.workdir, env=self.env)

    @property
    def address(self) -> str:
        return join_address(self.connect_host, self.port)

    def __enter__(self) -> SecureSuperLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_connection(self.flwr_home, self.address,
                         self.certs.ca_cert if self.certs else None)
        self.proc.start()
        scheme = "https" if self.certs else "http"
        url = f"{scheme}://{self.address}/health"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise DeployError(f"flower-superlink exited; see {self.log_path}:\n"
                                  f"{self.proc.log_tail()}")
            # Verifying against our CA also proves the certificate's SANs cover the address.
            if _https_ok(url, self.certs.ca_cert if self.certs else None):
                return
            time.sleep(0.5)
        self.stop()
        raise DeployError(f"flower-superlink not healthy at {url} after {timeout:.0f} s; see "
                          f"{self.log_path}")

    def stop(self) -> list[int]:
        return self.proc.stop()


@dataclass
class SuperNodeProcess:
    """One site's ``flower-supernode`` (own FLWR_HOME, own node config file, own key)."""

    name: str
    workdir: Path
    node_config: dict[str, Any]
    superlink: str
    ca_cert: Path | None
    private_key: Path | None
    env: dict[str, str]
    node_id: int | None = None
    runtime_port: int = field(default_factory=free_port)
    proc: _Proc | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "supernode.log"

    def start(self) -> None:
        # The node's own FLWR_HOME, as on its own machine (FABs are unpacked there).
        env = {**self.env, "FLWR_HOME": str(self.workdir / ".flwr")}
        cfg_path = write_node_config(self.workdir / "node.toml",
                                     {"name": self.name, **self.node_config})
        cmd = supernode_command(superlink=self.superlink, node_config=cfg_path,
                                ca_cert=self.ca_cert, private_key=self.private_key,
                                runtime_port=self.runtime_port)
        self.proc = _Proc(cmd, env, self.workdir, self.log_path)
        self.proc.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def stop(self, crash: bool = False) -> list[int]:
        """Stop the node and its ClientApp processes; ``crash=True`` sends SIGKILL (no
        goodbye to the SuperLink, like a machine that lost power)."""
        if self.proc is None:
            return []
        return self.proc.stop(signal.SIGKILL if crash else signal.SIGTERM)


class LoopbackDeployment:
    """A whole deployment on this machine: certificates, a secure SuperLink, N SuperNodes.

    The same commands and security as on N machines (TLS, registered node keys, per-node
    ``--node-config``), only every address is 127.0.0.1. ``secure=False`` is a plain-HTTP demo
    without node auth (loopback only). Context manager; :meth:`stop` ends everything by PID
    and :meth:`leftover_processes` lets a test prove it.
    """

    def __init__(self, workdir: Path | None = None, secure: bool = True) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="fdkt-deploy-"))
        self.marker = uuid.uuid4().hex
        self.certs = (make_ca_and_server(self.workdir / "certs") if secure else None)
        self.link = SecureSuperLink(self.workdir / "superlink", self.certs, marker=self.marker)
        self.nodes: dict[str, SuperNodeProcess] = {}

    @property
    def cli(self) -> FlowerCli:
        return self.link.cli

    def __enter__(self) -> LoopbackDeployment:
        self.link.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_node(self, name: str, node_config: Mapping[str, Any], start: bool = True
                 ) -> SuperNodeProcess:
        """Make the site's key, register it (secure mode), and start its SuperNode.

        ``node_config`` is what the site would pass as ``--node-config`` (``name`` is added).
        """
        if name in self.nodes:
            raise ValueError(f"node {name!r} already added")
        node_dir = self.workdir / "nodes" / name
        key = None
        node_id = None
        if self.certs is not None:
            key, pub = make_node_keypair(node_dir / "keys", name)
            node_id = self.cli.register(pub, name=name)
        node = SuperNodeProcess(name=name, workdir=node_dir, node_config=dict(node_config),
                                superlink=self.link.address,
                                ca_cert=self.certs.ca_cert if self.certs else None,
                                private_key=key, env=self.link.env, node_id=node_id)
        self.nodes[name] = node
        if start:
            node.start()
        return node

    def wait_online(self, timeout: float = 120) -> None:
        """Secure mode: until every registered node is online (insecure: nothing to check)."""
        ids = [n.node_id for n in self.nodes.values() if n.node_id is not None and n.alive()]
        if ids:
            self.cli.wait_online(ids, timeout)

    def run(self, overrides: Mapping[str, Any], **kw: Any) -> RunOutcome:
        return self.cli.run(overrides, **kw)

    def stop(self) -> list[int]:
        """Stop every node, then the SuperLink, then anything still carrying our marker."""
        pids: list[int] = []
        for node in self.nodes.values():
            pids += node.stop()
        pids += self.link.stop()
        stray = marked_processes(self.marker)
        if stray:  # e.g. a superexec that was re-parented before we listed the tree
            pids += terminate_processes(stray)
        return pids

    def leftover_processes(self) -> list[int]:
        """PIDs of live processes this deployment caused (empty after :meth:`stop`)."""
        return [p.pid for p in marked_processes(self.marker)]


# --------------------------------------------------------------------------- CLI

def _exec(cmd: list[str], env: dict[str, str], dry_run: bool) -> int:
    print("$", shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    os.execve(cmd[0], cmd, env)  # replace this process: signals go straight to Flower
    return 0  # not reached


def _certs_from_dir(d: Path) -> CertBundle:
    b = CertBundle(ca_cert=d / "ca.crt", ca_key=d / "ca.key", server_cert=d / "server.pem",
                   server_key=d / "server.key")
    for p in (b.ca_cert, b.server_cert, b.server_key):
        if not p.exists():
            raise SystemExit(f"{p}: missing; make it with python -m fdkt_flwr.certs "
                             f"ca-and-server --out {d} --host <name or IP>")
    return b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fdkt_flwr.deploy",
                                 description="Deploy FDKT on several machines, securely.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("superlink", help="start the SuperLink (TLS + SuperNode auth)")
    p.add_argument("--certs", type=Path, help="folder with ca.crt, server.pem, server.key")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--database", type=Path, default=Path("superlink-state.db"))
    p.add_argument("--insecure", action="store_true", help="loopback demos only")
    p.add_argument("--dry-run", action="store_true", help="print the command only")

    p = sub.add_parser("supernode", help="start this site's SuperNode with its own data")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    p.add_argument("--ca", type=Path, help="the CA certificate (ca.crt)")
    p.add_argument("--key", type=Path, help="this node's private key (registered .pub)")
    p.add_argument("--name", required=True, help="client id in results.json")
    p.add_argument("--data", required=True, help="CSV/JSONL/Parquet file of this site")
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--domain")
    p.add_argument("--private-size", type=int)
    p.add_argument("--ledger-path", help="node-local privacy ledger (persists across runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other node-config key, TOML-typed (repeatable)")
    p.add_argument("--port", type=int, default=9094, help="the node's local runtime API port")
    p.add_argument("--config-file", type=Path, default=Path("fdkt-node.toml"),
                   help="where to write the node config")
    p.add_argument("--dry-run", action="store_true")

    p = sub.add_parser("connection", help="write the flwr connection (Flower Configuration)")
    p.add_argument("--superlink", required=True)
    p.add_argument("--ca", type=Path)
    p.add_argument("--name", default=CONNECTION)
    p.add_argument("--flwr-home", type=Path,
                   default=Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser())

    p = sub.add_parser("run", help="run the app on the SuperLink; report the true status")
    p.add_argument("overrides", nargs="*", help="run-config overrides, e.g. privacy.epsilon=3")
    p.add_argument("--connection", default=CONNECTION)
    p.add_argument("--flwr-home", type=Path,
                   default=Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser())
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--app", type=Path, default=APP_DIR, help="the app folder (pyproject.toml)")

    p = sub.add_parser("demo", help="SuperLink + SuperNodes on this machine (TLS + auth)")
    p.add_argument("--node", action="append", required=True,
                   help='a node config as for --node-config, with name="..." (repeatable)')
    p.add_argument("--insecure", action="store_true", help="plain HTTP, no node auth")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("overrides", nargs="*")

    args = ap.parse_args(argv)
    try:
        return _main(args)
    except (ValueError, DeployError) as exc:  # ConfigError is a ValueError too
        print(f"fdkt-deploy {args.cmd}: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.cmd == "superlink":
        certs = None if args.insecure else _certs_from_dir(args.certs or Path("certs"))
        cmd = superlink_command(host=args.host, port=args.port, certs=certs,
                                database=args.database)
        return _exec(cmd, base_env(Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser()),
                     args.dry_run)
    if args.cmd == "supernode":
        cfg: dict[str, Any] = {"name": args.name, "dataset-name": args.data}
        for key, val in (("text-column", args.text_column), ("label-column", args.label_column),
                         ("domain", args.domain), ("private-size", args.private_size),
                         ("ledger-path", args.ledger_path)):
            if val is not None:
                cfg[key] = val
        cfg.update(parse_overrides(args.set))
        path = write_node_config(args.config_file.resolve(), cfg)
        cmd = supernode_command(superlink=args.superlink, node_config=path, ca_cert=args.ca,
                                private_key=args.key, runtime_port=args.port)
        env = base_env(Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser())
        return _exec(cmd, env, args.dry_run)
    if args.cmd == "connection":
        path = write_connection(args.flwr_home, args.superlink, args.ca, args.name)
        print(f"wrote [superlink.{args.name}] to {path}")
        return 0
    if args.cmd == "run":
        overrides = parse_overrides(args.overrides)
        cli = FlowerCli(args.flwr_home, args.connection, cwd=Path.cwd())
        outcome = cli.run(overrides, timeout=args.timeout, on_line=sys.stdout.write,
                          app_dir=args.app)
        print(f"fdkt-deploy: run {outcome.run_id} {outcome.status} {outcome.details}".rstrip())
        return 0 if outcome.status == "finished:completed" else 1
    # demo
    with LoopbackDeployment(args.workdir, secure=not args.insecure) as dep:
        for spec in args.node:
            cfg = parse_overrides(shlex.split(spec))
            if "name" not in cfg:
                raise SystemExit(f"--node {spec!r}: needs name=\"...\"")
            dep.add_node(str(cfg.pop("name")), cfg)
        dep.wait_online()
        overrides = parse_overrides(args.overrides)
        overrides.setdefault("min-clients", len(args.node))
        overrides.setdefault("output-dir", str(dep.workdir / "results"))
        outcome = dep.run(overrides, timeout=args.timeout, on_line=sys.stdout.write)
    print(f"fdkt-deploy demo: run {outcome.run_id} {outcome.status}; results: "
          f"{outcome.results_path}; logs in {dep.workdir}")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())

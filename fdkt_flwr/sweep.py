"""Hydra sweeps: one real Flower simulation per job, skipped when already finished, then a report.

::

    python -m fdkt_flwr.sweep -m privacy.epsilon=1,3,8,inf seed=0,1,2
    python -m fdkt_flwr.sweep -m experiment=default-study            # the same, as a preset
    fdkt-sweep -m privacy=strict,none launch.clients=2 hydra.sweep.dir=multirun/quick

Hydra composes ``conf/config.yaml`` (the structured schema of :mod:`fdkt_flwr.config` plus the
optional groups ``dataset``, ``models``, ``privacy``, ``experiment``) once per job. Each job:

* converts the composed config to run-config keys (:func:`fdkt_flwr.config.to_run_config`,
  underscores -> hyphens) with ``output-dir`` = the job's own absolute Hydra folder,
* is skipped when that folder already holds a ``completed`` results.json of the same resolved
  config and the same number of clients (so re-running a sweep resumes it),
* otherwise runs :func:`fdkt_flwr.launcher.run_app` (its own SuperLink, stopped by PID) and
  judges the run by its real status (``RunOutcome.ok``), never by ``flwr run``'s exit code,
* writes ``job.json`` (status, details, run id, elapsed time, overrides, config) and never
  raises: a failed job is recorded and the sweep goes on,
* ends no process it did not start, but checks that nothing it started is left: processes that
  carry the job's SuperLink folder in their command line or environment are stopped by PID.

Folders are deterministic (``conf/config.yaml``): ``multirun/<experiment or "adhoc">/<job
overrides>/``; name a sweep yourself with ``hydra.sweep.dir=multirun/<name>``. After every job
and at the end, :func:`fdkt_flwr.report.write_sweep_report` refreshes ``sweep.csv``,
``sweep.md`` and ``privacy_utility.png`` in the sweep folder.

Exit status: 0 when every job completed (or was already complete), 1 when any job did not,
2 for a composition error (Hydra's own message).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fdkt_flwr import launcher
from fdkt_flwr.config import ConfigError, FdktConfig, from_flat, to_run_config
from fdkt_flwr.hydra_config import CONF_DIR, register, split
from fdkt_flwr.report import JOB_FILE, RESULTS_FILE, SUPERLINK_DIR, SWEEP_FILE, fmt_eps, num
from fdkt_flwr.results import write_json

log = logging.getLogger("fdkt-sweep")

ADHOC = "adhoc"  # sweep folder name when no experiment preset is selected
NO_OVERRIDES = "defaults"  # job folder name of a job without overrides
MAX_DIRNAME = 150  # bytes; file systems allow 255 per path component

# Run-config keys that do not change what a run computes (where it writes does not).
_IGNORED_FOR_SKIP = ("output-dir",)


# --------------------------------------------------------------------------- folders

def sweep_name(experiment: Any) -> str:
    """The default sweep folder name: the experiment preset, or ``adhoc`` without one."""
    s = "" if experiment is None else str(experiment)
    return s if s and s not in ("None", "null") else ADHOC


def job_subdir(override_dirname: Any, overrides: Any = None) -> str:
    """A job's folder name: its overrides (Hydra's ``override_dirname``) or ``defaults``.

    The override string is what makes a re-run find the same folder; Hydra sorts it, so the
    order on the command line does not matter. A ``/`` in a value (a file path) becomes
    ``%2F`` rather than a sub-folder. A name too long for the file system (many fixed
    overrides) keeps only the swept keys of this multirun (they tell jobs apart) plus a hash of
    the whole string (so that other fixed overrides still give other folders).
    """
    s = ("" if override_dirname is None else str(override_dirname)).replace(os.sep, "%2F")
    if not s:
        return NO_OVERRIDES
    if len(s.encode()) <= MAX_DIRNAME:
        return s
    items = [str(o).replace(os.sep, "%2F") for o in (overrides or [])]
    swept = sorted(o for o in items if o.partition("=")[0].lstrip("+~") in _STATE.swept_keys)
    head = ",".join(swept)
    if not head or len(head.encode()) > MAX_DIRNAME:
        head = s.encode()[: MAX_DIRNAME // 2].decode(errors="ignore")
    return f"{head}__{hashlib.sha1(s.encode()).hexdigest()[:10]}"


def _register_resolvers() -> None:
    """The resolvers ``conf/config.yaml``'s hydra.sweep section uses (idempotent)."""
    OmegaConf.register_new_resolver("fdkt_sweep_name", sweep_name, replace=True)
    OmegaConf.register_new_resolver("fdkt_job_subdir", job_subdir, replace=True)


_register_resolvers()  # at import: Hydra instantiates SweepCallback from this module too


# --------------------------------------------------------------------------- translation

def run_overrides(app: FdktConfig, output_dir: Path) -> dict[str, Any]:
    """The composed app config as ``flwr run --run-config`` keys, writing to ``output_dir``.

    Every key is passed (not only the overridden ones): what Hydra composed, presets included,
    is then exactly what the ServerApp and ClientApps see, whatever pyproject's defaults are.
    """
    if not output_dir.is_absolute():
        raise ConfigError(f"output-dir={str(output_dir)!r}: must be an absolute path")
    flat = to_run_config(app)
    flat["output-dir"] = str(output_dir)
    return flat


def changed_settings(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The keys whose value differs from the schema default (for progress lines)."""
    defaults = to_run_config(FdktConfig())
    return {k: v for k, v in flat.items() if k not in _IGNORED_FOR_SKIP and defaults.get(k) != v}


def _comparable(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A run config normalised for comparison: typed (JSON's "inf" -> inf), output-dir left out.

    Keys the schema does not know (results written by an older or newer version) are ignored,
    and keys missing there take their defaults, so a harmless schema change does not force
    every job to run again.
    """
    try:
        cfg = from_flat({k: v for k, v in flat.items() if k not in _IGNORED_FOR_SKIP},
                        strict=False)
    except ConfigError:
        return {"__invalid__": dict(flat)}
    return {k: v for k, v in to_run_config(cfg).items() if k not in _IGNORED_FOR_SKIP}


def finished_run(job_dir: Path, flat: Mapping[str, Any], clients: int) -> dict[str, Any] | None:
    """The results of an earlier, completed run of exactly this job, or None.

    Finished means: ``results.json`` has status ``completed``, its config equals ``flat`` (up
    to output-dir), and, when the folder's ``job.json`` exists, that job completed with the
    same number of clients (clients are not part of the run config but change the results).
    """
    try:
        res = json.loads((job_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or res.get("status") != "completed":
        return None
    if _comparable(res.get("config") or {}) != _comparable(flat):
        return None
    job_path = job_dir / JOB_FILE
    if job_path.exists():
        try:
            job = json.loads(job_path.read_text())
        except (OSError, ValueError):
            return None
        if job.get("status") != "completed":
            return None
        if int((job.get("launch") or {}).get("clients", clients)) != int(clients):
            return None
    return res


# --------------------------------------------------------------------------- processes

def owned_processes(marker: str) -> list[int]:
    """PIDs (not this process) whose command line or environment contains ``marker``.

    A job's SuperLink runs with ``FLWR_HOME=<job>/superlink/.flwr`` and its database under the
    same folder; every process it starts (SuperExec, the simulation, Ray workers) inherits that
    environment. So the folder path identifies exactly the processes this job started, and
    nothing of other users or other sweeps. Linux only (``/proc``); elsewhere an empty list.
    """
    needle = marker.encode()
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for name in ("cmdline", "environ"):
            try:
                if needle in (entry / name).read_bytes():
                    pids.append(int(entry.name))
                    break
            except OSError:  # gone, or not ours to read
                continue
    return sorted(pids)


def reap(marker: str, grace: float = 10.0) -> list[int]:
    """Stop what is left of a job's processes: wait ``grace`` s, then SIGTERM, then SIGKILL.

    Returns the PIDs that had to be signalled (empty when the run cleaned up after itself).
    """
    deadline = time.monotonic() + grace
    while (left := owned_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)  # Ray and SuperExec children exit shortly after their parent
    if not left:
        return []
    log.warning("stopping %d process(es) left by the job: %s", len(left), left)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        end = time.monotonic() + 5
        while (still := [p for p in left if p in owned_processes(marker)]) \
                and time.monotonic() < end:
            time.sleep(0.3)
        if not still:
            break
    return left


# --------------------------------------------------------------------------- progress state

@dataclass
class _SweepState:
    """What the callback knows about the running multirun (same process as the jobs)."""

    total: int | None = None
    swept_keys: set[str] = field(default_factory=set)  # keys with more than one value
    sweep_dir: Path | None = None
    started: float = field(default_factory=time.monotonic)
    statuses: dict[int, str] = field(default_factory=dict)


_STATE = _SweepState()


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else \
        f"{s // 60}m{s % 60:02d}s"


def _job_label(num: int | None) -> str:
    if num is None:
        return "job"
    return f"job {num + 1}/{_STATE.total}" if _STATE.total else f"job {num + 1}"


def _headline(res: Mapping[str, Any]) -> str:
    """``accuracy 0.812 vs local-only 0.790 (+0.022), ε spent 2.98`` from a results.json."""
    clients = list((res.get("clients") or {}).values())

    def mean(key: str) -> float | None:
        vals = [num(c.get(key)) for c in clients]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    acc, base, eps = mean("accuracy"), mean("baseline_accuracy"), mean("epsilon")
    parts = []
    if acc is not None:
        parts.append(f"accuracy {acc:.3f}" + (f" vs local-only {base:.3f} ({acc - base:+.3f})"
                                               if base is not None else ""))
    if eps is not None:
        parts.append(f"ε spent {fmt_eps(eps) if math.isinf(eps) else f'{eps:.2f}'}")
    return ", ".join(parts) or "no client metrics"


# --------------------------------------------------------------------------- the job

def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's task function: run (or skip) one job; never raises, returns job.json's content."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir).resolve()
    overrides = [str(o) for o in hc.overrides.task]
    job_num = int(hc.job.num) if hc.mode == RunMode.MULTIRUN else None
    label = _job_label(job_num)
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    record: dict[str, Any] = {"status": "error", "details": "", "job_num": job_num,
                              "overrides": overrides, "job_dir": str(job_dir),
                              "started": started}
    t0 = time.monotonic()
    try:
        app, launch = split(cfg)
        if app.output_dir and Path(app.output_dir).expanduser().resolve() != job_dir:
            log.warning("%s: output_dir=%s is ignored in a sweep; the job writes to %s", label,
                        app.output_dir, job_dir)
        flat = run_overrides(app, job_dir)
        record.update({"config": flat, "launch": launch})
        clients = int(launch.get("clients", 3))
        done = finished_run(job_dir, flat, clients)
        if done is not None:
            log.info("%s skipped: already completed in %s (%s)", label, job_dir, _headline(done))
            previous = _read(job_dir / JOB_FILE)
            record = {**record, **previous, "status": "completed", "skipped": True,
                      "overrides": overrides, "job_num": job_num}
            record.setdefault("results", str(job_dir / RESULTS_FILE))
            write_json(job_dir / JOB_FILE, record)
            _STATE.statuses[job_num or 0] = "completed"
            return record
        changed = changed_settings(flat)
        log.info("%s: %s", label, " ".join(overrides) or "(no overrides)")
        log.info("%s: %d clients; settings that differ from the defaults: %s; folder %s",
                 label, clients, ", ".join(f"{k}={v}" for k, v in changed.items()) or "none",
                 job_dir)
        # A fresh SuperLink folder: a stale state.db from an interrupted attempt must not leak.
        sl_dir = job_dir / SUPERLINK_DIR
        shutil.rmtree(sl_dir, ignore_errors=True)
        sl_dir.mkdir(parents=True)
        # An earlier failed attempt's results must not pass for this attempt's.
        for stale in (RESULTS_FILE, "flwr_run.log"):
            (job_dir / stale).unlink(missing_ok=True)
        write_json(job_dir / JOB_FILE, {**record, "status": "running", "details": ""})
        try:
            outcome = launcher.run_app(flat, num_clients=clients,
                                       cpus_per_client=int(launch.get("cpus_per_client", 1)),
                                       timeout=float(launch.get("timeout", 3600.0)),
                                       workdir=sl_dir, stream=True)
        finally:
            stray = reap(str(sl_dir))
            if stray:
                record["stray_processes_stopped"] = stray
        record.update({"run_id": outcome.run_id, "run_status": outcome.status,
                       "details": outcome.details, "results": str(outcome.results_path),
                       "log": str(outcome.log_path)})
        if outcome.ok:
            record["status"] = "completed"
        elif outcome.status == "timeout":
            record["status"] = "timeout"
        else:
            record["status"] = "failed"
            if outcome.status == "submit-failed":
                record["details"] = _submit_error(outcome, sl_dir) or outcome.details
            if not record["details"] and not outcome.results_path.exists():
                record["details"] = "no results.json written"
    except ConfigError as exc:
        record.update({"status": "invalid", "details": str(exc)})
    except Exception as exc:  # one job's crash must not end the sweep
        record.update({"status": "error", "details": f"{type(exc).__name__}: {exc}"})
        log.exception("%s: error", label)
    record["elapsed_s"] = round(time.monotonic() - t0, 1)
    record["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    with contextlib.suppress(OSError):
        write_json(job_dir / JOB_FILE, record)
    _STATE.statuses[job_num or 0] = record["status"]
    took = _duration(record["elapsed_s"])
    if record["status"] == "completed":
        res = _read(job_dir / RESULTS_FILE)
        log.info("%s completed in %s: %s", label, took, _headline(res))
        _job_report(job_dir)
    else:
        log.error("%s %s after %s: %s (log: %s)", label, record["status"].upper(), took,
                  record.get("details") or "no details", record.get("log", job_dir))
    if _STATE.total and job_num is not None:
        log.info("sweep: %d/%d jobs done, %s elapsed", len(_STATE.statuses), _STATE.total,
                 _duration(time.monotonic() - _STATE.started))
    return record


def _submit_error(outcome: launcher.RunOutcome, sl_dir: Path) -> str:
    """Why ``flwr run`` refused the run, in one line: its JSON error plus the SuperLink's reason.

    ``flwr run --format json`` prints ``{"success": false, "error-message": ...}`` and the
    SuperLink logs the cause ("Could not start run: Key 'x' is not present ..."), e.g. when
    the app's pyproject and this process's schema differ.
    """
    parts: list[str] = []
    try:
        text = outcome.log_path.read_text(errors="replace")
        start = text.find("{")
        msg = json.loads(text[start: text.rindex("}") + 1]).get("error-message", "")
        parts.append(str(msg).strip().splitlines()[-1])
    except (OSError, ValueError, AttributeError, IndexError):
        pass
    try:
        for line in (sl_dir / "superlink.log").read_text(errors="replace").splitlines():
            if "Could not start run" in line:
                parts.append(line.split("Could not start run", 1)[1].lstrip(": "))
                break
    except OSError:
        pass
    return "; ".join(p for p in parts if p)


def _job_report(job_dir: Path) -> None:
    """The job's own report.md and plots (a reporting bug must never fail the job)."""
    from fdkt_flwr.report import run_report

    try:
        run_report(job_dir)
    except Exception as exc:
        log.warning("could not write the run report in %s: %s: %s", job_dir,
                    type(exc).__name__, exc)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- callback

def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The job override lists a multirun will launch, as Hydra's basic sweeper splits them.

    None for another sweeper (its jobs are not known in advance); progress then shows "job i".
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    if not target.endswith("BasicSweeper"):
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    args = [f"{k}={v}" for k, v in params.items()]
    args += [str(o) for o in config.hydra.overrides.task]
    parsed = OverridesParser.create().parse_overrides(args)
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(job) for batch in batches for job in batch]


class SweepCallback(Callback):
    """Progress and reports around a multirun (wired in ``conf/config.yaml``'s hydra.callbacks).

    * ``on_multirun_start``: counts the jobs (for "job i/N") and writes ``sweep.json`` (the
      job list; the report shows listed jobs without a folder as missing).
    * ``on_job_end``: refreshes the sweep report, so an interrupted sweep still has one.
    * ``on_multirun_end``: the final report, and a one-line summary per status.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        _STATE.sweep_dir, _STATE.started, _STATE.statuses = sweep_dir, time.monotonic(), {}
        try:
            jobs = planned_jobs(config)
        except Exception as exc:  # progress is a nicety; the sweep itself must run
            log.warning("could not count the sweep's jobs: %s", exc)
            jobs = None
        _STATE.total = len(jobs) if jobs is not None else None
        values: dict[str, set[str]] = {}
        for job in jobs or []:
            for o in job:
                key, _, value = o.partition("=")
                values.setdefault(key.lstrip("+~"), set()).add(value)
        _STATE.swept_keys = {k for k, v in values.items() if len(v) > 1}
        sweep_dir.mkdir(parents=True, exist_ok=True)
        meta = {"sweep_dir": str(sweep_dir), "total": _STATE.total, "jobs": jobs,
                "command": sys.argv,
                "started": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        if jobs is None:
            meta.pop("jobs")
        write_json(sweep_dir / SWEEP_FILE, meta)
        log.info("sweep %s: %s jobs", sweep_dir, _STATE.total if _STATE.total else "?")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if _STATE.sweep_dir is not None:
            _refresh_report(_STATE.sweep_dir, quiet=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _STATE.sweep_dir or Path(str(config.hydra.sweep.dir)).resolve()
        paths = _refresh_report(sweep_dir, quiet=False)
        counts: dict[str, int] = {}
        for s in _STATE.statuses.values():
            counts[s] = counts.get(s, 0) + 1
        log.info("sweep done in %s: %s", _duration(time.monotonic() - _STATE.started),
                 ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs")
        if paths:
            log.info("report: %s (table), %s (per job and client), %s (plot)", paths["md"],
                     paths["csv"], paths["png"])


def _refresh_report(sweep_dir: Path, quiet: bool) -> dict[str, Path] | None:
    """Write the sweep report; a reporting bug must never fail the sweep."""
    from fdkt_flwr.report import write_sweep_report

    try:
        paths = write_sweep_report(sweep_dir)
    except Exception as exc:
        log.warning("could not write the sweep report in %s: %s: %s", sweep_dir,
                    type(exc).__name__, exc)
        return None
    if not quiet:
        table = paths["md"].read_text().split("\n\n![")[0]
        print(table, flush=True)
    return paths


# --------------------------------------------------------------------------- entry point

def main() -> None:
    """``fdkt-sweep`` / ``python -m fdkt_flwr.sweep``: Hydra's command line (``-m`` to sweep)."""
    import hydra

    register()
    _register_resolvers()
    task = hydra.main(config_path=str(CONF_DIR), config_name="config",
                      version_base=None)(run_job)
    task()
    bad = {s for s in _STATE.statuses.values() if s != "completed"}
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    # Run the importable module's main, not this ``__main__`` copy of it: Hydra instantiates
    # SweepCallback from ``fdkt_flwr.sweep``, and the jobs and the callback must share one
    # _STATE (job i/N, the statuses behind the exit code).
    import importlib

    importlib.import_module("fdkt_flwr.sweep").main()

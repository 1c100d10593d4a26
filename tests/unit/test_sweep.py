"""The Hydra sweep driver with a mocked run_app: translation, skipping, failures, processes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fdkt_flwr import launcher, sweep
from fdkt_flwr.config import ConfigError, FdktConfig, to_run_config
from fdkt_flwr.hydra_config import compose
from fdkt_flwr.results import write_json

# --------------------------------------------------------------------------- translation

def test_hydra_overrides_become_run_config_keys_with_an_absolute_output_dir(tmp_path: Path):
    app, launch = compose(["privacy.epsilon=3", "dataset.private_size=64",
                           "generator.max_physical_batch_size=8", "launch.clients=2"])
    flat = sweep.run_overrides(app, tmp_path)
    assert flat["privacy.epsilon"] == 3.0
    assert flat["dataset.private-size"] == 64
    assert flat["generator.max-physical-batch-size"] == 8
    assert flat["output-dir"] == str(tmp_path)
    assert all("_" not in k for k in flat)  # run-config spelling only
    assert set(flat) == set(to_run_config(FdktConfig()))  # every key, nothing else
    assert launch["clients"] == 2 and "launch.clients" not in flat
    assert sweep.changed_settings(flat) == {"privacy.epsilon": 3.0,
                                            "dataset.private-size": 64,
                                            "generator.max-physical-batch-size": 8}
    with pytest.raises(ConfigError, match="must be an absolute path"):
        sweep.run_overrides(app, Path("relative"))


def test_groups_and_presets_compose_into_the_run_config():
    app, _ = compose(["privacy=none", "models=gpu-paper"])
    flat = to_run_config(app)
    assert flat["privacy.epsilon"] == math.inf
    assert flat["llm.model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert flat["generator.model"] == "openai-community/gpt2-large"
    assert to_run_config(compose(["experiment=ag-news"])[0])["dataset.name"] == \
        "hf:fancyzhx/ag_news"
    # a command-line value wins over a group's
    assert compose(["privacy=strict", "privacy.epsilon=2"])[0].privacy.epsilon == 2.0


def test_groups_do_not_repeat_schema_defaults():
    import yaml

    defaults = to_run_config(FdktConfig())
    conf = Path(sweep.CONF_DIR)
    for group in ("dataset", "models", "privacy", "experiment"):
        for path in sorted((conf / group).glob("*.yaml")):
            text = path.read_text()
            data = yaml.safe_load(text) or {}
            if "# @package _global_" not in text:
                data = {group: data}
            data.pop("hydra", None)
            data.pop("defaults", None)

            def leaves(d: dict, prefix: str = ""):
                for k, v in d.items():
                    if isinstance(v, dict):
                        yield from leaves(v, f"{prefix}{k}.")
                    else:
                        yield f"{prefix}{k}".replace("_", "-"), v

            for key, value in leaves(data):
                assert key in defaults, f"{path.name}: unknown key {key}"
                assert defaults[key] != value, f"{path.name}: {key} repeats the default"


def test_folder_names_are_deterministic():
    assert sweep.sweep_name(None) == sweep.ADHOC
    assert sweep.sweep_name("default-study") == "default-study"
    assert sweep.job_subdir("") == sweep.NO_OVERRIDES
    assert sweep.job_subdir("privacy.epsilon=3,seed=0") == "privacy.epsilon=3,seed=0"
    # a file path value stays one folder
    assert sweep.job_subdir("dataset.name=/d/x.csv") == "dataset.name=%2Fd%2Fx.csv"


def test_a_long_override_string_keeps_the_swept_keys_and_a_hash(monkeypatch):
    fixed = ["generator.max_new_tokens=24", "dataset.private_size=24",
             "llm.samples_per_label=2", "slm.max_length=48", "generator.demos_per_label=2",
             "selection.clusters=2", "launch.timeout=1500", "dataset.test_size=24",
             "generator.batch_size=8", "num_server_rounds=1"]
    ov = ["privacy.epsilon=3", *fixed]
    long = ",".join(sorted(ov))
    assert len(long) > sweep.MAX_DIRNAME
    monkeypatch.setattr(sweep._STATE, "swept_keys", {"privacy.epsilon"})
    name = sweep.job_subdir(long, ov)
    assert name.startswith("privacy.epsilon=3__") and len(name) < 40
    assert sweep.job_subdir(long, ov) == name  # deterministic: a re-run finds it
    other = [*ov[:-1], "num_server_rounds=2"]
    assert sweep.job_subdir(",".join(sorted(other)), other) != name
    monkeypatch.setattr(sweep._STATE, "swept_keys", set())  # unknown sweep: prefix + hash
    assert len(sweep.job_subdir(long, ov).encode()) <= sweep.MAX_DIRNAME


# --------------------------------------------------------------------------- skipping

def _completed(job_dir: Path, flat: dict[str, Any], clients: int = 2,
               job_status: str | None = "completed") -> None:
    write_json(job_dir / "results.json", {"status": "completed", "config": flat,
                                          "clients": {}})
    if job_status:
        write_json(job_dir / "job.json", {"status": job_status, "launch": {"clients": clients}})


def test_finished_run_needs_completed_results_of_the_same_config(tmp_path: Path):
    app, _ = compose(["privacy.epsilon=inf"])
    flat = sweep.run_overrides(app, tmp_path)
    assert sweep.finished_run(tmp_path, flat, 2) is None  # nothing there yet
    _completed(tmp_path, flat)
    # written through JSON, inf became "inf": still the same config
    assert json.loads((tmp_path / "results.json").read_text())["config"][
        "privacy.epsilon"] == "inf"
    assert sweep.finished_run(tmp_path, flat, 2) is not None
    moved = {**flat, "output-dir": "/elsewhere"}  # a moved sweep folder still counts
    assert sweep.finished_run(tmp_path, moved, 2) is not None
    assert sweep.finished_run(tmp_path, {**flat, "seed": 1}, 2) is None  # other config
    assert sweep.finished_run(tmp_path, flat, 3) is None  # other number of clients


@pytest.mark.parametrize("case", ["running", "job_failed", "broken_json"])
def test_unfinished_or_failed_runs_are_not_skipped(tmp_path: Path, case: str):
    flat = sweep.run_overrides(compose()[0], tmp_path)
    _completed(tmp_path, flat, job_status="failed" if case == "job_failed" else "completed")
    if case == "running":
        write_json(tmp_path / "results.json", {"status": "running", "config": flat})
    if case == "broken_json":
        (tmp_path / "results.json").write_text('{"status": "compl')
    assert sweep.finished_run(tmp_path, flat, 2) is None


# --------------------------------------------------------------------------- the multirun

class FakeRunApp:
    """Stands in for launcher.run_app: writes results.json like the ServerApp would."""

    def __init__(self, fail_eps: float | None = None, raise_eps: float | None = None):
        self.calls: list[dict[str, Any]] = []
        self.fail_eps, self.raise_eps = fail_eps, raise_eps

    def __call__(self, overrides: dict[str, Any], *, num_clients: int, cpus_per_client: int,
                 timeout: float, workdir: Path, stream: bool) -> launcher.RunOutcome:
        self.calls.append({**overrides, "num_clients": num_clients, "workdir": workdir})
        eps = float(overrides["privacy.epsilon"])
        out = Path(overrides["output-dir"])
        log = out / "flwr_run.log"
        log.write_text("INFO : [server] round 1 done\n")
        if eps == self.raise_eps:
            raise RuntimeError("flower-superlink did not become healthy")
        if eps == self.fail_eps:
            write_json(out / "results.json", {"status": "running", "config": overrides})
            return launcher.RunOutcome(2, "finished:failed", "ValueError: boom",
                                       out / "results.json", log)
        acc = 0.7 + (0.1 if math.isinf(eps) else 0.01 * eps)
        write_json(out / "results.json", {
            "status": "completed", "config": overrides, "rounds": [], "privacy": {},
            "failures": [], "timing": {},
            "clients": {f"client-{i}": {"accuracy": acc, "baseline_accuracy": 0.7,
                                        "gain_accuracy": acc - 0.7, "macro_f1": acc,
                                        "epsilon": eps} for i in range(num_clients)}})
        return launcher.RunOutcome(1, "finished:completed", "", out / "results.json", log)


def _multirun(monkeypatch: pytest.MonkeyPatch, fake: FakeRunApp, sweep_dir: Path,
              *args: str) -> int:
    monkeypatch.setattr(launcher, "run_app", fake)
    monkeypatch.setattr(sys, "argv", ["fdkt-sweep", "-m", *args,
                                      f"hydra.sweep.dir={sweep_dir}", "launch.clients=2"])
    try:
        sweep.main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _jobs(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.rglob("job.json")}


def test_a_failed_job_does_not_stop_the_others_and_a_rerun_skips_finished_jobs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture):
    sweep_dir = tmp_path / "multirun" / "eps"
    fake = FakeRunApp(fail_eps=3.0, raise_eps=8.0)
    rc = _multirun(monkeypatch, fake, sweep_dir, "privacy.epsilon=1,3,8,inf")
    assert rc == 1  # not every job completed
    assert sorted(float(c["privacy.epsilon"]) for c in fake.calls) == [1.0, 3.0, 8.0, math.inf]
    jobs = _jobs(sweep_dir)
    by_eps = {j["config"]["privacy.epsilon"]: j for j in jobs.values()}
    assert by_eps[1.0]["status"] == "completed"
    assert by_eps[3.0]["status"] == "failed" and by_eps[3.0]["details"] == "ValueError: boom"
    assert by_eps[3.0]["run_status"] == "finished:failed"
    assert by_eps[8.0]["status"] == "error" and "healthy" in by_eps[8.0]["details"]
    assert by_eps["inf"]["status"] == "completed"
    for name, job in jobs.items():
        # each job wrote into its own absolute Hydra folder, named by its overrides
        assert job["config"]["output-dir"] == str(sweep_dir / name)
        assert name.startswith("launch.clients=2,privacy.epsilon=")
        assert job["launch"]["clients"] == 2
    assert all(c["num_clients"] == 2 for c in fake.calls)
    assert all(Path(c["workdir"]).parent == Path(c["output-dir"]) for c in fake.calls)
    # progress a person can follow, and the report at the end
    out = capfd.readouterr().out
    assert "job 2/4" in out and "FAILED" in out and "sweep done" in out
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    assert meta["total"] == 4 and len(meta["jobs"]) == 4
    md = (sweep_dir / "sweep.md").read_text()
    assert "2 completed" in md and "1 failed" in md and "1 error" in md
    assert (sweep_dir / "privacy_utility.png").exists()
    assert (sweep_dir / "sweep.csv").exists()

    # the same sweep again: only the two unfinished jobs run
    rerun = FakeRunApp()
    assert _multirun(monkeypatch, rerun, sweep_dir, "privacy.epsilon=1,3,8,inf") == 0
    assert sorted(float(c["privacy.epsilon"]) for c in rerun.calls) == [3.0, 8.0]
    jobs = _jobs(sweep_dir)
    assert {j["status"] for j in jobs.values()} == {"completed"}
    assert sum(bool(j.get("skipped")) for j in jobs.values()) == 2
    assert "4 completed" in (sweep_dir / "sweep.md").read_text()


def test_an_invalid_value_is_a_reported_job_not_a_crash(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    sweep_dir = tmp_path / "bad"
    fake = FakeRunApp()
    assert _multirun(monkeypatch, fake, sweep_dir, "privacy.epsilon=-1,2") == 1
    jobs = _jobs(sweep_dir)
    bad = next(j for j in jobs.values() if j["status"] != "completed")
    assert bad["status"] == "invalid"
    assert bad["details"].startswith("privacy.epsilon=-1.0: must be > 0")
    assert [float(c["privacy.epsilon"]) for c in fake.calls] == [2.0]


# --------------------------------------------------------------------------- processes

def test_leftover_processes_of_a_job_are_found_and_stopped(tmp_path: Path):
    marker = str(tmp_path / "superlink")
    env = {**os.environ, "FLWR_HOME": f"{marker}/.flwr"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        deadline = time.monotonic() + 5
        while child.pid not in sweep.owned_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in sweep.owned_processes(marker)
        assert os.getpid() not in sweep.owned_processes(marker)
        assert sweep.reap(marker, grace=0.2) == [child.pid]
        assert child.wait(timeout=10) != 0
        assert sweep.owned_processes(marker) == []
        assert sweep.reap(marker, grace=0.1) == []  # nothing left: nothing signalled
    finally:
        if child.poll() is None:
            child.kill()


def test_the_module_entry_point_counts_jobs_and_exits_nonzero_on_failures(tmp_path: Path):
    # Invalid budgets are rejected before any SuperLink starts, so this runs the real
    # `python -m fdkt_flwr.sweep` (its __main__ path shares state with Hydra's callback) in
    # seconds.
    sweep_dir = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "fdkt_flwr.sweep", "-m", "privacy.epsilon=-1,-2",
         f"hydra.sweep.dir={sweep_dir}"], cwd=Path(sweep.CONF_DIR).parent,
        capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "job 1/2" in out and "job 2/2" in out, out
    assert "sweep done" in out and "2 invalid" in out, out
    assert (sweep_dir / "sweep.md").exists()
    assert {j["status"] for j in _jobs(sweep_dir).values()} == {"invalid"}

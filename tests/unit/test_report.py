"""Reports: sweep aggregation tolerant of missing and failed jobs; the single-run report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fdkt_flwr.report import (
    collect,
    fmt_eps,
    main,
    run_report,
    sample_texts,
    summarize,
    sweep_markdown,
    write_sweep_report,
)
from fdkt_flwr.results import write_json

LABELS = ["other", "great"]


def fake_results(eps: float, seed: int, clients: int = 2, rounds: int = 2,
                 status: str = "completed", acc: float = 0.75, base: float = 0.70,
                 more_baselines: bool = False) -> dict:
    """A results.json of the contract (results.py / README), with plausible numbers."""
    cfg = {"num-server-rounds": rounds, "seed": seed, "output-dir": "/x",
           "dataset.name": "fine-food", "dataset.partitioner": "iid",
           "dataset.private-size": 24, "privacy.epsilon": eps, "privacy.delta": 1e-5,
           "generator.model": "smollm2-135m-instruct", "llm.model": "smollm2-135m-instruct",
           "slm.model": "all-minilm-l6-v2"}
    private = not math.isinf(eps)
    res: dict[str, Any] = {"status": status, "config": cfg, "rounds": [], "clients": {},
                           "privacy": {}, "failures": [], "timing": {"total": 91.5,
                                                                     "client_dp_training": 40.0}}
    for r in range(1, rounds + 1):
        rc, rs = {}, {}
        for i in range(clients):
            cid = f"client-{i}"
            a = acc + 0.01 * i + 0.005 * r + 0.002 * seed
            rc[cid] = {"accuracy": a, "macro_f1": a - 0.04, "baseline_accuracy": base + 0.01 * i,
                       "baseline_macro_f1": base - 0.05, "gain_accuracy": a - base - 0.01 * i,
                       "num_private": 24.0, "num_synthetic": 8.0 * r}
            if more_baselines:  # the `baselines` setting's zero-shot and dp-synthetic
                rc[cid] |= {"zero_shot_accuracy": 0.71, "zero_shot_macro_f1": 0.66,
                            "dp_synthetic_accuracy": base + 0.01 * min(eps, 10.0),
                            "dp_synthetic_macro_f1": base - 0.04}
            rs[cid] = {"prompts_sent": 6, "samples_parsed": 14, "sent": 8,
                       "dropped": {"duplicate": 3, "too_short": 2 + i, "off_target": 1},
                       "label_counts": {"other": 4, "great": 4}, "budget": {"other": 4,
                                                                           "great": 4},
                       "distinct_1": 0.41, "distinct_2": 0.83, "similarity_to_demos": 0.52,
                       "demonstrations_received": 4, "demonstrations_kept": 3}
            if r == 1:
                rs[cid]["client_stats"] = {"num_private": 24, "demos_sampled": 6,
                                           "demos_sent": 4, "demos_dropped_empty": 2,
                                           "private_label_counts": [10 + i, 14 - i]}
        res["rounds"].append({"round": r, "clients": rc, "server": rs})
    for i in range(clients):
        cid = f"client-{i}"
        last = res["rounds"][-1]["clients"][cid] if rounds else {}
        metrics = {k: v for k, v in last.items() if k.endswith(("accuracy", "macro_f1"))}
        res["clients"][cid] = {**metrics, "epsilon": eps * 0.97 if private else "inf",
                               "delta": 1e-5, "num_private": 24, "num_synthetic": 16,
                               "private": private}
        res["privacy"][cid] = {"private": private, "target_epsilon": eps if private else "inf",
                               "epsilon": eps * 0.97 if private else "inf", "delta": 1e-5,
                               "noise_multiplier": 1.1 if private else 0.0,
                               "sample_rate": 0.33, "steps": 6, "accountant": "prv",
                               "mode": "dp-sgd" if private else "non-private"}
    return res


def make_job(sweep: Path, eps: float, seed: int, status: str = "completed",
             results: dict | None = None, details: str = "") -> Path:
    """A job folder as fdkt_flwr.sweep leaves it: job.json (+ results.json, .hydra)."""
    ov = [f"privacy.epsilon={fmt_eps(eps) if not math.isinf(eps) else 'inf'}", f"seed={seed}"]
    d = sweep / ",".join(sorted(ov))
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in ov))
    if results is not None:
        write_json(d / "results.json", results)
    write_json(d / "job.json", {"status": status, "details": details, "overrides": ov,
                                "run_id": 1, "elapsed_s": 3.0,
                                "config": (results or fake_results(eps, seed))["config"]})
    return d


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """ε ∈ {1, 3, ∞} × seeds {0, 1}: one failed job, one missing, one killed mid-run."""
    s = tmp_path / "multirun" / "study"
    for eps in (1.0, 3.0, math.inf):
        for seed in (0, 1):
            if (eps, seed) == (3.0, 1):
                make_job(s, eps, seed, "failed", details="ValueError: boom")
            elif (eps, seed) == (1.0, 1):
                continue  # missing: never ran
            else:
                acc = 0.72 if eps == 1 else 0.76 if eps == 3 else 0.80
                make_job(s, eps, seed, results=fake_results(eps, seed, acc=acc))
    # an interrupted job: Hydra made the folder, results.json still "running", no job.json
    d = s / "privacy.epsilon=8,seed=0"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("- privacy.epsilon=8\n- seed=0\n")
    write_json(d / "results.json", fake_results(8.0, 0, status="running"))
    write_json(s / "sweep.json", {"total": 8, "jobs": [
        [f"privacy.epsilon={e}", f"seed={sd}"] for e in ("1", "3", "inf", "8")
        for sd in (0, 1)]})
    return s


def test_collect_counts_completed_failed_missing_and_incomplete_jobs(sweep: Path):
    df = collect(sweep)
    counts = df.attrs["counts"]
    assert counts == {"completed": 4, "failed": 1, "missing": 2, "incomplete": 1, "total": 8}
    done = df[df["status"] == "completed"]
    assert len(done) == 4 * 2  # one row per job × client
    assert set(done["client"]) == {"client-0", "client-1"}
    failed = df[df["status"] == "failed"]
    assert len(failed) == 1 and pd.isna(failed.iloc[0]["client"])
    assert failed.iloc[0]["details"] == "ValueError: boom"
    assert failed.iloc[0]["epsilon"] == 3.0
    missing = df[df["status"] == "missing"]
    assert {(m["epsilon"], m["seed"]) for _, m in missing.iterrows()} == {(1.0, 1), (8.0, 1)}
    assert df.attrs["settings"] == []  # only ε and seed vary


def test_summary_is_mean_and_std_over_seeds_with_a_baseline_row(sweep: Path):
    summary = summarize(collect(sweep))
    base = summary[summary["kind"] == "baseline"].iloc[0]
    assert base["accuracy_mean"] == pytest.approx(0.705)  # mean over clients 0.70 and 0.71
    inf = summary[(summary["kind"] == "fdkt") & (summary["epsilon"] == math.inf)].iloc[0]
    assert inf["n_done"] == 2 and inf["n_jobs"] == 2
    # per job: mean over clients of 0.80 + 0.01 i + 0.005 * 2 + 0.002 * seed
    assert inf["accuracy_mean"] == pytest.approx(0.815 + 0.001)
    assert inf["accuracy_std"] == pytest.approx(math.sqrt(2) * 0.001)
    assert inf["epsilon_spent_mean"] == math.inf
    three = summary[(summary["kind"] == "fdkt") & (summary["epsilon"] == 3.0)].iloc[0]
    assert (three["n_done"], three["n_jobs"]) == (1, 2)
    assert pd.isna(three["accuracy_std"])  # one seed: no std


def test_sweep_report_files_table_rows_and_failed_jobs(sweep: Path):
    paths = write_sweep_report(sweep)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "| local-only baseline |" in md
    assert "| FDKT, non-private (ε=∞) | ∞ |" in md
    assert "| FDKT, ε=1 | 1 |" in md
    assert "1/2" in md  # ε=3: one of two seeds done
    assert "## Jobs that did not complete" in md and "ValueError: boom" in md
    assert "8 job(s): 4 completed" in md
    csv = paths["csv"].read_text().splitlines()
    # header, 4 completed jobs × 2 clients, the running job's 2 clients, failed + 2 missing
    assert len(csv) == 1 + 4 * 2 + 2 + 3


def test_collect_without_sweep_json_reports_every_job_folder(sweep: Path):
    (sweep / "sweep.json").unlink()
    df = collect(sweep)
    assert df.attrs["counts"]["total"] == 6  # the two missing jobs are unknown now
    assert "missing" not in df.attrs["counts"]


def test_empty_or_all_failed_sweep_still_writes_a_report(tmp_path: Path):
    make_job(tmp_path, 1.0, 0, "error", details="RuntimeError: no superlink")
    paths = write_sweep_report(tmp_path)
    md = paths["md"].read_text()
    assert "No completed job yet" in md and "RuntimeError: no superlink" in md
    assert paths["png"].exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert collect(empty).attrs["counts"] == {"total": 0}
    assert write_sweep_report(empty)["md"].exists()


def test_other_varying_settings_become_columns_and_groups(tmp_path: Path):
    for size in (24, 48):
        for eps in (1.0, math.inf):
            res = fake_results(eps, 0)
            res["config"]["dataset.private-size"] = size
            d = make_job(tmp_path / str(size), eps, 0, results=res)
            job = json.loads((d / "job.json").read_text())
            job["overrides"].append(f"dataset.private_size={size}")
            write_json(d / "job.json", job)
    df = collect(tmp_path)
    assert df.attrs["settings"] == ["dataset.private-size"]
    summary = summarize(df)
    assert len(summary[summary["kind"] == "baseline"]) == 2
    md = sweep_markdown(df, summary)
    assert "| dataset.private-size |" in md.replace("| dataset.private-size | setting",
                                                    "| dataset.private-size |")


def test_single_run_report_writes_markdown_and_plots(tmp_path: Path):
    run = tmp_path / "run"
    write_json(run / "results.json", fake_results(3.0, 0, clients=3))
    (run / "samples").mkdir()
    (run / "samples" / "client-0.md").write_text(
        "# Generated samples sent to client-0\n\n## Round 1\n\n### other\n\n- old text\n\n"
        "## Round 2\n\n### other\n\n- Stale crackers, never again.\n- Meh.\n- third\n\n"
        "### great\n\n- Best coffee I have had in years!\n")
    out = run_report(run)
    md = out.read_text()
    for png in ("accuracy_per_round.png", "privacy_budget.png", "label_distribution.png",
                "synthetic_data.png"):
        assert (run / png).exists(), png
        assert f"]({png})" in md
    assert "| client-2 |" in md
    assert "Best coffee I have had in years!" in md and "old text" not in md
    assert "third" not in md  # two samples per label by default
    assert "| client-0 | 3 | 2.910 |" in md  # target and spent ε
    assert "duplicate 6" in md  # summed over the two rounds


def test_single_run_report_tolerates_a_failed_run_without_rounds(tmp_path: Path):
    res = fake_results(math.inf, 0, rounds=0, status="failed")
    res["failures"] = [{"client": "client-1", "round": 1, "phase": "synthesize",
                        "reason": "CUDA out of memory"}]
    write_json(tmp_path / "results.json", res)
    md = run_report(tmp_path).read_text()
    assert "failed" in md and "CUDA out of memory" in md
    assert "non-private" in md
    assert not (tmp_path / "accuracy_per_round.png").exists()


def test_one_round_and_sample_parsing(tmp_path: Path):
    write_json(tmp_path / "results.json", fake_results(1.0, 0, rounds=1))
    run_report(tmp_path)
    assert (tmp_path / "accuracy_per_round.png").exists()
    assert sample_texts(tmp_path, "client-9") == []


def test_cli_picks_run_or_sweep(tmp_path: Path, sweep: Path, capsys):
    run = tmp_path / "one"
    write_json(run / "results.json", fake_results(1.0, 0))
    assert main([str(run)]) == 0
    assert (run / "report.md").exists()
    assert main([str(sweep)]) == 0
    assert (sweep / "sweep.md").exists()
    assert "local-only baseline" in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2


def test_zero_shot_and_dp_synthetic_baselines_are_reported(tmp_path: Path):
    for eps in (1.0, 3.0, math.inf):
        for seed in (0, 1):
            make_job(tmp_path, eps, seed, results=fake_results(eps, seed, more_baselines=True))
    df = collect(tmp_path)
    summary = summarize(df)
    assert set(summary["kind"]) == {"baseline", "zero_shot", "fdkt"}
    zs = summary[summary["kind"] == "zero_shot"].iloc[0]
    assert zs["accuracy_mean"] == pytest.approx(0.71)
    one = summary[(summary["kind"] == "fdkt") & (summary["epsilon"] == 1.0)].iloc[0]
    assert one["dp_synthetic_accuracy_mean"] == pytest.approx(0.71)  # 0.70 + 0.01 × ε
    paths = write_sweep_report(tmp_path)
    md = paths["md"].read_text()
    assert "| zero-shot LLM baseline |" in md
    assert "DP-synthetic baseline (no LLM)" in md
    run = tmp_path / "one-round"
    write_json(run / "results.json", fake_results(3.0, 0, rounds=1, more_baselines=True))
    report = run_report(run).read_text()
    assert "| zero-shot LLM | DP demos, no LLM |" in report

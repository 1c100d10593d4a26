"""Reports: a sweep's privacy-utility table and plot, and one run's readable summary.

Two entry points, both tolerant of partial data (a job that failed, a run that is still
``running``, keys an older results.json does not have): what is missing is counted and shown,
never a crash.

* Sweep aggregation (:func:`collect`, :func:`summarize`, :func:`write_sweep_report`): reads every
  job folder of a Hydra sweep (``job.json`` written by :mod:`fdkt_flwr.sweep`, ``results.json``
  written by the ServerApp) and writes ``sweep.csv`` (one row per job × client),
  ``sweep.md`` (mean ± std over seeds per ε, the local-only baseline as its own row, ε=∞
  labelled "non-private") and ``privacy_utility.png`` into the sweep folder.
* Single run (:func:`run_report`): one ``results.json`` → ``report.md`` + plots (accuracy per
  round, ε per client, label distributions, synthetic-data statistics) + a few generated texts.

CLI::

    python -m fdkt_flwr.report RUN_DIR          # a run folder (has results.json)
    python -m fdkt_flwr.report SWEEP_DIR        # a sweep folder (job folders below it)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"  # written by fdkt_flwr.sweep at the start of a multirun
JOB_FILE = "job.json"  # written by fdkt_flwr.sweep after each job
RESULTS_FILE = "results.json"  # written by the ServerApp
SUPERLINK_DIR = "superlink"  # a job's own SuperLink workdir (never a job folder)

# Statuses of a job row: "completed" counts towards the statistics; everything else is reported.
DONE = "completed"
MISSING = "missing"

# Keys that identify a job but are not a "setting" of the study.
_NOT_SETTINGS = ("seed", "output-dir")

# One row per job × client (a job without per-client results still gets one row, client None).
CLIENT_COLUMNS = [
    "job", "status", "details", "epsilon", "seed", "client", "accuracy", "macro_f1",
    "baseline_accuracy", "baseline_macro_f1", "gain", "zero_shot_accuracy",
    "zero_shot_macro_f1", "dp_synthetic_accuracy", "dp_synthetic_macro_f1", "epsilon_spent",
    "delta", "private", "num_private", "num_synthetic", "run_id", "elapsed_s", "overrides",
]
METRICS = ("accuracy", "macro_f1", "baseline_accuracy", "baseline_macro_f1", "gain",
           "zero_shot_accuracy", "zero_shot_macro_f1", "dp_synthetic_accuracy",
           "dp_synthetic_macro_f1", "epsilon_spent")
# Baselines trained in the same run and split (the ``baselines`` setting), as results.json's
# metric prefix -> the name people read. "local" and "zero-shot" do not use the client's DP
# demonstrations, so they do not depend on ε (one reference row / line per group);
# "dp-synthetic" does (one value per ε, next to FDKT's).
EPS_FREE_BASELINES = {"baseline": "local-only baseline", "zero_shot": "zero-shot LLM baseline"}
DP_BASELINE = ("dp_synthetic", "DP-synthetic baseline (no LLM)")

_STYLE = {
    "figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight", "font.size": 11,
    "axes.titlesize": 13, "axes.titleweight": "bold", "axes.labelsize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "axes.axisbelow": True, "legend.fontsize": 9.5,
    "legend.frameon": False,
}


# --------------------------------------------------------------------------- small helpers

def num(x: Any) -> float | None:
    """A float from what results.json may hold: numbers, "inf" strings, None; NaN -> None."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def fmt_eps(eps: float | None) -> str:
    """``1.0 -> "1"``, ``2.5 -> "2.5"``, ``inf -> "∞"``, None -> "–"."""
    if eps is None or (isinstance(eps, float) and math.isnan(eps)):
        return "–"
    if math.isinf(eps):
        return "∞"
    return f"{eps:g}" if eps >= 0.1 else f"{eps:.2g}"


def _fmt(x: Any, digits: int = 3) -> str:
    v = num(x)
    if v is None:
        return "–"
    return fmt_eps(v) if math.isinf(v) else f"{v:.{digits}f}"


def _pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    """``mean ± std``; the std is left out when there is only one value (it is NaN then)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _read_json(path: Path) -> dict[str, Any] | None:
    """The file's object, or None when absent or unreadable (a crash mid-write, a bad file)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_overrides(job_dir: Path) -> list[str] | None:
    """Hydra's record of a job's overrides (``.hydra/overrides.yaml``), if any."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return None
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
    except Exception:  # a malformed file must not stop the report
        return None
    return [str(x) for x in data] if isinstance(data, list) else None


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table (no tabulate dependency); pipes in cells are escaped."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |",
             "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def _pyplot():
    """matplotlib with the Agg backend (no display; safe inside Hydra jobs and CI)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- sweep: collect

def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job folder below ``sweep_dir``: it has a job.json, a results.json or .hydra/.

    Nested folders are expected: Hydra names a job folder by its overrides, and a value with a
    ``/`` (a CSV path) makes sub-folders. A job's own SuperLink workdir is never a job.
    """
    found: set[Path] = set()
    for pattern in (JOB_FILE, RESULTS_FILE, ".hydra/overrides.yaml"):
        for p in sweep_dir.rglob(pattern):
            d = p.parent.parent if pattern.startswith(".hydra") else p.parent
            if SUPERLINK_DIR in d.relative_to(sweep_dir).parts[:-1] or d.name == SUPERLINK_DIR:
                continue
            found.add(d)
    return sorted(found)


def _expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The override lists of the latest multirun in this folder (from sweep.json), if known."""
    meta = _read_json(sweep_dir / SWEEP_FILE)
    if not meta or not isinstance(meta.get("jobs"), list):
        return None
    return [[str(o) for o in job] for job in meta["jobs"]]


def _job_status(job: dict[str, Any] | None, results: dict[str, Any] | None) -> tuple[str, str]:
    """(status, details): job.json's verdict first (it knows the run's real status)."""
    if job and job.get("status"):
        status, details = str(job["status"]), str(job.get("details") or "")
        if status == DONE and (results is None or results.get("status") != "completed"):
            return "failed", "job.json says completed but results.json is missing or incomplete"
        return status, details
    if results is None:
        return "incomplete", "no job.json and no results.json (still running, or killed)"
    rs = str(results.get("status", ""))
    if rs == "completed":
        return DONE, ""
    if rs == "failed":
        return "failed", "results.json status failed"
    return "incomplete", f"results.json status {rs or 'unknown'} and no job.json"


def _config_of(job: dict[str, Any] | None, results: dict[str, Any] | None) -> dict[str, Any]:
    """The job's resolved run config (run-config spelling), from results.json or job.json."""
    if results and isinstance(results.get("config"), dict):
        return dict(results["config"])
    if job and isinstance(job.get("config"), dict):
        return dict(job["config"])
    return {}


def _rows_for_job(name: str, job_dir: Path | None, overrides: list[str]) -> tuple[
        list[dict[str, Any]], dict[str, Any]]:
    """One row per client of one job (or a single row with client None), plus its config."""
    job = _read_json(job_dir / JOB_FILE) if job_dir else None
    results = _read_json(job_dir / RESULTS_FILE) if job_dir else None
    if job_dir is None:
        status, details = MISSING, "no job folder (not run yet, or the sweep was interrupted)"
    else:
        status, details = _job_status(job, results)
    config = _config_of(job, results)
    base = {"job": name, "status": status, "details": details,
            "epsilon": num(config.get("privacy.epsilon")), "seed": config.get("seed"),
            "run_id": (job or {}).get("run_id"), "elapsed_s": num((job or {}).get("elapsed_s")),
            "overrides": ",".join(overrides)}
    if base["epsilon"] is None:  # a job that never composed: read ε from its overrides
        for o in overrides:
            k, _, v = o.partition("=")
            if k.lstrip("+~") == "privacy.epsilon":
                base["epsilon"] = num(v)
            elif k.lstrip("+~") == "seed" and base["seed"] is None:
                base["seed"] = int(v) if v.isdigit() else v
    clients = (results or {}).get("clients") or {}
    privacy = (results or {}).get("privacy") or {}
    rows = []
    for cid in sorted(clients):
        c = clients[cid] or {}
        acc, bacc = num(c.get("accuracy")), num(c.get("baseline_accuracy"))
        gain = num(c.get("gain_accuracy"))
        if gain is None and acc is not None and bacc is not None:
            gain = acc - bacc
        p = privacy.get(cid) or {}
        rows.append({**base, "client": cid, "accuracy": acc, "macro_f1": num(c.get("macro_f1")),
                     "baseline_accuracy": bacc,
                     "baseline_macro_f1": num(c.get("baseline_macro_f1")), "gain": gain,
                     **{f"{b}_{m}": num(c.get(f"{b}_{m}")) for b in ("zero_shot", "dp_synthetic")
                        for m in ("accuracy", "macro_f1")},
                     "epsilon_spent": num(c.get("epsilon", p.get("epsilon"))),
                     "delta": num(c.get("delta", p.get("delta"))),
                     "private": c.get("private", p.get("private")),
                     "num_private": num(c.get("num_private")),
                     "num_synthetic": num(c.get("num_synthetic"))})
    if not rows:
        rows.append({**base, "client": None})
    return rows, config


def collect(sweep_dir: Path | str) -> pd.DataFrame:
    """All jobs of a sweep as a DataFrame: one row per job × client.

    A job without per-client results (failed before round 1, missing, still running) keeps one
    row with ``client`` None and empty metrics, so every job is counted. When ``sweep.json``
    lists the latest multirun's jobs, only those are reported (older jobs in the same folder
    are ignored) and listed jobs without a folder get status ``missing``.

    Columns: :data:`CLIENT_COLUMNS` plus one column per run-config key that differs between
    jobs (e.g. ``dataset.private-size``), except seed and output-dir. ``df.attrs`` holds
    ``settings`` (those keys), ``counts`` (jobs per status, ``total``) and ``sweep_dir``.
    """
    sweep_dir = Path(sweep_dir).resolve()
    expected = _expected_jobs(sweep_dir)
    by_overrides: dict[tuple[str, ...], Path] = {}
    unlabelled: list[Path] = []
    for d in _job_dirs(sweep_dir):
        ov = (_read_json(d / JOB_FILE) or {}).get("overrides")
        ov = [str(o) for o in ov] if isinstance(ov, list) else _read_overrides(d)
        if ov is None:
            unlabelled.append(d)
        else:
            by_overrides[tuple(sorted(ov))] = d
    jobs: list[tuple[str, Path | None, list[str]]] = []
    if expected is not None:
        for ov in expected:
            d = by_overrides.get(tuple(sorted(ov)))
            name = str(d.relative_to(sweep_dir)) if d else ",".join(ov) or "(no overrides)"
            jobs.append((name, d, ov))
    else:
        for key, d in sorted(by_overrides.items(), key=lambda kv: str(kv[1])):
            jobs.append((str(d.relative_to(sweep_dir)) if d != sweep_dir else ".", d, list(key)))
        for d in unlabelled:
            jobs.append((str(d.relative_to(sweep_dir)) if d != sweep_dir else ".", d, []))

    rows: list[dict[str, Any]] = []
    configs: list[dict[str, Any]] = []
    for name, d, ov in jobs:
        r, cfg = _rows_for_job(name, d, ov)
        rows += r
        configs.append(cfg)
    # A job recorded before a setting existed ran with its default: fill it in, so that a
    # schema that grew between jobs does not look like a swept setting.
    from fdkt_flwr.config import FdktConfig, to_run_config

    defaults = to_run_config(FdktConfig())
    configs = [{**defaults, **c} if c else c for c in configs]
    settings = _varying_settings(configs)
    config_of = {name: cfg for (name, _, _), cfg in zip(jobs, configs, strict=True)}
    for row in rows:
        for key in settings:
            row[key] = config_of[row["job"]].get(key)
    df = pd.DataFrame(rows, columns=[*CLIENT_COLUMNS, *settings])
    per_job = df.drop_duplicates("job")
    counts = per_job["status"].value_counts().to_dict()
    counts["total"] = len(per_job)
    df.attrs.update({"settings": settings, "counts": counts, "sweep_dir": str(sweep_dir)})
    return df


def _varying_settings(configs: list[dict[str, Any]]) -> list[str]:
    """Run-config keys whose value differs between jobs (the study's other axes), sorted."""
    keys: set[str] = set().union(*(c.keys() for c in configs)) if configs else set()
    out = []
    for k in sorted(keys):
        if k in _NOT_SETTINGS or k == "privacy.epsilon":
            continue
        values = {json.dumps(c.get(k), sort_keys=True, default=str) for c in configs if c}
        if len(values) > 1:
            out.append(k)
    return out


# --------------------------------------------------------------------------- sweep: summarize

def per_job(df: pd.DataFrame) -> pd.DataFrame:
    """Completed jobs only, one row each: metrics averaged over the job's clients."""
    settings = list(df.attrs.get("settings", []))
    done = df[(df["status"] == DONE) & df["client"].notna()]
    if done.empty:
        return pd.DataFrame(columns=["job", "epsilon", "seed", *settings, *METRICS])
    keys = ["job", "epsilon", "seed", *settings]
    # dropna=False: a setting may legitimately be None in some jobs
    out = done.groupby(keys, dropna=False, sort=False)[list(METRICS)].mean().reset_index()
    return out


_SUMMARY_METRICS = ("accuracy", "macro_f1", "gain", "epsilon_spent", "dp_synthetic_accuracy")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per setting group and ε, plus baseline rows per group.

    Each job is first averaged over its clients; the std is over jobs (seeds). Columns:
    ``kind`` ("baseline" = local-only, "zero_shot", or "fdkt"), the setting keys, ``epsilon``,
    ``n_done``, ``n_jobs`` and ``<metric>_mean`` / ``<metric>_std`` for accuracy, macro_f1,
    gain, epsilon_spent and (fdkt rows) dp_synthetic_accuracy. An ε-free baseline row averages
    per seed first (the same seed's jobs share one baseline), and exists only where the runs
    trained that baseline.
    """
    settings = list(df.attrs.get("settings", []))
    jobs = per_job(df)
    all_jobs = df.drop_duplicates("job")
    out: list[dict[str, Any]] = []

    def groups(frame: pd.DataFrame):
        if not settings:
            yield (), frame
            return
        yield from ((k if isinstance(k, tuple) else (k,), g)
                    for k, g in frame.groupby(settings, dropna=False, sort=True))

    all_groups = dict(groups(all_jobs))
    done_groups = dict(groups(jobs))
    for gkey, g_all in all_groups.items():
        g = done_groups.get(gkey, jobs.iloc[0:0])
        labels = dict(zip(settings, gkey, strict=True)) if settings else {}
        for kind in EPS_FREE_BASELINES:
            if g.empty:
                break
            cols = [f"{kind}_accuracy", f"{kind}_macro_f1"]
            per_seed = g.groupby("seed", dropna=False)[cols].mean()
            acc_m, acc_s = _mean_std(per_seed[cols[0]])
            f1_m, f1_s = _mean_std(per_seed[cols[1]])
            if acc_m is not None:  # only where the runs trained this baseline
                out.append({"kind": kind, **labels, "epsilon": None,
                            "n_done": int(per_seed[cols[0]].notna().sum()),
                            "n_jobs": int(per_seed.shape[0]), "accuracy_mean": acc_m,
                            "accuracy_std": acc_s, "macro_f1_mean": f1_m, "macro_f1_std": f1_s})
        # ε <= 0 only comes from a job rejected as invalid: listed with the failed jobs only
        eps_values = sorted({e for e in g_all["epsilon"] if (num(e) or 0) > 0},
                            key=lambda e: (math.isinf(e), e))
        for eps in eps_values:
            ge = g[g["epsilon"] == eps]
            row: dict[str, Any] = {"kind": "fdkt", **labels, "epsilon": eps,
                                   "n_done": len(ge),
                                   "n_jobs": int((g_all["epsilon"] == eps).sum())}
            for m in _SUMMARY_METRICS:
                row[f"{m}_mean"], row[f"{m}_std"] = _mean_std(ge.get(m, []))
            out.append(row)
    columns = ["kind", *settings, "epsilon", "n_done", "n_jobs",
               *(f"{m}_{s}" for m in _SUMMARY_METRICS for s in ("mean", "std"))]
    return pd.DataFrame(out, columns=columns)


def _mean_std(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """Mean and sample std of the known values; inf (non-private ε spent) stays inf, no std."""
    vals = [v for v in (num(x) for x in values) if v is not None]
    if not vals:
        return None, None
    if any(math.isinf(v) for v in vals):
        return math.inf, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


# --------------------------------------------------------------------------- sweep: write

def _setting_label(row: Mapping[str, Any], settings: Sequence[str]) -> str:
    return ", ".join(f"{k}={row.get(k)}" for k in settings)


def sweep_markdown(df: pd.DataFrame, summary: pd.DataFrame, title: str = "") -> str:
    """The sweep's markdown report: the privacy-utility table and the jobs that did not finish."""
    settings = list(df.attrs.get("settings", []))
    counts = dict(df.attrs.get("counts", {}))
    total = counts.pop("total", 0)
    status_line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: (
        kv[0] != DONE, kv[0])))
    lines = [f"# {title or 'FDKT sweep'}", "",
             f"{total} job(s): {status_line or 'none found'}. Each job is averaged over its "
             "clients; ± is the standard deviation over seeds. Accuracy is the clients' SLM "
             "on their own held-out test data. Baselines use the same SLM and split: "
             "*local-only* trains on private data alone, *zero-shot* adds LLM samples written "
             "without demonstrations (neither depends on ε), *DP-synthetic* adds the client's "
             "own DP demonstrations without the LLM (depends on ε).", ""]
    dp_base = "dp_synthetic_accuracy_mean" in summary and \
        summary["dp_synthetic_accuracy_mean"].notna().any()
    header = [*(settings or []), "setting", "ε target", "ε spent", "accuracy", "macro-F1",
              "gain vs local-only", *(["DP-synthetic baseline (no LLM)"] if dp_base else []),
              "seeds done"]
    rows = []
    for _, r in summary.iterrows():
        prefix = [r.get(k) for k in settings]
        if r["kind"] in EPS_FREE_BASELINES:
            rows.append([*prefix, EPS_FREE_BASELINES[r["kind"]], "–",
                         "0 (no release)" if r["kind"] == "baseline" else "0 (no DP data)",
                         _pm(r["accuracy_mean"], r["accuracy_std"]),
                         _pm(r["macro_f1_mean"], r["macro_f1_std"]), "–",
                         *(["–"] if dp_base else []), f"{r['n_done']}"])
            continue
        eps = num(r["epsilon"])
        name = "FDKT, non-private (ε=∞)" if eps is not None and math.isinf(eps) \
            else f"FDKT, ε={fmt_eps(eps)}"
        spent = _fmt(r.get("epsilon_spent_mean"), 2)
        gain = _pm(r.get("gain_mean"), r.get("gain_std"))
        if gain != "–" and not gain.startswith("-"):
            gain = "+" + gain
        dp = [_pm(num(r.get("dp_synthetic_accuracy_mean")),
                  num(r.get("dp_synthetic_accuracy_std")))] if dp_base else []
        rows.append([*prefix, name, fmt_eps(eps), spent,
                     _pm(r.get("accuracy_mean"), r.get("accuracy_std")),
                     _pm(r.get("macro_f1_mean"), r.get("macro_f1_std")), gain, *dp,
                     f"{r['n_done']}/{r['n_jobs']}"])
    lines.append(_md_table(header, rows) if counts.get(DONE) else "_No completed job yet._")
    lines += ["", "![privacy-utility](privacy_utility.png)", ""]
    bad = df.drop_duplicates("job")
    bad = bad[bad["status"] != DONE]
    if not bad.empty:
        lines += ["## Jobs that did not complete", "",
                  _md_table(["job", "ε", "seed", "status", "details"],
                            [[r["job"], fmt_eps(num(r["epsilon"])), r["seed"], r["status"],
                              (str(r["details"]) or "–")[:300]] for _, r in bad.iterrows()]),
                  ""]
    lines += ["Per job and client: `sweep.csv`. Each completed job's folder has its own "
              "`report.md` (`python -m fdkt_flwr.report <job folder>` re-writes it).", ""]
    return "\n".join(lines)


def plot_privacy_utility(summary: pd.DataFrame, path: Path, settings: Sequence[str] = (),
                         title: str = "") -> Path:
    """Accuracy vs ε (log x axis, ∞ at the right end), error bars = std over seeds.

    The local-only (and, where trained, zero-shot) baseline is a horizontal line (band = its
    std); the DP-synthetic baseline, which depends on ε, is a faint dashed line; non-private
    FDKT (ε=∞) is both a point at the ∞ tick and a dashed reference line.
    """
    plt = _pyplot()
    fdkt = summary[summary["kind"] == "fdkt"] if not summary.empty else summary
    eps_all = [float(e) for e in fdkt.get("epsilon", []) if num(e) is not None]
    finite = sorted({e for e in eps_all if not math.isinf(e)})
    has_inf = any(math.isinf(e) for e in eps_all)
    # ∞ sits one step right of the largest finite ε on the log axis, with its own label.
    x_inf = finite[-1] * 3.0 if finite else 1.0
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        groups = [((), summary)] if not settings or summary.empty else [
            (k if isinstance(k, tuple) else (k,), g)
            for k, g in summary.groupby(list(settings), dropna=False, sort=True)]
        plotted = False
        for i, (gkey, g) in enumerate(groups):
            color = colors[i % len(colors)]
            suffix = f" ({', '.join(f'{k}={v}' for k, v in zip(settings, gkey, strict=True))})" \
                if settings else ""
            for kind, style, shade in (("baseline", ":", "0.35"), ("zero_shot", "-.", "0.55")):
                base = g[g["kind"] == kind]
                if base.empty or num(base.iloc[0]["accuracy_mean"]) is None:
                    continue
                m, s = float(base.iloc[0]["accuracy_mean"]), num(base.iloc[0]["accuracy_std"])
                ax.axhline(m, color=shade if not settings else color, lw=1.4, ls=style,
                           label=f"{EPS_FREE_BASELINES[kind]}{suffix}"
                           + (" (band: ± std)" if s else ""))
                if s:
                    ax.axhspan(m - s, m + s, color=shade, alpha=0.12, lw=0)
                plotted = True
            f = g[(g["kind"] == "fdkt") & g["accuracy_mean"].notna()] if "accuracy_mean" in g \
                else g.iloc[0:0]
            pts = [(float(e), float(y), num(sd) or 0.0) for e, y, sd in
                   zip(f["epsilon"], f["accuracy_mean"], f["accuracy_std"], strict=True)]
            fin = sorted(p for p in pts if not math.isinf(p[0]))
            inf = [p for p in pts if math.isinf(p[0])]
            for (x, y, _), (_, r) in zip(
                    [(x_inf if math.isinf(p[0]) else p[0], p[1], p[2]) for p in pts],
                    f.iterrows(), strict=True):
                if r["n_done"] < r["n_jobs"]:  # say so when a point rests on fewer seeds
                    ax.annotate(f"{r['n_done']}/{r['n_jobs']} seeds", (x, y),
                                textcoords="offset points", xytext=(6, -14), fontsize=8.5,
                                color="0.35")
            if fin:
                ax.errorbar([p[0] for p in fin], [p[1] for p in fin], yerr=[p[2] for p in fin],
                            fmt="-o", color=color, lw=2, ms=7, capsize=4, label=f"FDKT{suffix}")
            dp = [(x_inf if math.isinf(float(e)) else float(e), num(y), num(sd) or 0.0)
                  for e, y, sd in zip(f["epsilon"], f.get("dp_synthetic_accuracy_mean", []),
                                      f.get("dp_synthetic_accuracy_std", []), strict=False)
                  if num(y) is not None]
            if dp:  # the client's own DP demonstrations without the LLM, per ε
                dp.sort()
                ax.errorbar([p[0] for p in dp], [p[1] for p in dp], yerr=[p[2] for p in dp],
                            fmt="--s", color=color, alpha=0.55, lw=1.4, ms=5, capsize=3,
                            label=f"{DP_BASELINE[1]}{suffix}")
            if inf:
                _, y, e = inf[0]
                ax.errorbar([x_inf], [y], yerr=[e], fmt="D", color=color, ms=8, capsize=4,
                            label=None if fin else f"FDKT{suffix}")
                ax.axhline(y, color=color, lw=1.2, ls="--", alpha=0.7,
                           label=f"FDKT non-private (ε=∞){suffix}")
            plotted = plotted or bool(pts)
        ticks = finite + ([x_inf] if has_inf else [])
        if ticks:
            ax.set_xscale("log")
            ax.set_xticks(ticks)
            ax.set_xticklabels([fmt_eps(t) for t in finite]
                               + (["∞\n(non-private)"] if has_inf else []))
            ax.minorticks_off()
            ax.set_xlim(min(ticks) / 1.6, max(ticks) * 1.6)
            if finite and has_inf:  # a faint break between the finite axis and the ∞ column
                ax.axvline(math.sqrt(finite[-1] * x_inf), color="0.75", lw=1)
        ax.set_xlabel("privacy budget ε per client (log scale)")
        ax.set_ylabel("test accuracy (mean over clients)")
        ax.set_title(title or "Privacy–utility trade-off of FDKT")
        if plotted:  # below the axes: the reference lines span the whole width
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=2)
        else:
            ax.text(0.5, 0.5, "no completed job yet", ha="center", va="center",
                    transform=ax.transAxes, color="0.4", fontsize=13)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def write_sweep_report(sweep_dir: Path | str, title: str = "") -> dict[str, Path]:
    """Collect a sweep and write ``sweep.csv``, ``sweep.md`` and ``privacy_utility.png``."""
    sweep_dir = Path(sweep_dir).resolve()
    df = collect(sweep_dir)
    summary = summarize(df)
    settings = list(df.attrs.get("settings", []))
    title = title or f"FDKT sweep: {sweep_dir.name}"
    paths = {"csv": sweep_dir / "sweep.csv", "md": sweep_dir / "sweep.md",
             "png": sweep_dir / "privacy_utility.png"}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(paths["csv"], index=False)
    paths["md"].write_text(sweep_markdown(df, summary, title))
    dataset = _common_value(sweep_dir, "dataset.name")
    plot_privacy_utility(summary, paths["png"], settings,
                         title=f"Privacy–utility trade-off{f' ({dataset})' if dataset else ''}")
    return paths


def _common_value(sweep_dir: Path, key: str) -> str:
    """A config value shared by the sweep's jobs (for titles), or ''."""
    values = set()
    for d in _job_dirs(sweep_dir):
        cfg = _config_of(_read_json(d / JOB_FILE), _read_json(d / RESULTS_FILE))
        if key in cfg:
            values.add(str(cfg[key]))
    return values.pop() if len(values) == 1 else ""


# --------------------------------------------------------------------------- single run

def _rounds(res: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [r for r in res.get("rounds") or [] if isinstance(r, dict)]


def _clients(res: Mapping[str, Any]) -> list[str]:
    """Every client id seen anywhere in the results (a failed client still has a row)."""
    ids: set[str] = set(res.get("clients") or {}) | set(res.get("privacy") or {})
    for r in _rounds(res):
        ids |= set(r.get("clients") or {}) | set(r.get("server") or {})
    ids |= {str(f.get("client")) for f in res.get("failures") or [] if f.get("client")}
    return sorted(ids, key=lambda c: [int(t) if t.isdigit() else t
                                      for t in re.split(r"(\d+)", c)])


def _server_stats(res: Mapping[str, Any], cid: str) -> list[dict[str, Any]]:
    return [r["server"][cid] for r in _rounds(res)
            if isinstance(r.get("server"), dict) and isinstance(r["server"].get(cid), dict)]


def _private_label_counts(res: Mapping[str, Any], cid: str,
                          names: list[str]) -> dict[str, int] | None:
    """Private label counts where the results carry them (several places are accepted)."""
    cands: list[Any] = [(res.get("clients") or {}).get(cid, {}).get("private_label_counts")]
    for s in _server_stats(res, cid):
        cands += [s.get("private_label_counts"),
                  (s.get("client_stats") or {}).get("private_label_counts")]
    for r in _rounds(res):
        cands.append(((r.get("clients") or {}).get(cid) or {}).get("private_label_counts"))
    for c in cands:
        if isinstance(c, dict):
            return {str(k): int(v) for k, v in c.items()}
        if isinstance(c, list):
            return {(names[i] if i < len(names) else f"label {i}"): int(v)
                    for i, v in enumerate(c)}
    return None


def _synthetic_summary(res: Mapping[str, Any], cid: str) -> dict[str, Any]:
    """Demonstrations and LLM samples of one client, summed over rounds."""
    out: dict[str, Any] = {"prompts_sent": 0, "samples_parsed": 0, "sent": 0,
                           "dropped": {}, "label_counts": {}, "rounds": 0}
    for s in _server_stats(res, cid):
        cs = s.get("client_stats") or {}
        for k in ("demos_sampled", "demos_sent"):
            if k in cs:
                out[k] = int(cs[k])
        for k, v in cs.items():
            if k.startswith("demos_dropped_"):
                out.setdefault("demos_dropped", {})[k[len("demos_dropped_"):]] = int(v)
        if "demonstrations_kept" in s:
            out["demonstrations_kept"] = int(s["demonstrations_kept"])
        if "demonstrations_received" in s:
            out["demonstrations_received"] = int(s["demonstrations_received"])
        if "sent" not in s and "samples_parsed" not in s:
            continue
        out["rounds"] += 1
        for k in ("prompts_sent", "samples_parsed", "sent"):
            out[k] += int(num(s.get(k)) or 0)
        for k, v in (s.get("dropped") or {}).items():
            out["dropped"][k] = out["dropped"].get(k, 0) + int(v)
        for k, v in (s.get("label_counts") or {}).items():
            out["label_counts"][k] = out["label_counts"].get(k, 0) + int(v)
        for k in ("distinct_1", "distinct_2", "similarity_to_demos"):
            if num(s.get(k)) is not None:
                out[k] = float(s[k])  # the last round's value
    return out


def _label_names(res: Mapping[str, Any]) -> list[str]:
    names: list[str] = []
    for r in _rounds(res):
        for s in (r.get("server") or {}).values():
            for k in ("budget", "label_counts"):
                for n in (s or {}).get(k) or {}:
                    if n not in names:
                        names.append(str(n))
    return names


def sample_texts(run_dir: Path, cid: str, per_label: int = 2, max_chars: int = 240
                 ) -> list[tuple[str, str]]:
    """(label, text) pairs from the last round of ``samples/<client>.md``, a few per label."""
    path = run_dir / "samples" / f"{cid}.md"
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    last = text.split("\n## Round ")[-1] if "\n## Round " in text else text
    out: list[tuple[str, str]] = []
    label, taken = "", 0
    for line in last.splitlines():
        if line.startswith("### "):
            label, taken = line[4:].strip(), 0
        elif line.startswith("- ") and label and taken < per_label:
            t = line[2:].strip()
            out.append((label, t if len(t) <= max_chars else t[: max_chars - 1] + "…"))
            taken += 1
    return out


def _plot_accuracy(res: Mapping[str, Any], clients: list[str], path: Path) -> Path | None:
    rounds = _rounds(res)
    series = {c: [(r.get("round"), (r.get("clients") or {}).get(c) or {}) for r in rounds]
              for c in clients}
    if not any(num(m.get("accuracy")) is not None for s in series.values() for _, m in s):
        return None
    plt = _pyplot()
    with plt.rc_context(_STYLE):
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
        if len(rounds) <= 1:
            # One round: lines of one point say nothing; compare side by side instead.
            shown = [c for c in clients if series[c] and
                     num(series[c][-1][1].get("accuracy")) is not None]
            last = {c: series[c][-1][1] for c in shown}
            # every model trained in this run, baselines first, FDKT last (and coloured)
            bars_of = [(key, label, shade) for key, label, shade in (
                ("baseline_accuracy", "local-only (private data only)", "0.72"),
                ("zero_shot_accuracy", "zero-shot LLM samples", "0.55"),
                ("dp_synthetic_accuracy", "own DP demonstrations, no LLM", "#b9d3e8"),
                ("accuracy", "FDKT (private + synthetic)", colors[0]))
                if any(num(last[c].get(key)) is not None for c in shown)]
            w = 0.8 / len(bars_of)
            for j, (key, label, shade) in enumerate(bars_of):
                xs = [x - 0.4 + w * (j + 0.5) for x in range(len(shown))]
                bars = ax.bar(xs, [num(last[c].get(key)) or 0.0 for c in shown], w,
                              color=shade, label=label)
                ax.bar_label(bars, fmt="%.3f", fontsize=8.5 if len(bars_of) > 2 else 9,
                             padding=2)
            ax.set_xticks(range(len(shown)), shown)
            ax.set_ylim(0, 1.12)
            ax.set_xlabel("client")
            ax.grid(axis="x", visible=False)
        else:
            for i, c in enumerate(clients):
                pts = [(rn, num(m.get("accuracy")), num(m.get("baseline_accuracy")))
                       for rn, m in series[c] if num(m.get("accuracy")) is not None]
                if not pts:
                    continue
                color = colors[i % len(colors)]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color=color, lw=2,
                        label=f"{c} FDKT")
                base = [(p[0], p[2]) for p in pts if p[2] is not None]
                if base:
                    ax.plot([b[0] for b in base], [b[1] for b in base], "--", color=color,
                            lw=1.3, alpha=0.8, label=f"{c} local-only")
            ax.set_xlabel("round")
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("test accuracy")
        ax.set_title("Client SLM accuracy: FDKT vs baselines")
        if len(rounds) <= 1:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
        else:  # beside the axes: lines of close values leave no free corner
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def _privacy_rows(res: Mapping[str, Any], clients: list[str]) -> list[dict[str, Any]]:
    target_default = num((res.get("config") or {}).get("privacy.epsilon"))
    rows = []
    for c in clients:
        p = (res.get("privacy") or {}).get(c) or {}
        cl = (res.get("clients") or {}).get(c) or {}
        target = num(p.get("target_epsilon"))
        target = target_default if target is None else target
        spent = num(p.get("epsilon", cl.get("epsilon")))
        private = p.get("private", cl.get("private"))
        if private is None and target is not None:
            private = not math.isinf(target)
        rows.append({"client": c, "target": target, "spent": spent, "private": private,
                     "delta": num(p.get("delta", cl.get("delta"))),
                     "sigma": num(p.get("noise_multiplier")), "q": num(p.get("sample_rate")),
                     "steps": p.get("steps"), "accountant": p.get("accountant"),
                     "mode": p.get("mode")})
    return rows


def _plot_privacy(rows: list[dict[str, Any]], path: Path) -> Path | None:
    def non_private(r: dict[str, Any]) -> bool:
        return r["private"] is False or (r["target"] is not None and math.isinf(r["target"]))

    if all(non_private(r) or (r["spent"] is None and r["target"] is None) for r in rows):
        return None  # nothing to draw: the table says "∞" for every client
    plt = _pyplot()
    with plt.rc_context(_STYLE):
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        finite = [v for r in rows for v in (r["spent"], r["target"])
                  if v is not None and not math.isinf(v)]
        top = max(finite) * 1.25 if finite else 1.0
        w = 0.38
        for i, r in enumerate(rows):
            if non_private(r):
                ax.text(i, top * 0.5, "ε = ∞\nnon-private", ha="center", va="center",
                        color="0.35", fontsize=11)
                continue
            if r["target"] is not None:
                b = ax.bar(i - w / 2, r["target"], w, color="0.8", edgecolor="0.5",
                           hatch="//", label="target (budget)" if i == 0 else None)
                ax.bar_label(b, fmt="%.2f", fontsize=9, padding=2)
            if r["spent"] is not None and not math.isinf(r["spent"]):
                b = ax.bar(i + w / 2, r["spent"], w, color=colors[2],
                           label="spent (accountant)" if i == 0 else None)
                ax.bar_label(b, fmt="%.2f", fontsize=9, padding=2)
        ax.set_xticks(range(len(rows)), [r["client"] for r in rows])
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_ylim(0, top * 1.1)
        ax.set_ylabel("ε")
        ax.set_xlabel("client")
        delta = next((r["delta"] for r in rows if r["delta"] is not None), None)
        ax.set_title("Privacy budget per client" + (f" (δ={delta:g})" if delta else ""))
        ax.grid(axis="x", visible=False)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def _plot_labels(private: dict[str, dict[str, int] | None], synthetic: dict[str, dict[str, int]],
                 names: list[str], path: Path) -> Path | None:
    have_private = {c: v for c, v in private.items() if v}
    have_synth = {c: v for c, v in synthetic.items() if v}
    if not have_private and not have_synth:
        return None
    for d in (*have_private.values(), *have_synth.values()):
        for n in d:
            if n not in names:
                names.append(n)
    panels = [(t, d) for t, d in (("private training data", have_private),
                                  ("synthetic data received (all rounds)", have_synth)) if d]
    plt = _pyplot()
    with plt.rc_context(_STYLE):
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 0.6 * max(
            len(private), len(synthetic), 2) + 2.2), squeeze=False)
        for ax, (title, data) in zip(axes[0], panels, strict=True):
            cids = sorted(data)
            left = [0] * len(cids)
            for j, n in enumerate(names):
                vals = [data[c].get(n, 0) for c in cids]
                bars = ax.barh(cids, vals, left=left, color=cmap(j), label=n)
                ax.bar_label(bars, labels=[str(v) if v else "" for v in vals],
                             label_type="center", fontsize=9, color="white")
                left = [a + b for a, b in zip(left, vals, strict=True)]
            ax.set_title(title)
            ax.set_xlabel("examples")
            ax.invert_yaxis()
            ax.grid(axis="y", visible=False)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(names), 6),
                   bbox_to_anchor=(0.5, -0.02), title="label")
        fig.suptitle("Label distribution per client", fontweight="bold", fontsize=13)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        fig.savefig(path)
        plt.close(fig)
    return path


def _plot_synthetic(stats: dict[str, dict[str, Any]], path: Path) -> Path | None:
    cids = [c for c, s in stats.items() if s.get("rounds")]
    if not cids:
        return None
    reasons = sorted({r for c in cids for r in stats[c]["dropped"]})
    plt = _pyplot()
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(cids) + 2.4))
        left = [0] * len(cids)
        sent = [stats[c]["sent"] for c in cids]
        bars = ax.barh(cids, sent, color="#2a9d8f", label="accepted and sent")
        ax.bar_label(bars, labels=[str(v) if v else "" for v in sent], label_type="center",
                     color="white", fontsize=9)
        left = list(sent)
        cmap = plt.get_cmap("Oranges")
        for j, reason in enumerate(reasons):
            vals = [stats[c]["dropped"].get(reason, 0) for c in cids]
            ax.barh(cids, vals, left=left, color=cmap(0.35 + 0.55 * j / max(1, len(reasons))),
                    label=f"dropped: {reason.replace('_', ' ')}")
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.set_xlabel("LLM samples (all rounds)")
        ax.set_title("Synthetic samples per client: accepted vs dropped")
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def run_report(run_dir: Path | str, samples_per_label: int = 2) -> Path:
    """Write ``report.md`` and its plots next to ``results.json``; return the report's path.

    Works on any results.json of the contract, also a ``running`` or ``failed`` one: what is
    missing is left out of the plots and shown as "–" in the tables.
    """
    run_dir = Path(run_dir).resolve()
    res = _read_json(run_dir / RESULTS_FILE)
    if res is None:
        raise FileNotFoundError(f"{run_dir / RESULTS_FILE}: missing or not valid JSON")
    cfg = res.get("config") or {}
    clients = _clients(res)
    names = _label_names(res)
    priv = _privacy_rows(res, clients)
    synth = {c: _synthetic_summary(res, c) for c in clients}
    private_counts = {c: _private_label_counts(res, c, names) for c in clients}
    plots = {
        "accuracy": _plot_accuracy(res, clients, run_dir / "accuracy_per_round.png"),
        "privacy": _plot_privacy(priv, run_dir / "privacy_budget.png"),
        "labels": _plot_labels(private_counts, {c: s["label_counts"] for c, s in synth.items()},
                               list(names), run_dir / "label_distribution.png"),
        "synthetic": _plot_synthetic(synth, run_dir / "synthetic_data.png"),
    }
    for name in ("accuracy_per_round", "privacy_budget", "label_distribution",
                 "synthetic_data"):  # a plot of an earlier report must not outlive its data
        png = run_dir / f"{name}.png"
        if png not in plots.values():
            png.unlink(missing_ok=True)
    md = _run_markdown(run_dir, res, cfg, clients, priv, synth, private_counts, plots,
                       samples_per_label)
    out = run_dir / "report.md"
    out.write_text(md)
    return out


def _run_markdown(run_dir: Path, res: Mapping[str, Any], cfg: Mapping[str, Any],
                  clients: list[str], priv: list[dict[str, Any]],
                  synth: dict[str, dict[str, Any]],
                  private_counts: dict[str, dict[str, int] | None],
                  plots: dict[str, Path | None], samples_per_label: int) -> str:
    eps = num(cfg.get("privacy.epsilon"))
    total = num((res.get("timing") or {}).get("total"))
    lines = [f"# FDKT run report: {run_dir.name}", "",
             f"- **status**: {res.get('status', 'unknown')}; rounds completed: "
             f"{len(_rounds(res))} of {cfg.get('num-server-rounds', '?')}; clients: "
             f"{len(clients)}" + (f"; total time {total / 60:.1f} min" if total else ""),
             f"- **dataset**: {cfg.get('dataset.name', '?')} (partitioner "
             f"{cfg.get('dataset.partitioner', '?')}, {cfg.get('dataset.private-size', '?')} "
             "private examples per client)",
             f"- **privacy**: ε={fmt_eps(eps)} per client, δ={cfg.get('privacy.delta', '?')}"
             + (" (non-private)" if eps is not None and math.isinf(eps) else ""),
             f"- **models**: generator `{cfg.get('generator.model', '?')}`, server LLM "
             f"`{cfg.get('llm.model', '?')}`, SLM `{cfg.get('slm.model', '?')}`", ""]

    lines += ["## Client results (last round)", ""]
    cl = res.get("clients") or {}
    extra = [(b, name) for b, name in (("zero_shot", "zero-shot LLM"),
                                       ("dp_synthetic", "DP demos, no LLM"))
             if any(num((cl.get(c) or {}).get(f"{b}_accuracy")) is not None for c in clients)]
    rows = []
    for c in clients:
        m = cl.get(c) or {}
        gain = num(m.get("gain_accuracy"))
        if gain is None and num(m.get("accuracy")) is not None \
                and num(m.get("baseline_accuracy")) is not None:
            gain = float(m["accuracy"]) - float(m["baseline_accuracy"])
        rows.append([c, _fmt(m.get("accuracy")), _fmt(m.get("baseline_accuracy")),
                     "–" if gain is None else f"{gain:+.3f}",
                     *(_fmt(m.get(f"{b}_accuracy")) for b, _ in extra),
                     _fmt(m.get("macro_f1")), _fmt(m.get("baseline_macro_f1")),
                     _fmt(m.get("num_private"), 0), _fmt(m.get("num_synthetic"), 0)])
    lines += [_md_table(["client", "accuracy", "local-only", "gain",
                         *(name for _, name in extra), "macro-F1", "local-only macro-F1",
                         "#private", "#synthetic"], rows), ""]
    if plots["accuracy"]:
        lines += [f"![accuracy]({plots['accuracy'].name})", ""]

    lines += ["## Privacy", "",
              _md_table(["client", "target ε", "spent ε", "δ", "σ", "sample rate", "steps",
                         "accountant", "mode"],
                        [[r["client"], fmt_eps(r["target"]), _fmt(r["spent"], 3),
                          f"{r['delta']:g}" if r["delta"] is not None else "–",
                          _fmt(r["sigma"], 3), _fmt(r["q"], 4), r["steps"] if r["steps"]
                          is not None else "–", r["accountant"] or "–", r["mode"] or "–"]
                         for r in priv]), ""]
    if plots["privacy"]:
        lines += [f"![privacy]({plots['privacy'].name})", ""]

    lines += ["## Data", ""]
    if not any(private_counts.values()):
        lines += ["_The results carry no private label counts; the plot shows the synthetic "
                  "data only._", ""]
    if plots["labels"]:
        lines += [f"![labels]({plots['labels'].name})", ""]
    rows = []
    for c in clients:
        s = synth[c]
        dd = s.get("demos_dropped") or {}
        drops = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items()) if v) or "–"
        rows.append([c, s.get("demos_sampled", "–"), s.get("demos_sent", "–")
                     if not sum(dd.values()) else
                     f"{s.get('demos_sent', '–')} ({sum(dd.values())} dropped)",
                     s.get("demonstrations_kept", "–"), s["prompts_sent"], s["samples_parsed"],
                     s["sent"], drops, _fmt(s.get("distinct_1"), 3), _fmt(s.get("distinct_2"), 3)])
    lines += ["DP demonstrations (client → server) and LLM samples (server → client), summed "
              "over rounds; distinct-n of the last round's samples.", "",
              _md_table(["client", "demos sampled", "demos sent", "demos kept", "LLM prompts",
                         "samples parsed", "samples sent", "dropped (reason n)", "distinct-1",
                         "distinct-2"], rows), ""]
    if plots["synthetic"]:
        lines += [f"![synthetic]({plots['synthetic'].name})", ""]

    samples = {c: sample_texts(run_dir, c, samples_per_label) for c in clients}
    if any(samples.values()):
        lines += ["## Generated samples (last round)", "",
                  "Synthetic, public text written by the server LLM; all of it is in "
                  "`samples/<client>.md`.", ""]
        for c in clients:
            if samples[c]:
                lines += [f"**{c}**", ""]
                lines += [f"- *{label}*: {text}" for label, text in samples[c]]
                lines.append("")

    failures = res.get("failures") or []
    if failures:
        lines += ["## Failures", "",
                  _md_table(["client", "round", "phase", "reason"],
                            [[f.get("client", "?"), f.get("round", "?"), f.get("phase", "?"),
                              str(f.get("reason", ""))[:300]] for f in failures]), ""]
    timing = res.get("timing") or {}
    if timing:
        lines += ["## Time per phase", "",
                  _md_table(["phase", "seconds"],
                            [[k, _fmt(v, 1)] for k, v in timing.items()]), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m fdkt_flwr.report",
        description="Report on one run (a folder with results.json) or a sweep folder.")
    ap.add_argument("path", type=Path, help="a run folder or a sweep folder")
    ap.add_argument("--sweep", action="store_true",
                    help="treat PATH as a sweep folder even if it has a results.json")
    args = ap.parse_args(argv)
    path = args.path.expanduser().resolve()
    if not path.is_dir():
        print(f"report: {path}: not a folder", file=sys.stderr)
        return 2
    if not args.sweep and (path / RESULTS_FILE).exists():
        out = run_report(path)
        print(f"report: {out}")
        return 0
    paths = write_sweep_report(path)
    counts = dict(collect(path).attrs["counts"])
    print(paths["md"].read_text().split("\n\n![")[0])
    print(f"\nreport: {paths['md']} ({counts.get('total', 0)} jobs), {paths['csv']}, "
          f"{paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

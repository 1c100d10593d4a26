"""The run's results: one ``results.json`` (the contract later tools rely on) plus CSV and samples.

Contract (documented in the README; keys are only ever added):

* ``config``  — the resolved settings (run-config spelling),
* ``rounds``  — a list; per round: ``round``, ``clients`` (client id → metrics of that round) and
  ``server`` (client id → augmentation statistics of that round),
* ``clients`` — client id → final ``accuracy``, ``macro_f1``, ``baseline_accuracy``,
  ``baseline_macro_f1``, ``epsilon``, ``delta``, ``num_private``, ``num_synthetic`` (+ more),
* ``privacy`` — client id → the full privacy report (enough to recompute ε),
* ``failures`` — a list of ``{client, round, phase, reason}``,
* ``timing``  — seconds per phase,
* ``status``  — ``running`` until the last round is written, then ``completed``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import re
from pathlib import Path
from typing import Any


def default_output_dir(run_id: int | str) -> Path:
    """``~/fdkt-flwr-runs/<date>-<time>-run<id>``: absolute, outside the app folder."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(os.environ.get("FDKT_RUNS_DIR", Path.home() / "fdkt-flwr-runs"))
    return (root / f"{stamp}-run{run_id}").expanduser().resolve()


def _jsonable(x: Any) -> Any:
    """JSON without NaN/inf surprises: inf becomes the string "inf" (ε=∞ must stay readable)."""
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit|Interrupt)\b.*)$")


def summarize_reason(reason: str) -> str:
    """One readable line from an error text: Ray and Flower wrap the client's exception in
    tracebacks whose first line says nothing; keep the last ``SomeError: message`` line."""
    lines = [ln.strip() for ln in _ANSI.sub("", reason or "").splitlines() if ln.strip()]
    if not lines:
        return "unknown"
    for line in reversed(lines):
        # Flower's ClientAppException carries the client's own message after this marker.
        if "occurred. Message: " in line:
            return line.split("occurred. Message: ", 1)[1].rstrip("'>\"")[:500]
    for line in reversed(lines):
        m = _EXC_LINE.match(line)
        if m and m.group(1).partition(":")[2].strip(" '>\""):
            return m.group(1).rstrip("'>\"")[:500]  # drop Flower's "<...:<'...'>" wrapper
    return lines[0][:500]


def write_json(path: Path, obj: Any) -> None:
    """Atomic write: a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


class RunResults:
    """Accumulates a run's results and writes them after every round."""

    def __init__(self, output_dir: Path, config: dict[str, Any]) -> None:
        self.dir = output_dir
        self.data: dict[str, Any] = {"status": "running", "config": config, "rounds": [],
                                     "clients": {}, "privacy": {}, "failures": [],
                                     "timing": {}}

    @property
    def path(self) -> Path:
        return self.dir / "results.json"

    def add_time(self, phase: str, seconds: float) -> None:
        t = self.data["timing"]
        t[phase] = round(t.get(phase, 0.0) + float(seconds), 3)

    def record_failure(self, client: str, server_round: int, phase: str, reason: str) -> None:
        self.data["failures"].append({"client": client, "round": server_round, "phase": phase,
                                      "reason": summarize_reason(reason)})

    def record_privacy(self, client: str, report: dict[str, Any]) -> None:
        self.data["privacy"][client] = report
        c = self.data["clients"].setdefault(client, {})
        c["epsilon"] = report.get("epsilon")
        c["delta"] = report.get("delta")
        c["private"] = report.get("private", True)

    def record_round(self, server_round: int, clients: dict[str, dict[str, Any]],
                     server: dict[str, dict[str, Any]]) -> None:
        self.data["rounds"].append({"round": server_round, "clients": clients, "server": server})
        for cid, m in clients.items():
            c = self.data["clients"].setdefault(cid, {})
            c.update({k: v for k, v in m.items()
                      if k.endswith(("accuracy", "macro_f1")) or k == "num_synthetic"})
            if "num_private" in m:
                c["num_private"] = int(m["num_private"])
            if "num_synthetic" in m:
                c["num_synthetic"] = int(m["num_synthetic"])
            c["last_round"] = server_round
        self.write()

    def write(self, status: str | None = None) -> Path:
        if status:
            self.data["status"] = status
        write_json(self.path, self.data)
        self._write_csv()
        return self.path

    def _write_csv(self) -> None:
        rows = []
        for r in self.data["rounds"]:
            for cid, m in r["clients"].items():
                rows.append({"round": r["round"], "client": cid, **{
                    k: m.get(k) for k in ("accuracy", "macro_f1", "baseline_accuracy",
                                          "baseline_macro_f1", "num_private", "num_synthetic")}})
        if not rows:
            return
        with (self.dir / "metrics.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    def write_samples(self, client: str, server_round: int, label_names: list[str],
                      samples: list[tuple[str, int]], per_label: int = 5) -> None:
        """A few generated samples per label, for people to read (public, synthetic text)."""
        out = self.dir / "samples" / f"{client}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"\n## Round {server_round}\n"]
        for y, name in enumerate(label_names):
            lines.append(f"### {name}\n")
            for t, _ in [s for s in samples if s[1] == y][:per_label]:
                lines.append(f"- {t.strip()}")
            lines.append("")
        with out.open("a") as f:
            if out.stat().st_size == 0:
                f.write(f"# Generated samples sent to {client}\n")
            f.write("\n".join(lines) + "\n")

    def summary_table(self) -> str:
        """Per-client final metrics as a markdown table (printed at the end of a run)."""
        head = "| client | ε | accuracy | local-only | gain | macro-F1 | #private | #synthetic |"
        lines = [head, "|" + " --- |" * 8]
        for cid, c in sorted(self.data["clients"].items()):
            eps = c.get("epsilon")
            eps_s = "∞" if eps in (None, "inf") or (isinstance(eps, float) and math.isinf(eps)) \
                else f"{float(eps):.2f}"

            def f(k: str, c: dict = c) -> str:
                v = c.get(k)
                return "–" if v is None else f"{float(v):.3f}"

            lines.append(f"| {cid} | {eps_s} | {f('accuracy')} | {f('baseline_accuracy')} | "
                         f"{f('gain_accuracy')} | {f('macro_f1')} | {c.get('num_private', '–')} "
                         f"| {c.get('num_synthetic', '–')} |")
        clients = list(self.data["clients"].values())
        if len(clients) > 1:
            from fdkt_flwr.metrics import summarize

            def ms(k: str) -> str:
                vals = [float(c[k]) for c in clients if c.get(k) is not None]
                if not vals:
                    return "–"
                s = summarize(vals)
                return f"{s['mean']:.3f} ± {s['std'] or 0.0:.3f}"

            lines.append(f"| mean ± std | | {ms('accuracy')} | {ms('baseline_accuracy')} | "
                         f"{ms('gain_accuracy')} | {ms('macro_f1')} | | |")
        return "\n".join(lines)

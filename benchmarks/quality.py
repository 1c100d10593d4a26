"""Quality benchmark: does FDKT beat local training, and by how much, at each privacy budget?

Runs the ``quality-small`` (CPU) or ``quality-paper`` (GPU + Hub) sweep preset: the default
dataset in the low-data regime, 3 clients, seeds, ε ∈ {1, 3, 8, ∞}, and in every job the
local-only, DP-synthetic-only and zero-shot baselines on the same splits. Then it writes
``quality.json`` (per job and the headline comparison), and the sweep's ``sweep.md`` table and
``privacy_utility.png`` plot, and prints the headline:

    python benchmarks/quality.py                         # small: the full preset
    python benchmarks/quality.py --quick                 # one seed, private size 64
    python benchmarks/quality.py --setting paper         # on a GPU machine with the Hub
    python benchmarks/quality.py --extra llm.model=...   # any sweep override (teacher strength)

Re-running resumes: finished jobs are skipped by the sweep.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def headline(df: Any) -> dict[str, Any]:
    """FDKT at ε ≤ 8 against each baseline, averaged over clients and seeds (points)."""
    done = df[(df["status"] == "completed") & df["client"].notna()]
    out: dict[str, Any] = {}
    group_keys = [k for k in df.attrs.get("settings", []) if k in done.columns]
    groups = done.groupby(group_keys, dropna=False) if group_keys else [((), done)]
    for key, g in groups:
        private = g[g["epsilon"].apply(lambda e: e is not None and math.isfinite(float(e))
                                       and float(e) <= 8)]
        if private.empty:
            continue
        name = ", ".join(f"{k}={v}" for k, v in zip(group_keys, key if isinstance(key, tuple)
                                                   else (key,), strict=False)) or "all"
        res = {"fdkt_accuracy": float(private["accuracy"].mean()), "n_client_runs": len(private)}
        for col, label in (("baseline_accuracy", "local_only"),
                           ("dp_synthetic_accuracy", "dp_synthetic"),
                           ("zero_shot_accuracy", "zero_shot")):
            if col in private and private[col].notna().any():
                res[f"{label}_accuracy"] = float(private[col].mean())
                res[f"gain_over_{label}_points"] = 100 * float(
                    (private["accuracy"] - private[col]).mean())
        inf = g[g["epsilon"].apply(lambda e: e is not None and math.isinf(float(e)))]
        if not inf.empty:
            res["fdkt_nonprivate_accuracy"] = float(inf["accuracy"].mean())
        out[name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=("small", "paper"), default="small")
    ap.add_argument("--quick", action="store_true", help="one seed and private size 64")
    ap.add_argument("--name", default="", help="sweep folder name under multirun/")
    ap.add_argument("--extra", nargs="*", default=[], help="more sweep overrides")
    args = ap.parse_args(argv)
    name = args.name or f"quality-{args.setting}" + ("-quick" if args.quick else "")
    sweep_dir = ROOT / "multirun" / name
    cmd = [sys.executable, "-m", "fdkt_flwr.sweep", "-m", f"experiment=quality-{args.setting}",
           f"hydra.sweep.dir={sweep_dir}", *args.extra]
    if args.quick:
        cmd += ["seed=0", "dataset.private_size=64"]
    print("running:", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)

    from fdkt_flwr.report import collect, write_sweep_report

    write_sweep_report(sweep_dir, title=f"FDKT quality benchmark ({name})")
    df = collect(sweep_dir)
    head = headline(df)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    payload = {"setting": name, "commit": commit, "sweep_rc": rc,
               "jobs": df.attrs.get("counts", {}), "headline": head,
               "rows": json.loads(df.to_json(orient="records"))}
    out = sweep_dir / "quality.json"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nheadline (FDKT at ε ≤ 8 vs baselines, mean over clients and seeds; commit {commit}):")
    for group, res in head.items():
        print(f"  [{group}] " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in res.items()))
    print(f"wrote {out}, {sweep_dir / 'sweep.md'}, {sweep_dir / 'privacy_utility.png'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""Compare two quality runs client by client (e.g. two server LLMs on the same splits).

    python benchmarks/compare_runs.py A/sweep.csv B/sweep.csv --names SmolLM2 Qwen \
        --out docs/results/teacher-comparison

Client runs are joined on (seed, client). The local-only baseline must agree between the two
runs for every joined client run: that is the check that both saw the same splits and the same
SLM training. Baseline arms (DP-synthetic, zero-shot) are taken from whichever run has them.
Prints a markdown table and writes ``<out>.json`` and ``<out>.png`` (accuracy per arm, one point
per client run, lines joining the same client run).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import pandas as pd

KEY = ["seed", "client"]
BASELINES = {"local-only": "baseline", "DP-synthetic": "dp_synthetic", "zero-shot": "zero_shot"}


def _completed(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    df = df[(df["status"] == "completed") & df["client"].notna()]
    return df.set_index(KEY)


def compare(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str]) -> dict[str, Any]:
    """Per-arm means over the joined client runs, and each FDKT arm's gains (points)."""
    common = a.index.intersection(b.index).sort_values()
    if common.empty:
        raise ValueError("the two runs share no (seed, client) pair")
    a, b = a.loc[common], b.loc[common]
    differ = (a["baseline_accuracy"] - b["baseline_accuracy"]).abs() > 1e-9
    if differ.any():
        raise ValueError(f"local-only accuracy differs for {list(common[differ])}: not the "
                         "same splits or SLM training")
    arms: dict[str, pd.DataFrame] = {}
    for arm, col in BASELINES.items():
        src = next(((name, r) for name, r in zip(names, (a, b), strict=True)
                    if f"{col}_accuracy" in r and r[f"{col}_accuracy"].notna().all()), None)
        if src is not None:
            # zero-shot samples are written by that run's LLM: say which
            label = f"{arm} ({src[0]})" if arm == "zero-shot" else arm
            arms[label] = src[1][[f"{col}_accuracy", f"{col}_macro_f1"]].set_axis(
                ["accuracy", "macro_f1"], axis=1)
    for name, run in zip(names, (a, b), strict=True):
        arms[f"FDKT ({name})"] = run[["accuracy", "macro_f1"]]
    out: dict[str, Any] = {"client_runs": len(common), "seeds": sorted(
        {int(s) for s, _ in common}), "arms": {}}
    local = arms["local-only"]["accuracy"]
    for arm, df in arms.items():
        row = {"accuracy": float(df["accuracy"].mean()), "macro_f1": float(df["macro_f1"].mean())}
        if arm.startswith("FDKT"):
            gain = df["accuracy"] - local
            per_seed = gain.groupby(level="seed").mean() * 100
            row.update({
                "gain_over_local_points": float(gain.mean() * 100),
                "gain_per_seed_points": [round(float(x), 2) for x in per_seed],
                "gain_std_over_seeds": float(statistics.stdev(per_seed))
                if len(per_seed) > 1 else math.nan,
                "better_tied_worse": [int((gain > 0).sum()), int((gain == 0).sum()),
                                      int((gain < 0).sum())],
            })
            for base in [k for k in arms if k.startswith(("DP-synthetic", "zero-shot"))]:
                row[f"gain_over_{base}_points"] = float(
                    (df["accuracy"] - arms[base]["accuracy"]).mean() * 100)
        out["arms"][arm] = row
    out["per_client_run"] = {f"seed {s} {c}": {arm: float(df.loc[(s, c), "accuracy"])
                                               for arm, df in arms.items()} for s, c in common}
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = ["| arm | accuracy | macro-F1 | gain over local-only (points) | per seed | "
             "better / tied / worse |", "| --- | --- | --- | --- | --- | --- |"]
    for arm, r in res["arms"].items():
        gain = r.get("gain_over_local_points")
        lines.append(
            f"| {arm} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
            + (f"{gain:+.1f} ± {r['gain_std_over_seeds']:.1f}" if gain is not None else "–")
            + " | " + (" / ".join(f"{x:+.1f}" for x in r["gain_per_seed_points"])
                       if gain is not None else "–")
            + " | " + (" / ".join(map(str, r["better_tied_worse"])) if gain is not None else "–")
            + " |")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    from fdkt_flwr.report import _pyplot

    plt = _pyplot()
    arms = list(res["arms"])
    fig, ax = plt.subplots(figsize=(1.6 * len(arms) + 1, 4))
    for run in res["per_client_run"].values():
        ax.plot(range(len(arms)), [run[a] for a in arms], color="0.8", lw=0.8, zorder=1)
        ax.scatter(range(len(arms)), [run[a] for a in arms], s=12, color="0.5", zorder=2)
    ax.scatter(range(len(arms)), [res["arms"][a]["accuracy"] for a in arms], s=80, marker="D",
               color="tab:red", zorder=3, label="mean")
    ax.set_xticks(range(len(arms)), arms, rotation=15)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{res['client_runs']} client runs (seeds {res['seeds']}), same splits")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--names", nargs=2, default=["A", "B"])
    ap.add_argument("--out", type=Path, required=True, help="path prefix for .json and .png")
    args = ap.parse_args(argv)
    try:
        res = compare(_completed(args.a), _completed(args.b), tuple(args.names))
    except ValueError as exc:
        print(f"compare_runs: {exc}", file=sys.stderr)
        return 2
    res["inputs"] = [str(args.a), str(args.b)]
    print(markdown(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')}, {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU benchmark's arithmetic (no GPU needed): the decode bound and the bandwidth probe."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu


def test_decode_bound_of_a_known_case():
    # 270 MB of bf16 weights (SmolLM2-135M) at 4.8 TB/s: 17.8k steps/s, x batch 8.
    assert gpu.decode_bound_tokens_per_s(8, 4.8e12, 270_000_000) == pytest.approx(142_222, 1e-3)


@given(st.integers(1, 512), st.floats(1e9, 1e13), st.integers(1_000_000, 10**11))
def test_decode_bound_is_linear_in_batch_and_bandwidth(batch, bw, wbytes):
    one = gpu.decode_bound_tokens_per_s(1, bw, wbytes)
    assert gpu.decode_bound_tokens_per_s(batch, bw, wbytes) == pytest.approx(batch * one)
    assert gpu.decode_bound_tokens_per_s(batch, 2 * bw, wbytes) == pytest.approx(2 * batch * one)


def test_decode_bound_rejects_nonpositive_inputs():
    with pytest.raises(ValueError):
        gpu.decode_bound_tokens_per_s(0, 1e12, 1)


def test_bandwidth_probe_returns_a_plausible_cpu_figure():
    bw = gpu.measure_bandwidth("cpu", 2**24, repeats=3)
    assert 1e8 < bw < 1e13  # between 0.1 GB/s and 10 TB/s


def _quality_rows(seed_accs: dict[tuple[int, str], tuple[float, float]], zero_shot: bool):
    import pandas as pd

    rows = []
    for (seed, client), (fdkt, local) in seed_accs.items():
        row = {"status": "completed", "seed": seed, "client": client, "accuracy": fdkt,
               "macro_f1": fdkt - 0.1, "baseline_accuracy": local,
               "baseline_macro_f1": local - 0.1}
        if zero_shot:
            row.update(zero_shot_accuracy=local + 0.01, zero_shot_macro_f1=local)
        rows.append(row)
    return pd.DataFrame(rows).set_index(["seed", "client"])


def test_compare_runs_joins_client_runs_and_computes_gains():
    import compare_runs

    a = _quality_rows({(0, "c0"): (0.70, 0.60), (0, "c1"): (0.60, 0.60),
                       (1, "c0"): (0.80, 0.70)}, zero_shot=True)
    b = _quality_rows({(0, "c0"): (0.55, 0.60), (0, "c1"): (0.70, 0.60),
                       (1, "c0"): (0.70, 0.70), (2, "c9"): (0.9, 0.1)}, zero_shot=False)
    res = compare_runs.compare(a, b, ("small", "big"))
    assert res["client_runs"] == 3  # (2, c9) exists in one run only
    small, big = res["arms"]["FDKT (small)"], res["arms"]["FDKT (big)"]
    assert small["gain_over_local_points"] == pytest.approx(100 * (0.1 + 0.0 + 0.1) / 3)
    assert small["better_tied_worse"] == [2, 1, 0]
    assert big["better_tied_worse"] == [1, 1, 1]
    assert big["gain_per_seed_points"] == [pytest.approx(2.5), pytest.approx(0.0)]
    assert "zero-shot (small)" in res["arms"]  # named after the run whose LLM wrote them
    assert big["gain_over_zero-shot (small)_points"] == pytest.approx(
        100 * ((0.55 + 0.70 + 0.70) - (0.61 + 0.61 + 0.71)) / 3)


def test_compare_runs_refuses_runs_on_different_splits():
    import compare_runs

    a = _quality_rows({(0, "c0"): (0.7, 0.6)}, zero_shot=False)
    b = _quality_rows({(0, "c0"): (0.7, 0.5)}, zero_shot=False)
    with pytest.raises(ValueError, match="local-only accuracy differs"):
        compare_runs.compare(a, b, ("x", "y"))

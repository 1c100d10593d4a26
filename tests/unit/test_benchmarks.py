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

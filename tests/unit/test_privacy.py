"""Unit tests of fdkt_flwr.privacy: spec validation, noise calibration, ledger, report.

ε values are always recomputed with Opacus' own accountant classes, never with our code.
"""

from __future__ import annotations

import json
import logging
import math
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from fdkt_flwr.privacy import (
    DP_MODE,
    BudgetExceededError,
    PrivacyError,
    PrivacyLedger,
    PrivacyReport,
    PrivacySpec,
    Release,
    calibrate_noise,
    compute_epsilon,
    import_opacus,
)

DELTA = 1e-5


def opacus_epsilon(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """ε straight from a fresh Opacus accountant (independent of our wrappers)."""
    acc = PRVAccountant() if accountant == "prv" else RDPAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


# --------------------------------------------------------------------------- PrivacySpec
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": -1.0}, "privacy.epsilon=-1.0: must be > 0 (or inf for non-private)"),
        ({"epsilon": 0}, "privacy.epsilon=0: must be > 0 (or inf for non-private)"),
        ({"epsilon": math.nan}, "privacy.epsilon=nan: must be > 0"),
        ({"delta": 2.0}, "privacy.delta=2.0: must be in (0, 1)"),
        ({"delta": 0.0}, "privacy.delta=0.0: must be in (0, 1)"),
        ({"max_grad_norm": 0}, "privacy.max-grad-norm=0: must be > 0"),
        ({"max_grad_norm": math.inf}, "privacy.max-grad-norm=inf: must be > 0"),
        ({"noise_multiplier": -0.5}, "privacy.noise-multiplier=-0.5: must be >= 0"),
        ({"accountant": "x"}, "privacy.accountant='x': must be one of prv, rdp"),
        (
            {"epsilon": math.inf, "noise_multiplier": 1.0},
            "privacy.noise-multiplier=1.0: must be 0 when privacy.epsilon=inf",
        ),
    ],
)
def test_spec_validation_messages(kwargs: dict, message: str) -> None:
    base = {"epsilon": 8.0, "delta": DELTA, "max_grad_norm": 1.0}
    base.update(kwargs)
    with pytest.raises(PrivacyError) as info:
        PrivacySpec(**base)
    text = str(info.value)
    assert text.startswith(message)
    assert "\n" not in text
    assert isinstance(info.value, ValueError)


def test_spec_is_private() -> None:
    assert PrivacySpec(8.0, DELTA, 1.0).is_private
    spec = PrivacySpec(math.inf, DELTA, 1.0)
    assert not spec.is_private
    assert spec.accountant == "prv" and spec.noise_multiplier == 0.0


def test_import_opacus_resets_flwr_logger() -> None:
    logging.getLogger("flwr").setLevel(logging.DEBUG)
    import_opacus()
    assert logging.getLogger("flwr").level == logging.INFO


# -------------------------------------------------------------------- noise calibration
@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(("target", "q", "steps"), [(1.0, 0.1, 20), (8.0, 0.05, 40)])
def test_calibration_round_trip(accountant: str, target: float, q: float, steps: int) -> None:
    sigma = calibrate_noise(target, DELTA, q, steps, accountant)
    eps = opacus_epsilon([(sigma, q, steps)], DELTA, accountant)
    assert eps <= target
    assert eps >= 0.99 * target
    assert compute_epsilon([(sigma, q, steps)], DELTA, accountant) == pytest.approx(eps)


_TARGETS = st.floats(min_value=0.5, max_value=20.0)
_RATES = st.floats(min_value=0.01, max_value=0.5)
_STEPS = st.integers(min_value=1, max_value=30)


def _check_calibration(target: float, q: float, steps: int, accountant: str) -> None:
    sigma = calibrate_noise(target, DELTA, q, steps, accountant)
    eps = opacus_epsilon([(sigma, q, steps)], DELTA, accountant)
    assert eps <= target
    assert eps >= 0.99 * target


# PRV is slow at small σ (seconds per calibration on a busy 2-core box): fewer examples.
@settings(
    max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(target=_TARGETS, q=_RATES, steps=_STEPS)
def test_calibration_property_prv(target: float, q: float, steps: int) -> None:
    """For any budget, rate and length: Opacus' ε of our σ is in [0.99·target, target]."""
    _check_calibration(target, q, steps, "prv")


@settings(
    max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(target=_TARGETS, q=_RATES, steps=st.integers(min_value=1, max_value=500))
def test_calibration_property_rdp(target: float, q: float, steps: int) -> None:
    _check_calibration(target, q, steps, "rdp")


def test_calibrate_rejects_bad_arguments() -> None:
    with pytest.raises(PrivacyError, match="sample_rate"):
        calibrate_noise(1.0, DELTA, 0.0, 10)
    with pytest.raises(PrivacyError, match="steps"):
        calibrate_noise(1.0, DELTA, 0.1, 0)
    with pytest.raises(PrivacyError, match="target_epsilon"):
        calibrate_noise(math.inf, DELTA, 0.1, 10)


# ---------------------------------------------------------------------- compute_epsilon
@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_compute_epsilon_matches_opacus_for_heterogeneous_history(accountant: str) -> None:
    history = [(1.2, 0.05, 30), (0.9, 0.1, 10)]
    assert compute_epsilon(history, DELTA, accountant) == pytest.approx(
        opacus_epsilon(history, DELTA, accountant)
    )


def test_compute_epsilon_edge_cases() -> None:
    assert compute_epsilon([], DELTA) == 0.0
    assert compute_epsilon([(0.0, 0.1, 5)], DELTA) == math.inf
    with pytest.raises(PrivacyError):
        compute_epsilon([(1.0, 0.1, 5)], DELTA, "gdp")


# ------------------------------------------------------------------------------ ledger
def test_ledger_refuses_over_budget_release_and_records_nothing() -> None:
    ledger = PrivacyLedger(2.0, DELTA, "rdp")
    ledger.record(Release(1.5, 0.1, 20, "round-1"))
    before_spent, before_n = ledger.spent(), len(ledger.releases)
    greedy = Release(0.5, 0.1, 50, "round-2")
    with pytest.raises(BudgetExceededError) as info:
        ledger.check(greedy)
    msg = str(info.value)
    assert msg.startswith("privacy budget exceeded: this release would bring ε to ")
    assert msg.endswith("> budget 2.0; nothing was spent")
    assert "\n" not in msg
    with pytest.raises(BudgetExceededError):
        ledger.record(greedy)
    assert len(ledger.releases) == before_n
    assert ledger.spent() == before_spent


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_two_releases_compose(accountant: str) -> None:
    ledger = PrivacyLedger(8.0, DELTA, accountant)
    assert ledger.spent() == 0.0
    r1, r2 = Release(1.5, 0.1, 20, "round-1"), Release(1.2, 0.05, 30, "round-2")
    one = ledger.record(r1)
    assert ledger.epsilon_if(r2) > one
    two = ledger.record(r2)
    assert two > one
    assert two == pytest.approx(opacus_epsilon([r1.entry, r2.entry], DELTA, accountant))
    assert two == compute_epsilon([r1.entry, r2.entry], DELTA, accountant)
    assert ledger.remaining() == pytest.approx(8.0 - two)


def test_ledger_calibrates_against_remaining_budget() -> None:
    ledger = PrivacyLedger(4.0, DELTA, "rdp")
    s1 = ledger.calibrate(0.1, 20)
    # A first release may spend the whole budget ...
    assert 0.99 * 4.0 <= ledger.epsilon_if(Release(s1, 0.1, 20)) <= 4.0
    ledger.record(Release(2 * s1, 0.1, 20, "round-1"))  # ... this one spends less.
    spent = ledger.spent()
    assert spent < 4.0
    s2 = ledger.calibrate(0.1, 20)
    eps2 = ledger.epsilon_if(Release(s2, 0.1, 20))
    assert 0.99 * 4.0 <= eps2 <= 4.0
    assert s2 > s1  # what is left is less than the whole budget


def test_constructor_checks_releases() -> None:
    with pytest.raises(BudgetExceededError):
        PrivacyLedger(1.0, DELTA, "rdp", [Release(0.5, 0.5, 50)])


def test_exhausted_ledger_refuses_to_calibrate() -> None:
    # A stored ledger is loaded as is, even over budget; then every release is refused.
    over = {
        "version": 1,
        "epsilon": 1.0,
        "delta": DELTA,
        "accountant": "rdp",
        "releases": [{"noise_multiplier": 0.5, "sample_rate": 0.5, "steps": 50, "label": "x"}],
    }
    ledger = PrivacyLedger(1.0, DELTA, "rdp")
    ledger.load_state_dict(over)
    assert ledger.spent() > 1.0
    with pytest.raises(BudgetExceededError, match="nothing was spent"):
        ledger.calibrate(0.2, 10)
    with pytest.raises(BudgetExceededError):
        ledger.check(Release(1000.0, 0.01, 1))
    assert len(ledger.releases) == 1


def test_non_private_release_only_in_infinite_ledger() -> None:
    finite = PrivacyLedger(8.0, DELTA)
    with pytest.raises(BudgetExceededError, match="without noise"):
        finite.record(Release(0.0, 0.1, 10))
    assert finite.releases == []
    infinite = PrivacyLedger(math.inf, DELTA)
    assert infinite.record(Release(0.0, 0.1, 10, "baseline")) == math.inf
    with pytest.raises(PrivacyError):
        infinite.calibrate(0.1, 10)


def test_state_dict_round_trip_is_json_safe() -> None:
    ledger = PrivacyLedger(8.0, DELTA, "prv")
    ledger.record(Release(1.5, 0.1, 20, "round-1"))
    ledger.record(Release(2.0, 0.05, 40, "round-2"))
    state = json.loads(json.dumps(ledger.state_dict(), allow_nan=False))
    other = PrivacyLedger(1.0, 0.5, "rdp")
    other.load_state_dict(state)
    assert other.releases == ledger.releases
    assert (other.epsilon, other.delta, other.accountant) == (8.0, DELTA, "prv")
    assert other.spent() == ledger.spent()

    inf = PrivacyLedger(math.inf, DELTA)
    inf.record(Release(0.0, 0.1, 3))
    state = json.loads(json.dumps(inf.state_dict(), allow_nan=False))
    assert state["epsilon"] == "inf"
    again = PrivacyLedger(1.0, 0.5)
    again.load_state_dict(state)
    assert again.epsilon == math.inf and again.spent() == math.inf

    with pytest.raises(PrivacyError, match="version"):
        other.load_state_dict({"version": 99})


def test_save_load_file(tmp_path) -> None:
    path = tmp_path / "node" / "ledger.json"
    spec = PrivacySpec(8.0, DELTA, 1.0, accountant="rdp")
    ledger = PrivacyLedger.load_or_create(path, spec)
    assert ledger.releases == []
    ledger.record(Release(1.5, 0.1, 20, "round-1"))
    ledger.save(path)
    ledger.record(Release(1.5, 0.1, 20, "round-2"))
    ledger.save(path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["ledger.json"]  # no temp files
    loaded = PrivacyLedger.load(path)
    assert [r.label for r in loaded.releases] == ["round-1", "round-2"]
    assert loaded.spent() == ledger.spent()
    assert PrivacyLedger.load_or_create(path, spec).releases == ledger.releases
    with pytest.raises(PrivacyError, match="config says"):
        PrivacyLedger.load_or_create(path, PrivacySpec(4.0, DELTA, 1.0, accountant="rdp"))


def test_report_to_dict_has_everything_needed_to_recompute() -> None:
    history = [(1.1, 0.1, 30)]
    report = PrivacyReport(
        private=True,
        target_epsilon=8.0,
        epsilon=compute_epsilon(history, DELTA, "rdp"),
        delta=DELTA,
        noise_multiplier=1.1,
        sample_rate=0.1,
        steps=30,
        epochs=3,
        accountant="rdp",
        max_grad_norm=0.5,
        num_examples=320,
        mode=DP_MODE,
        history=history,
    )
    d = report.to_dict()
    json.dumps(d)
    for key in [
        "private",
        "target_epsilon",
        "epsilon",
        "delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "epochs",
        "accountant",
        "max_grad_norm",
        "num_examples",
        "mode",
    ]:
        assert key in d
    recomputed = opacus_epsilon([tuple(h) for h in d["history"]], d["delta"], d["accountant"])
    assert recomputed == pytest.approx(d["epsilon"])

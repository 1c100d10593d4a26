"""Client-side differential-privacy bookkeeping for FDKT.

Only one step of FDKT touches private data: DP-SGD fine-tuning of the client's generator
(`fdkt_flwr.generator.train_dp_generator`). Everything released afterwards (sampled
demonstrations, server-side selection and augmentation) is post-processing and costs no
extra ε. This module owns the numbers behind that claim:

* `PrivacySpec`: the user's settings (budget ε, δ, clipping norm, optional fixed σ,
  accountant), validated with one-line errors naming the config key.
* `calibrate_noise` / `compute_epsilon`: thin, exact wrappers around Opacus' own
  accountants (`opacus.accountants`), so anyone can recompute our numbers with Opacus.
* `PrivacyLedger`: per-client composition of every DP release (one per training run /
  federated round). It refuses a release that would exceed the budget *before* anything
  is trained, and is persisted as a small JSON file on the client node.
* `PrivacyReport`: what a training run reports (enough to recompute ε independently).

A release is a run of the Poisson-subsampled Gaussian mechanism, described by the triple
``(noise_multiplier σ, sample_rate q, steps)``: exactly the `history` format of Opacus'
accountants.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")
NON_PRIVATE_MODE = "non-private (ε=∞, upper-bound baseline)"
DP_MODE = "dp-sgd"

# Upper limit of the σ search; Opacus uses the same bound in get_noise_multiplier.
MAX_SIGMA = 1e6
# Bisection iterations are capped: PRV's ε is a numerical (discretised) upper bound, so we
# never rely on exact monotonicity to terminate.
_MAX_BISECT_ITERS = 200

_STATE_VERSION = 1

HistoryEntry = tuple[float, float, int]


class PrivacyError(ValueError):
    """Invalid privacy settings or an invalid privacy operation (one-line message)."""


class BudgetExceededError(PrivacyError):
    """A release would exceed the client's privacy budget; nothing was spent."""


def _fmt(value: Any) -> str:
    """Format a user-supplied value for error messages, as it would appear in a config."""
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _eps_str(x: float) -> str:
    """ε for messages: 9.1, 8.0, 25.84, 0.0042, inf."""
    if math.isinf(x):
        return "inf"
    return str(round(x, 2)) if abs(x) >= 0.1 else f"{x:.2g}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class PrivacySpec:
    """A client's privacy settings.

    Attributes:
        epsilon: the client's *total* ε budget over all releases; ``math.inf`` means
            non-private training (an upper-bound baseline, no noise and no clipping).
        delta: δ of the (ε, δ) guarantee; should be well below 1 / (number of examples).
        max_grad_norm: per-example L2 clipping norm C of DP-SGD.
        noise_multiplier: σ (noise std = σ·C). 0 means "calibrate σ from the remaining
            budget"; > 0 uses this σ, and the budget is still enforced as a hard cap.
        accountant: ``"prv"`` (tight, numerical) or ``"rdp"`` (Rényi DP, looser).
    """

    epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float = 0.0
    accountant: str = "prv"

    def __post_init__(self) -> None:
        eps = self.epsilon
        if not _is_number(eps) or math.isnan(eps) or eps <= 0:
            raise PrivacyError(f"privacy.epsilon={_fmt(eps)}: must be > 0 (or inf for non-private)")
        d = self.delta
        if not _is_number(d) or math.isnan(d) or not 0 < d < 1:
            raise PrivacyError(f"privacy.delta={_fmt(d)}: must be in (0, 1)")
        c = self.max_grad_norm
        if not _is_number(c) or not math.isfinite(c) or c <= 0:
            raise PrivacyError(f"privacy.max-grad-norm={_fmt(c)}: must be > 0")
        s = self.noise_multiplier
        if not _is_number(s) or not math.isfinite(s) or s < 0:
            raise PrivacyError(
                f"privacy.noise-multiplier={_fmt(s)}: must be >= 0 (0 = calibrate from epsilon)"
            )
        if math.isinf(eps) and s > 0:
            # With ε=∞ training is non-private (no noise, no clipping): a σ would be ignored,
            # and silently ignoring a privacy setting is the bug class we want to avoid.
            raise PrivacyError(
                f"privacy.noise-multiplier={_fmt(s)}: must be 0 when privacy.epsilon=inf "
                "(non-private mode adds no noise)"
            )
        if self.accountant not in ACCOUNTANTS:
            raise PrivacyError(
                f"privacy.accountant={_fmt(self.accountant)}: must be one of "
                f"{', '.join(ACCOUNTANTS)}"
            )

    @property
    def is_private(self) -> bool:
        """True when the budget is finite, i.e. training uses DP-SGD."""
        return math.isfinite(self.epsilon)


def import_opacus() -> Any:
    """Import opacus, then undo its side effect on logging.

    Importing opacus calls ``logging.basicConfig`` (a root handler), through which the
    "flwr" logger (which flwr itself sets to DEBUG) then prints debug noise, and every INFO
    line twice; reset it to INFO and keep it on its own handlers.
    """
    import opacus

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO)
    if flwr_logger.handlers:
        flwr_logger.propagate = False
    return opacus


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(
            f"privacy.accountant={_fmt(accountant)}: must be one of {', '.join(ACCOUNTANTS)}"
        )


def _check_release_params(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not _is_number(noise_multiplier) or not (noise_multiplier >= 0):
        raise PrivacyError(f"noise_multiplier={_fmt(noise_multiplier)}: must be >= 0")
    if not _is_number(sample_rate) or not 0 < sample_rate <= 1:
        raise PrivacyError(f"sample_rate={_fmt(sample_rate)}: must be in (0, 1]")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PrivacyError(f"steps={_fmt(steps)}: must be an integer >= 1")


def _make_accountant(accountant: str) -> Any:
    # Imported lazily: importing opacus is slow and switches the "flwr" logger to DEBUG.
    import_opacus()
    from opacus.accountants import create_accountant

    return create_accountant(mechanism=accountant)


@functools.lru_cache(maxsize=512)
def _epsilon_cached(history: tuple[HistoryEntry, ...], delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf  # a release without noise has no finite guarantee
    acc = _make_accountant(accountant)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    with warnings.catch_warnings():
        # RDP warns "Optimal order is the largest alpha" for weak privacy: harmless.
        warnings.simplefilter("ignore")
        eps = float(acc.get_epsilon(delta=delta))
    return eps


def compute_epsilon(
    history: Sequence[tuple[float, float, int]], delta: float, accountant: str = "prv"
) -> float:
    """ε of the composition of `history` at `delta`, computed by Opacus' own accountant.

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` triples, one per release, in
            the format of ``opacus.accountants.IAccountant.history``.
        delta: target δ.
        accountant: ``"prv"`` or ``"rdp"``.

    Returns:
        ε (0.0 for an empty history, ``inf`` when any release has σ = 0). The PRV value is
        Opacus' guaranteed upper bound (``eps_upper``), with Opacus' default error settings.
    """
    _check_accountant(accountant)
    if not 0 < delta < 1:
        raise PrivacyError(f"delta={_fmt(delta)}: must be in (0, 1)")
    entries: list[HistoryEntry] = []
    for sigma, q, steps in history:
        _check_release_params(sigma, q, steps)
        entries.append((float(sigma), float(q), int(steps)))
    return _epsilon_cached(tuple(entries), float(delta), accountant)


def default_tolerance(target_epsilon: float) -> float:
    """Bisection tolerance: 0.005 absolute, but never more than 0.2% of the target.

    Keeps the calibrated ε within 1% of the target even for small budgets (ε = 0.5).
    """
    return min(0.005, 0.002 * target_epsilon)


def _bisect_sigma(
    prefix: tuple[HistoryEntry, ...],
    sample_rate: float,
    steps: int,
    target_epsilon: float,
    delta: float,
    accountant: str,
    tolerance: float,
) -> float:
    """Smallest σ (within tolerance) such that ε(prefix + [(σ, q, steps)]) <= target.

    Same doubling + bisection as ``opacus.accountants.utils.get_noise_multiplier``, but it
    composes with earlier releases and has an iteration cap.
    """

    def eps_at(sigma: float) -> float:
        return _epsilon_cached((*prefix, (sigma, sample_rate, steps)), delta, accountant)

    sigma_low, sigma_high = 0.0, 10.0
    eps_high = math.inf
    while eps_high > target_epsilon:
        sigma_high *= 2
        if sigma_high > MAX_SIGMA:
            raise BudgetExceededError(
                f"privacy budget exceeded: no noise level keeps ε <= {target_epsilon:.4g} "
                f"(δ={delta:g}, q={sample_rate:.4g}, steps={steps}); nothing was spent"
            )
        eps_high = eps_at(sigma_high)
    for _ in range(_MAX_BISECT_ITERS):
        if target_epsilon - eps_high <= tolerance:
            break
        sigma = (sigma_low + sigma_high) / 2
        if sigma in (sigma_low, sigma_high):
            break  # float resolution reached
        eps = eps_at(sigma)
        if eps <= target_epsilon:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    epsilon_tolerance: float | None = None,
) -> float:
    """σ for one release of `steps` Poisson-subsampled Gaussian steps at rate `sample_rate`.

    Uses ``opacus.accountants.utils.get_noise_multiplier`` (same accountant classes as
    `compute_epsilon`), then verifies the result.

    Guarantees: ``compute_epsilon([(σ, q, steps)], delta, accountant) <= target_epsilon``,
    and (with the default tolerance) it is within 0.2% of the target.

    Raises:
        PrivacyError: invalid arguments.
        BudgetExceededError: no σ <= 1e6 reaches the target.
    """
    _check_accountant(accountant)
    if not _is_number(target_epsilon) or not 0 < target_epsilon < math.inf:
        raise PrivacyError(f"target_epsilon={_fmt(target_epsilon)}: must be finite and > 0")
    if not 0 < delta < 1:
        raise PrivacyError(f"delta={_fmt(delta)}: must be in (0, 1)")
    _check_release_params(1.0, sample_rate, steps)
    tol = default_tolerance(target_epsilon) if epsilon_tolerance is None else epsilon_tolerance

    import_opacus()
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=tol,
                )
            )
    except ValueError as exc:  # "The privacy budget is too low."
        raise BudgetExceededError(
            f"privacy budget exceeded: no noise level keeps ε <= {target_epsilon:.4g} "
            f"(δ={delta:g}, q={sample_rate:.4g}, steps={steps}); nothing was spent"
        ) from exc
    # Belt and braces: recompute with our (cached) accountant call; fall back to our own
    # bisection should the two ever disagree.
    if compute_epsilon([(sigma, sample_rate, steps)], delta, accountant) > target_epsilon:
        sigma = _bisect_sigma((), sample_rate, steps, target_epsilon, delta, accountant, tol)
    return sigma


@dataclass(frozen=True)
class Release:
    """One DP release: a run of the Poisson-subsampled Gaussian mechanism.

    ``noise_multiplier == 0`` marks a non-private release (only allowed when ε = ∞).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    label: str = ""

    def __post_init__(self) -> None:
        _check_release_params(self.noise_multiplier, self.sample_rate, self.steps)

    @property
    def entry(self) -> HistoryEntry:
        """The release as an Opacus accountant history triple."""
        return (float(self.noise_multiplier), float(self.sample_rate), int(self.steps))


def _encode_float(x: float) -> float | str:
    # JSON has no infinity; store it as a string, as a user would type it in a config.
    return "inf" if math.isinf(x) else float(x)


def _decode_float(x: Any, key: str) -> float:
    if isinstance(x, str) and x.strip().lower() in ("inf", "infinity", "+inf"):
        return math.inf
    if not _is_number(x):
        raise PrivacyError(f"ledger {key}={_fmt(x)}: not a number")
    return float(x)


class PrivacyLedger:
    """Composition of every DP release of one client, checked against its budget.

    The ledger is the single source of truth for the ε a client has spent: each training
    run calls `check` (or `calibrate`) before touching private data, and `record` after.
    It lives on the client node (`save` / `load`, atomic JSON file) and survives rounds.
    """

    def __init__(
        self,
        epsilon: float,
        delta: float,
        accountant: str = "prv",
        releases: Iterable[Release] = (),
    ) -> None:
        if not _is_number(epsilon) or math.isnan(epsilon) or epsilon <= 0:
            raise PrivacyError(
                f"privacy.epsilon={_fmt(epsilon)}: must be > 0 (or inf for non-private)"
            )
        if not _is_number(delta) or not 0 < delta < 1:
            raise PrivacyError(f"privacy.delta={_fmt(delta)}: must be in (0, 1)")
        _check_accountant(accountant)
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self.accountant = accountant
        self._releases: list[Release] = []
        for r in releases:
            self.check(r)
            self._releases.append(r)

    @classmethod
    def for_spec(cls, spec: PrivacySpec) -> PrivacyLedger:
        """An empty ledger with the budget, δ and accountant of `spec`."""
        return cls(spec.epsilon, spec.delta, spec.accountant)

    def matches(self, spec: PrivacySpec) -> bool:
        """Whether `spec` has this ledger's budget, δ and accountant (anything else would
        mis-state the accounting)."""
        return (self.epsilon, self.delta, self.accountant) == (
            spec.epsilon, spec.delta, spec.accountant)

    # ------------------------------------------------------------------ queries
    @property
    def is_private(self) -> bool:
        return math.isfinite(self.epsilon)

    @property
    def releases(self) -> list[Release]:
        """A copy of the recorded releases, oldest first."""
        return list(self._releases)

    @property
    def history(self) -> list[HistoryEntry]:
        """The recorded releases as Opacus accountant history triples."""
        return [r.entry for r in self._releases]

    def spent(self) -> float:
        """ε of all recorded releases composed, at the ledger's δ (0.0 when empty)."""
        return compute_epsilon(self.history, self.delta, self.accountant)

    def remaining(self) -> float:
        """Budget minus `spent` (informative only: ε does not compose additively;
        use `epsilon_if` / `calibrate` to decide on a release)."""
        return max(0.0, self.epsilon - self.spent())

    def epsilon_if(self, release: Release) -> float:
        """ε the ledger would show after recording `release`."""
        return compute_epsilon([*self.history, release.entry], self.delta, self.accountant)

    def check(self, release: Release) -> None:
        """Raise `BudgetExceededError` if `release` would exceed the budget; records nothing."""
        if release.noise_multiplier == 0 and self.is_private:
            raise BudgetExceededError(
                "privacy budget exceeded: a release without noise (non-private) has ε=inf "
                f"> budget {_eps_str(self.epsilon)}; nothing was spent"
            )
        if not self.is_private:
            return  # an infinite budget admits everything
        eps = self.epsilon_if(release)
        if eps > self.epsilon:
            raise BudgetExceededError(
                f"privacy budget exceeded: this release would bring ε to {_eps_str(eps)} > "
                f"budget {_eps_str(self.epsilon)}; nothing was spent"
            )

    def record(self, release: Release) -> float:
        """Check, then append `release`; returns the new spent ε."""
        self.check(release)
        self._releases.append(release)
        return self.spent()

    def calibrate(
        self, sample_rate: float, steps: int, epsilon_tolerance: float | None = None
    ) -> float:
        """Smallest σ (within tolerance) whose release fits in the remaining budget.

        The search composes with the recorded releases (ε is not additive), so a first
        release may spend up to the whole budget and later ones exactly what is left.

        Raises:
            PrivacyError: the ledger's budget is infinite (there is nothing to calibrate).
            BudgetExceededError: no σ <= 1e6 fits (budget exhausted); nothing is recorded.
        """
        if not self.is_private:
            raise PrivacyError("cannot calibrate noise against an infinite budget")
        _check_release_params(1.0, sample_rate, steps)
        tol = default_tolerance(self.epsilon) if epsilon_tolerance is None else epsilon_tolerance
        if not self._releases:
            return calibrate_noise(
                self.epsilon, self.delta, sample_rate, steps, self.accountant, tol
            )
        prefix = tuple(self.history)
        if compute_epsilon(self.history, self.delta, self.accountant) >= self.epsilon:
            raise BudgetExceededError(
                f"privacy budget exceeded: ε already spent is {_eps_str(self.spent())} of "
                f"budget {_eps_str(self.epsilon)}; nothing was spent"
            )
        return _bisect_sigma(
            prefix, sample_rate, steps, self.epsilon, self.delta, self.accountant, tol
        )

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """JSON-safe snapshot (``inf`` encoded as the string ``"inf"``)."""
        return {
            "version": _STATE_VERSION,
            "epsilon": _encode_float(self.epsilon),
            "delta": self.delta,
            "accountant": self.accountant,
            "releases": [asdict(r) for r in self._releases],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace this ledger's content with `state` (from `state_dict`), validated."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise PrivacyError(
                f"ledger state: unsupported version {_fmt(state.get('version') if isinstance(state, dict) else None)}"  # noqa: E501
            )
        try:
            releases = [
                Release(
                    noise_multiplier=float(r["noise_multiplier"]),
                    sample_rate=float(r["sample_rate"]),
                    steps=int(r["steps"]),
                    label=str(r.get("label", "")),
                )
                for r in state["releases"]
            ]
            fresh = PrivacyLedger(
                _decode_float(state["epsilon"], "epsilon"),
                _decode_float(state["delta"], "delta"),
                str(state["accountant"]),
            )
        except (KeyError, TypeError) as exc:
            raise PrivacyError(f"ledger state: malformed ({exc!r})") from exc
        # A stored ledger is history: load it as is, even if it is (already) over budget,
        # so that later checks refuse everything rather than silently resetting.
        self.epsilon, self.delta, self.accountant = fresh.epsilon, fresh.delta, fresh.accountant
        self._releases = releases

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the ledger atomically (temporary file in the same folder + os.replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.state_dict(), indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivacyLedger:
        """Read a ledger written by `save`."""
        with open(path, encoding="utf-8") as fh:
            state = json.load(fh)
        ledger = cls(1.0, 0.5)
        ledger.load_state_dict(state)
        return ledger

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str], spec: PrivacySpec) -> PrivacyLedger:
        """Load the node-local ledger at `path`, or start an empty one for `spec`.

        Raises `PrivacyError` if the stored budget, δ or accountant differ from `spec`:
        changing them mid-way would silently reset or mis-state the accounting.
        """
        if not Path(path).exists():
            return cls.for_spec(spec)
        ledger = cls.load(path)
        if not ledger.matches(spec):
            raise PrivacyError(
                f"privacy ledger {os.fspath(path)} has budget ε={ledger.epsilon:g}, "
                f"δ={ledger.delta:g}, accountant={ledger.accountant} but the config says "
                f"ε={spec.epsilon:g}, δ={spec.delta:g}, accountant={spec.accountant}"
            )
        return ledger

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(epsilon={self.epsilon:g}, delta={self.delta:g}, "
            f"accountant={self.accountant!r}, releases={len(self._releases)})"
        )


@dataclass
class PrivacyReport:
    """What one generator-training run reports (no private data).

    ``epsilon`` is the ε spent by the client so far, composed over the whole ledger
    (including this release); ``release_epsilon`` is this release alone. ``history`` lists
    every release of the ledger as ``(σ, q, steps)``, so anyone can recompute ``epsilon``
    with ``opacus.accountants`` (``acc.history = history; acc.get_epsilon(delta)``).
    """

    private: bool
    target_epsilon: float
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    epochs: int
    accountant: str
    max_grad_norm: float
    num_examples: int
    mode: str
    release_epsilon: float = math.inf
    label: str = ""
    history: list[HistoryEntry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (floats may be ``inf`` in non-private mode)."""
        d = asdict(self)
        d["history"] = [list(h) for h in self.history]
        return d

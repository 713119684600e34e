"""Drift you can see: the service's rolling flag rates against what calibration expects.

Over the last ``window`` triaged studies (read from the database, so every instance and a
restarted one count the same studies) the monitor counts the study flag, the critical tier,
each finding listed, and the out-of-distribution share (studies whose ``ood_score`` reaches the
model's OOD threshold, when the model has one). Each count is compared with the rate the
checkpoint's ``expected_rates`` states (``calibrate`` stores them from out-of-fold
predictions at the deployment prevalence; a site calibration stores its own) by an exact
binomial bound: with ``n`` studies and expected rate ``p``, a count outside the central
``1 - alpha`` interval of Binomial(n, p) is a departure. ``alpha`` (default 0.01) is split
over the rates checked (Bonferroni), so with 17 rates a site that matches the expectation sees
a false alarm in at most about 1% of checks. Nothing is judged before ``min_studies`` studies.
Rates a site calibration took from normal studies only (``population: normal``) are a floor:
the worklist also holds abnormal studies, so only a count below the lower bound departs.

A departure means the site's images or case mix are not what the thresholds were set for
(another scanner, a children's ward, a new protocol): re-check with a site calibration
(``calibrate --site-normals``; docs/monitoring.md). It is shown on ``/healthz``
(``drift``), ``/metrics`` (Prometheus text format) and as a banner on the worklist page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy.stats import binom

from xraytriage.errors import ConfigError
from xraytriage.models.ood import OOD_SCORE_LINE
from xraytriage.serving.records import StudyOutcome
from xraytriage.triage.reasons import TIER_CRITICAL

DEFAULT_WINDOW = 500
DEFAULT_MIN_STUDIES = 100
DEFAULT_ALPHA = 0.01

OK, DEPARTURE, WARMING_UP, NO_EXPECTATION = "ok", "departure", "warming_up", "no_expectation"


def binomial_bounds(n: int, p: float, alpha: float) -> tuple[int, int]:
    """The counts ``(low, high)`` between which Binomial(n, p) falls with probability at
    least ``1 - alpha`` (``alpha / 2`` cut from each tail): a count outside departs."""
    p = min(max(float(p), 0.0), 1.0)
    return int(binom.ppf(alpha / 2, n, p)), int(binom.isf(alpha / 2, n, p))


@dataclass(frozen=True)
class RateCheck:
    """One rolling rate against its expectation."""

    rate: str
    """``flagged``, ``critical``, ``ood`` or ``finding``."""
    finding: str
    """The finding's name for ``finding`` rates, else empty."""
    count: int
    studies: int
    expected: float
    low: float
    """Lowest rate the bound allows (count / studies)."""
    high: float
    departed: bool

    @property
    def observed(self) -> float:
        return self.count / self.studies if self.studies else 0.0

    @property
    def name(self) -> str:
        return self.finding or self.rate

    def describe(self) -> str:
        what = (
            f"{self.finding} listed"
            if self.finding
            else {"ood": "out of distribution"}.get(self.rate, self.rate)
        )
        return (
            f"{what}: {self.observed:.1%} of the last {self.studies} studies "
            f"(expected {self.expected:.1%}, allowed {self.low:.1%}-{self.high:.1%})"
        )


@dataclass(frozen=True)
class DriftReport:
    status: str
    window: int
    studies: int
    min_studies: int
    alpha: float
    checks: list[RateCheck] = field(default_factory=list)

    @property
    def departures(self) -> list[RateCheck]:
        return [c for c in self.checks if c.departed]

    def banner(self) -> str | None:
        """The worklist page's warning, or None when there is nothing to say."""
        if self.status != DEPARTURE:
            return None
        listed = "; ".join(c.describe() for c in self.departures[:4])
        more = len(self.departures) - 4
        return (
            f"Drift: flag rates differ from what this model's calibration expects ({listed}"
            f"{f'; and {more} more' if more > 0 else ''}). The site's images or case mix may not be "
            "what the thresholds were set for: check a sample and consider a site calibration."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "window": self.window,
            "studies": self.studies,
            "min_studies": self.min_studies,
            "alpha": self.alpha,
            "departures": [
                {**asdict(c), "observed": round(c.observed, 6), "message": c.describe()}
                for c in self.departures
            ],
            "message": self.banner(),
        }


def ood_threshold_of(checkpoint) -> float | None:
    """The ``ood_score`` at which a study counts as out of distribution; None: no OOD share
    is counted. ``ood_score`` is already normalised by the reference's warning distance
    (``models.ood``: 1.0 = the warning line), so a checkpoint with an OOD reference gives 1.0;
    its ``ood["threshold"]`` is a Mahalanobis distance, not a score, and is never compared
    with scores. Without a reference no study has an ``ood_score``;
    ``expected_rates["ood_threshold"]`` (in ``ood_score`` units) is honoured if set."""
    ood = getattr(checkpoint, "ood", None)
    if isinstance(ood, dict) and ood.get("threshold") is not None:
        return OOD_SCORE_LINE
    rates = getattr(checkpoint, "expected_rates", None) or {}
    value = rates.get("ood_threshold")
    return None if value is None else float(value)


@dataclass
class DriftMonitor:
    """Compares outcomes with ``expected`` (a checkpoint's ``expected_rates``; None: nothing
    to compare with, the rates are still counted and exported)."""

    expected: dict[str, Any] | None
    flag_at: float | None
    ood_threshold: float | None = None
    window: int = DEFAULT_WINDOW
    min_studies: int = DEFAULT_MIN_STUDIES
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_studies < 1:
            raise ConfigError(f"drift window and minimum must be >= 1, got {self.window}, {self.min_studies}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"drift alpha must be in (0, 1), got {self.alpha}")

    @classmethod
    def for_checkpoint(cls, checkpoint, **options: Any) -> DriftMonitor:
        return cls(
            expected=checkpoint.expected_rates,
            flag_at=checkpoint.study_flag_threshold,
            ood_threshold=ood_threshold_of(checkpoint),
            **options,
        )

    @property
    def floor_only(self) -> bool:
        """The expected rates are among normal studies (``calibrate --site-normals`` without a
        labelled sample): a floor, not a centre."""
        return (self.expected or {}).get("population") == "normal"

    def _counts(self, outcomes: Sequence[StudyOutcome]) -> list[tuple[str, str, int, int, float | None]]:
        """(rate, finding, count, studies, expected) for every rate there is something to count."""
        expected = self.expected or {}
        n = len(outcomes)
        flagged = sum(
            (o.abnormal >= self.flag_at) if self.flag_at is not None else bool(o.findings) for o in outcomes
        )
        rows = [
            ("flagged", "", flagged, n, expected.get("flagged")),
            ("critical", "", sum(o.tier == TIER_CRITICAL for o in outcomes), n, expected.get("critical")),
        ]
        findings = dict(expected.get("findings") or {})
        names = sorted(set(findings) | {f for o in outcomes for f in o.findings})
        for name in names:
            rows.append(("finding", name, sum(name in o.findings for o in outcomes), n, findings.get(name)))
        scored = [o.ood_score for o in outcomes if o.ood_score is not None]
        if self.ood_threshold is not None and scored:
            ood = sum(s >= self.ood_threshold for s in scored)
            rows.append(("ood", "", ood, len(scored), expected.get("ood")))
        return rows

    def check(self, outcomes: Sequence[StudyOutcome]) -> tuple[DriftReport, list[tuple[str, str, int, int]]]:
        """The report, and every counted rate ``(rate, finding, count, studies)`` (for /metrics)."""
        outcomes = list(outcomes)[: self.window]
        counts = self._counts(outcomes)
        judged = [row for row in counts if row[4] is not None and row[3] >= self.min_studies]
        alpha = self.alpha / max(1, len(judged))
        floor = self.floor_only
        checks = []
        for rate, finding, count, n, p in judged:
            # rates among normal studies only: the worklist's abnormal studies add flags, so
            # only a count below the normals' own rate departs (one tail, the whole alpha)
            low, high = (
                binomial_bounds(n, float(p), 2 * alpha) if floor else binomial_bounds(n, float(p), alpha)
            )
            if floor:
                high = n
            checks.append(
                RateCheck(rate, finding, count, n, float(p), low / n, high / n, not low <= count <= high)
            )
        if not self.expected:
            status = NO_EXPECTATION
        elif len(outcomes) < self.min_studies:
            status = WARMING_UP
        else:
            status = DEPARTURE if any(c.departed for c in checks) else OK
        report = DriftReport(status, self.window, len(outcomes), self.min_studies, self.alpha, checks)
        return report, [row[:4] for row in counts]


class DriftWatch:
    """The monitor over the service's database, its answer kept ``ttl`` seconds (the worklist
    page, /healthz and /metrics may all ask at once)."""

    def __init__(
        self, outcomes: Callable[[int], Sequence[StudyOutcome]], monitor: DriftMonitor, ttl: float = 5.0
    ):
        self.outcomes = outcomes
        self.monitor = monitor
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -1e18
        self._last: tuple[DriftReport, list[tuple[str, str, int, int]]] | None = None

    def current(self) -> tuple[DriftReport, list[tuple[str, str, int, int]]]:
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._at > self.ttl:
                self._last = self.monitor.check(self.outcomes(self.monitor.window))
                self._at = now
            return self._last

    def report(self) -> DriftReport:
        return self.current()[0]

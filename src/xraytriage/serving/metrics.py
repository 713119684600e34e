"""``/metrics``: the service's state in the Prometheus text format (prometheus_client).

One registry per app (never the process-global one: two services in one process, as in the
tests, must not collide), filled at each scrape by :class:`ServiceCollector` from the drift
monitor and the queue. The rates are those of :mod:`~xraytriage.serving.drift`:

- ``xraytriage_flag_rate{rate, finding}``: the share of the last studies flagged / critical /
  listing a finding / out of distribution;
- ``xraytriage_expected_flag_rate{rate, finding}``, ``xraytriage_flag_rate_low`` and
  ``xraytriage_flag_rate_high``: what calibration expects and the binomial bounds around it;
- ``xraytriage_flag_rate_departure{rate, finding}``: 1 when the rate is outside its bounds;
- ``xraytriage_drift_departure``: 1 when any rate is; ``xraytriage_drift_studies``: studies
  counted; ``xraytriage_queue_depth{queue}``: images and heatmaps waiting.

Alert on ``xraytriage_drift_departure == 1`` (docs/monitoring.md).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xraytriage.serving.drift import DEPARTURE, DriftWatch

LABELS = ["rate", "finding"]


class ServiceCollector(Collector):
    def __init__(self, drift: DriftWatch, queue: Callable[[], dict[str, int]]) -> None:
        self.drift = drift
        self.queue = queue

    def collect(self):
        report, counts = self.drift.current()
        observed = GaugeMetricFamily(
            "xraytriage_flag_rate", "share of the last triaged studies with this flag", labels=LABELS
        )
        for rate, finding, count, n in counts:
            observed.add_metric([rate, finding], count / n if n else 0.0)
        yield observed
        families = {
            "expected": GaugeMetricFamily(
                "xraytriage_expected_flag_rate", "the rate calibration expects", labels=LABELS
            ),
            "low": GaugeMetricFamily(
                "xraytriage_flag_rate_low", "lowest rate the binomial bound allows", labels=LABELS
            ),
            "high": GaugeMetricFamily(
                "xraytriage_flag_rate_high", "highest rate the binomial bound allows", labels=LABELS
            ),
            "departed": GaugeMetricFamily(
                "xraytriage_flag_rate_departure", "1 when the rate is outside its bounds", labels=LABELS
            ),
        }
        for check in report.checks:
            key = [check.rate, check.finding]
            families["expected"].add_metric(key, check.expected)
            families["low"].add_metric(key, check.low)
            families["high"].add_metric(key, check.high)
            families["departed"].add_metric(key, 1.0 if check.departed else 0.0)
        yield from families.values()
        yield GaugeMetricFamily(
            "xraytriage_drift_departure",
            "1 when any flag rate departs from what calibration expects",
            value=1.0 if report.status == DEPARTURE else 0.0,
        )
        yield GaugeMetricFamily(
            "xraytriage_drift_studies", "triaged studies the rates count", value=report.studies
        )
        depth = GaugeMetricFamily("xraytriage_queue_depth", "work waiting", labels=["queue"])
        for name, value in self.queue().items():
            depth.add_metric([name], float(value))
        yield depth


def metrics_registry(drift: DriftWatch, queue: Callable[[], dict[str, int]]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(drift, queue))
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST

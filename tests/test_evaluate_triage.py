"""Triage evaluation: ranking metrics and the reading-queue simulation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xraytriage.evaluate.triage_eval import (
    day_of_arrivals,
    found_in_top,
    priority_auc,
    simulate_queue,
    simulate_reading_day,
)


def _informative_studies(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    abnormal = (rng.random(n) < 0.3).astype(float)
    priority = 1 / (1 + np.exp(-(2.5 * (2 * abnormal - 1) + rng.normal(0, 1, n))))
    return priority, abnormal


def test_priority_auc_is_sklearn_auc():
    priority, abnormal = _informative_studies()
    assert priority_auc(abnormal, priority) == pytest.approx(roc_auc_score(abnormal, priority))


def test_found_in_top_by_hand():
    priority = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    abnormal = np.array([1, 0, 1, 0, 0, 0, 1, 0, 0, 1], dtype=float)
    found = found_in_top(abnormal, priority, fractions=(0.1, 0.2, 0.5))
    assert found == {"0.1": 0.25, "0.2": 0.25, "0.5": 0.5}
    # a perfect score finds all abnormal studies in the first 40 %
    assert found_in_top(abnormal, abnormal, fractions=(0.4,))["0.4"] == 1.0


def test_queue_by_hand_fifo_vs_triage():
    # three studies at t=0,1,2, 10 minutes each; the last one is urgent
    arrival = np.array([0.0, 1.0, 2.0])
    reading = np.full(3, 10.0)
    priority = np.array([0.1, 0.2, 0.9])
    fifo = simulate_queue(arrival, reading, priority, "fifo")
    np.testing.assert_allclose(fifo.start, [0, 10, 20])
    np.testing.assert_allclose(fifo.wait, [0, 9, 18])
    triage = simulate_queue(arrival, reading, priority, "triage")
    np.testing.assert_allclose(triage.start, [0, 20, 10])  # urgent read second, not third
    np.testing.assert_allclose(triage.wait, [0, 19, 8])


def test_reader_idles_until_the_next_arrival():
    out = simulate_queue(np.array([0.0, 100.0]), np.array([5.0, 5.0]), None, "fifo")
    np.testing.assert_allclose(out.start, [0, 100])
    np.testing.assert_allclose(out.wait, [0, 0])


def test_escalation_reads_the_overdue_study_first():
    # reader busy until 10; at 10 the low-priority study has waited 10 >= max_wait 5: read first
    arrival = np.array([0.0, 0.0, 9.0])
    reading = np.full(3, 10.0)
    priority = np.array([0.9, 0.1, 0.8])
    plain = simulate_queue(arrival, reading, priority, "triage")
    escalated = simulate_queue(arrival, reading, priority, "triage", max_wait=5.0)
    np.testing.assert_allclose(plain.start, [0, 20, 10])
    np.testing.assert_allclose(escalated.start, [0, 10, 20])


def test_arrivals_are_seeded_and_span_the_day():
    a = day_of_arrivals(100, 480, seed=3)
    assert np.all(np.diff(a) >= 0) and a[0] >= 0 and a[-1] <= 480
    np.testing.assert_array_equal(a, day_of_arrivals(100, 480, seed=3))
    assert not np.array_equal(a, day_of_arrivals(100, 480, seed=4))


def test_triage_shortens_mean_wait_of_abnormal_studies():
    priority, abnormal = _informative_studies(200)
    day = simulate_reading_day(abnormal, priority, day_minutes=480, reading_minutes=2.3, seed=0)
    waits = day["waits"]
    assert waits["triage"]["abnormal"]["mean"] < 0.6 * waits["fifo"]["abnormal"]["mean"]
    # ... and the normal studies pay for it
    assert waits["triage"]["normal"]["mean"] > waits["fifo"]["normal"]["mean"]
    # every study is read exactly once, in both orders, so the total work is the same
    assert waits["triage"]["all"]["n"] == waits["fifo"]["all"]["n"] == 200


def test_uninformative_score_gives_abnormal_studies_no_advantage():
    def advantage(priority, abnormal, seed):  # how much sooner abnormal studies are read
        waits = simulate_reading_day(abnormal, priority, reading_minutes=1.5, seed=seed)["waits"]["triage"]
        return waits["normal"]["mean"] - waits["abnormal"]["mean"]

    informative = np.mean([advantage(*_informative_studies(300, seed=s), s) for s in range(4)])
    rng = np.random.default_rng(5)
    random = np.mean([advantage(rng.random(300), (rng.random(300) < 0.3).astype(float), s) for s in range(4)])
    assert informative > 5.0
    assert abs(random) < 0.25 * informative


def test_escalation_bounds_the_worst_wait():
    priority, abnormal = _informative_studies(220, seed=1)
    critical = abnormal * (np.random.default_rng(2).random(220) < 0.3)
    day = simulate_reading_day(
        abnormal, priority, critical=critical, day_minutes=480, reading_minutes=2.1, max_wait=45.0, seed=1
    )
    waits = day["waits"]
    triage, escalated = waits["triage"], waits["triage+escalation(45 min)"]
    # plain triage leaves some (normal) study waiting far longer than FIFO's worst case
    assert triage["all"]["max"] > waits["fifo"]["all"]["max"]
    # escalation caps it: nobody waits much beyond the limit (a few readings of slack)
    assert escalated["all"]["max"] < triage["all"]["max"]
    assert escalated["all"]["max"] <= 45.0 + 10 * 2.1
    # critical studies keep most of the triage benefit
    assert escalated["critical"]["mean"] < waits["fifo"]["critical"]["mean"]
    assert day["table"].shape[0] == 220 and "wait_fifo" in day["table"]


def test_random_reading_times_are_seeded():
    priority, abnormal = _informative_studies(50)
    a = simulate_reading_day(abnormal, priority, reading_kind="exponential", reading_minutes=5, seed=3)
    b = simulate_reading_day(abnormal, priority, reading_kind="exponential", reading_minutes=5, seed=3)
    assert a["waits"] == b["waits"]
    assert a["table"]["reading"].std() > 0

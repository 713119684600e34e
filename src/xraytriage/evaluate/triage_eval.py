"""Does the worklist put abnormal studies first, and what does that do to waiting times?

Ranking: AUC of the priority score (abnormal vs normal) and the share of all abnormal studies
found in the first 10 / 20 / 50 % of the worklist.

Reading-queue simulation: studies arrive over a working day (Poisson arrivals, seeded); one
radiologist reads them one at a time, always picking from the studies that have arrived either
the oldest (FIFO) or the highest priority (triage). Triage shortens the *mean* wait of abnormal
studies but can leave low-priority studies (including missed abnormal ones) waiting for the
rest of the day; the optional escalation rule reads any study that has waited ``max_wait``
minutes next (oldest first), which bounds that worst case. Both mean and maximum are reported.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.errors import ConfigError
from xraytriage.evaluate.metrics import roc_auc

DEFAULT_FRACTIONS = (0.1, 0.2, 0.5)


def priority_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """AUC of the priority score (``y_score``) separating abnormal (``y_true`` 1) from normal
    (0) studies."""
    return roc_auc(y_true, y_score)


def found_in_top(
    y_true: np.ndarray, y_score: np.ndarray, *, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, float]:
    """Share of abnormal studies (``y_true`` 1) within the first ``f`` of the worklist (sorted
    by the priority ``y_score``, descending; ties keep input order), for each fraction ``f``.
    Studies with unknown status still occupy worklist places but are not counted."""
    priority = np.asarray(y_score, dtype=np.float64)
    abnormal = np.asarray(y_true, dtype=np.float64)
    order = np.argsort(-priority, kind="stable")
    ranked = abnormal[order] == 1
    total = ranked.sum()
    out = {}
    for f in fractions:
        k = int(np.ceil(f * len(order) - 1e-9))
        out[f"{f:g}"] = float(ranked[:k].sum() / total) if total else float("nan")
    return out


def found_in_top_reference(
    y_true: np.ndarray, *, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> dict[str, dict[str, float]]:
    """The reference points of :func:`found_in_top`: the best possible share (every abnormal
    study ahead of every normal one) and the expected share in random (arrival) order."""
    abnormal = np.asarray(y_true, dtype=np.float64)
    n, total = abnormal.size, int((abnormal == 1).sum())
    best, random = {}, {}
    for f in fractions:
        k = int(np.ceil(f * n - 1e-9))
        best[f"{f:g}"] = min(k, total) / total if total else float("nan")
        random[f"{f:g}"] = k / n if n else float("nan")
    return {"best_possible": best, "random_order": random}


@dataclass
class QueueResult:
    """Per-study start and wait times (minutes) of one simulated day in one reading order."""

    order: str
    arrival: np.ndarray
    start: np.ndarray
    finish: np.ndarray

    @property
    def wait(self) -> np.ndarray:
        return self.start - self.arrival


def simulate_queue(
    arrival: np.ndarray,
    reading_time: np.ndarray,
    priority: np.ndarray | None = None,
    order: str = "fifo",
    max_wait: float | None = None,
) -> QueueResult:
    """One reader, non-preemptive. ``order`` is ``fifo`` (arrival order) or ``triage``
    (highest priority first among studies already arrived). With ``max_wait`` a study that has
    waited at least that long when the reader becomes free is read before all others (oldest
    escalated study first)."""
    if order not in ("fifo", "triage"):
        raise ConfigError(f"queue order must be fifo or triage, got {order!r}")
    arrival = np.asarray(arrival, dtype=np.float64)
    reading_time = np.asarray(reading_time, dtype=np.float64)
    n = arrival.size
    prio = np.zeros(n) if priority is None or order == "fifo" else np.asarray(priority, dtype=np.float64)
    by_arrival = np.argsort(arrival, kind="stable")
    start = np.empty(n)
    finish = np.empty(n)
    by_priority: list[tuple[float, float, int]] = []  # (-priority, arrival, index)
    by_age: list[tuple[float, int]] = []  # (arrival, index), for escalation
    done = np.zeros(n, dtype=bool)
    clock, nxt, served = 0.0, 0, 0
    while served < n:
        if not by_priority and nxt < n:
            clock = max(clock, arrival[by_arrival[nxt]])
        while nxt < n and arrival[by_arrival[nxt]] <= clock:
            i = int(by_arrival[nxt])
            heapq.heappush(by_priority, (-prio[i], arrival[i], i))
            heapq.heappush(by_age, (arrival[i], i))
            nxt += 1
        while by_age and done[by_age[0][1]]:
            heapq.heappop(by_age)
        if max_wait is not None and by_age and clock - by_age[0][0] >= max_wait:
            _, i = heapq.heappop(by_age)
        else:
            while True:
                _, _, i = heapq.heappop(by_priority)
                if not done[i]:
                    break
        done[i] = True
        start[i] = clock
        clock += reading_time[i]
        finish[i] = clock
        served += 1
        while by_priority and done[by_priority[0][2]]:
            heapq.heappop(by_priority)
    name = order if max_wait is None else f"{order}+escalation({max_wait:g} min)"
    return QueueResult(order=name, arrival=arrival, start=start, finish=finish)


def day_of_arrivals(n_studies: int, day_minutes: float = 480.0, seed: int = 0) -> np.ndarray:
    """Arrival times of a homogeneous Poisson process conditioned on ``n_studies`` in the day
    (sorted uniform times: the same law, and every order sees the same studies)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.uniform(0.0, day_minutes, size=n_studies))


def reading_times(n: int, mean_minutes: float = 4.0, kind: str = "fixed", seed: int = 0) -> np.ndarray:
    """Per-study reading times: ``fixed`` or ``exponential`` with the given mean (seeded)."""
    if kind == "fixed":
        return np.full(n, float(mean_minutes))
    if kind == "exponential":
        return np.random.default_rng(seed + 1).exponential(mean_minutes, size=n)
    raise ConfigError(f"reading time must be fixed or exponential, got {kind!r}")


def _wait_summary(wait: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    w = wait[mask]
    if not w.size:
        return {
            "n": 0,
            "mean": float("nan"),
            "median": float("nan"),
            "p95": float("nan"),
            "max": float("nan"),
        }
    return {
        "n": int(w.size),
        "mean": float(w.mean()),
        "median": float(np.median(w)),
        "p95": float(np.percentile(w, 95)),
        "max": float(w.max()),
    }


def simulate_reading_day(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    critical: np.ndarray | None = None,
    day_minutes: float = 480.0,
    reading_minutes: float = 4.0,
    reading_kind: str = "fixed",
    max_wait: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Simulate one day for these studies (``y_true``: abnormal 1 / normal 0; ``y_score``: the
    priority; arrivals in random order over ``day_minutes``) with FIFO, triage and, if
    ``max_wait`` is given, triage with escalation. Returns per-order wait summaries for
    abnormal, critical, normal and all studies, plus the per-study waits table."""
    priority = np.asarray(y_score, dtype=np.float64)
    abnormal = np.asarray(y_true, dtype=np.float64)
    n = priority.size
    arrival_times = day_of_arrivals(n, day_minutes, seed)
    rng = np.random.default_rng(seed + 2)
    arrival = np.empty(n)
    arrival[rng.permutation(n)] = arrival_times  # which study arrives when: random, seeded
    reading = reading_times(n, reading_minutes, reading_kind, seed)
    runs = [
        simulate_queue(arrival, reading, priority, "fifo"),
        simulate_queue(arrival, reading, priority, "triage"),
    ]
    if max_wait is not None:
        runs.append(simulate_queue(arrival, reading, priority, "triage", max_wait=max_wait))
    groups = {"abnormal": abnormal == 1, "normal": abnormal == 0, "all": np.ones(n, bool)}
    if critical is not None:
        groups["critical"] = np.asarray(critical, dtype=np.float64) == 1
    summary = {run.order: {g: _wait_summary(run.wait, m) for g, m in groups.items()} for run in runs}
    waits = pd.DataFrame({"arrival": arrival, "reading": reading, "priority": priority, "abnormal": abnormal})
    if critical is not None:
        waits["critical"] = np.asarray(critical, dtype=np.float64)
    for run in runs:
        waits[f"wait_{run.order}"] = run.wait
    return {
        "studies": n,
        "day_minutes": day_minutes,
        "reading_minutes": reading_minutes,
        "reading_kind": reading_kind,
        "utilisation": float(reading.sum() / day_minutes),
        "max_wait": max_wait,
        "seed": seed,
        "orders": [run.order for run in runs],
        "waits": summary,
        "table": waits,
    }


def triage_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    critical: np.ndarray | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    **simulation: Any,
) -> dict[str, Any]:
    """Ranking metrics of the priority ``y_score`` against abnormal truth ``y_true`` and the
    reading-day simulation in one dict (the simulation's per-study table under
    ``simulation.table``)."""
    return {
        "priority_auc": priority_auc(y_true, y_score),
        "abnormal_found_in_top": found_in_top(y_true, y_score, fractions=fractions),
        "abnormal_found_in_top_reference": found_in_top_reference(y_true, fractions=fractions),
        "simulation": simulate_reading_day(y_true, y_score, critical=critical, **simulation),
    }

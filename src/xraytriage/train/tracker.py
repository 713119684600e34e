"""Which epoch is the best so far, and whether to stop (``early_stopping`` in the config)."""

from __future__ import annotations

from typing import Any

from xraytriage.auc_means import resolve_monitor
from xraytriage.errors import ConfigError
from xraytriage.train.config import EarlyStoppingConfig
from xraytriage.train.metrics import is_better


class BestEpochTracker:
    """Follows the monitored metric over epochs.

    An epoch is the new best when it beats the best by more than ``min_delta`` (or always, with
    ``keep_last`` or without a validation set); after ``patience`` epochs without a new best
    the run stops (never without a validation set).
    """

    def __init__(
        self, config: EarlyStoppingConfig, has_validation: bool, label_names: list[str] | None = None
    ) -> None:
        self.metric = resolve_monitor(config.metric, label_names) if label_names else config.metric
        self.maximize = config.maximize
        self.min_delta = config.min_delta
        self.patience = config.patience
        self.keep_last = config.keep_last or not has_validation
        self.has_validation = has_validation
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped = False

    def monitored(self, metrics: dict[str, float]) -> float:
        """The value of the monitored metric in this epoch's metrics."""
        value = metrics.get(self.metric)
        if value is None:
            raise ConfigError(f"early_stopping.metric {self.metric!r} is not one of {sorted(metrics)}")
        return value

    def update(self, value: float, epoch: int) -> bool:
        """Record epoch ``epoch`` (1-based) with ``value``; True when it is the new best."""
        improved = (
            self.keep_last
            or self.best_epoch is None
            or is_better(value, self.best_value, self.maximize, self.min_delta)
        )
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        self.stopped = self.has_validation and self.patience is not None and self.bad_epochs >= self.patience
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": {"value": self.best_value, "epoch": self.best_epoch},
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_epoch = state["best"]["value"], state["best"]["epoch"]
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped = bool(state["stopped"])

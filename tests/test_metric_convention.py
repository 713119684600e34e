"""One convention for every metric, threshold and curve function (issue #27): scikit-learn's
``(y_true, y_score, *, ...)``: truth first, the score second, everything else keyword-only, so
no call can swap truth and score or pass a threshold where a target was meant.

The test reads the signatures of every public function in the metric modules. A function
whose first two parameters look like truth or scores (array-typed and named like them) must
take ``y_true`` first, then ``y_score`` (or nothing more positionally), and every later
parameter keyword-only (truth and scores passed only by keyword cannot be swapped either). The allow-list names the few non-metric helpers, each with why."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import xraytriage.evaluate

METRIC_MODULES = sorted(
    {
        "xraytriage.stats",
        "xraytriage.auc_means",
        "xraytriage.train.metrics",
        *(f"xraytriage.evaluate.{m.name}" for m in pkgutil.iter_modules(xraytriage.evaluate.__path__)),
    }
)

LOOKS_LIKE = {
    # truth
    "y_true", "y", "labels", "label", "truth", "target", "targets", "abnormal", "normal", "is_abnormal",
    "study_labels", "val_labels", "y_val",
    # scores
    "y_score", "y_prob", "y_pred", "p", "prob", "probs", "probabilities", "score", "scores", "scores_a",
    "prob_a", "logits", "y_logit", "priority", "abnormal_prob", "abnormal_probs", "study_probs", "val_logits",
}  # fmt: skip
"""Parameter names that mean truth or scores (when typed as arrays, or untyped)."""

ALLOWED = {
    "xraytriage.evaluate.calibration.logit": "a transform of one score array: no truth to put first",
    "xraytriage.evaluate.site_calibration.site_thresholds": (
        "thresholds from a site's unlabelled normal images: scores only, there is no truth"
    ),
    "xraytriage.evaluate.predictions.abnormal_truth": "derives truth from a label matrix: no score",
}
"""Non-metric helpers the rule would otherwise catch, each with the reason."""


def _looks_like(param: inspect.Parameter) -> bool:
    annotation = str(param.annotation) if param.annotation is not inspect.Parameter.empty else ""
    return param.name in LOOKS_LIKE and (not annotation or "ndarray" in annotation)


def _public_functions(module_name: str):
    module = importlib.import_module(module_name)
    for name, fn in vars(module).items():
        if not name.startswith("_") and inspect.isfunction(fn) and fn.__module__ == module_name:
            yield f"{module_name}.{name}", fn


def convention_violations(functions) -> list[str]:
    """``"module.function(signature): why"`` for every metric-like function off the convention."""
    out = []
    for qualname, fn in functions:
        params = list(inspect.signature(fn).parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if qualname in ALLOWED or not any(_looks_like(p) for p in positional[:2]):
            continue
        expected = ["y_true", "y_score"][: len(positional)]
        varargs = [p for p in params if p.kind is p.VAR_POSITIONAL]
        problems = []
        if [p.name for p in positional] != expected or not positional:
            problems.append(f"positional parameters {[p.name for p in positional]}, want (y_true, y_score)")
        if varargs and (len(positional) != 1 or varargs[0].name != "y_score"):
            problems.append("only (y_true, *y_score) may take varargs")
        if problems:
            out.append(f"{qualname}{inspect.signature(fn)}: {'; '.join(problems)}")
    return out


def test_every_metric_function_takes_y_true_y_score_then_keywords():
    functions = [f for m in METRIC_MODULES for f in _public_functions(m)]
    checked = [q for q, fn in functions if q not in ALLOWED]
    assert len(checked) > 50  # the modules were found and read
    assert convention_violations(functions) == []


def test_the_allow_list_names_real_functions_the_rule_would_catch():
    """A stale entry (renamed or brought in line) must leave the list."""
    for qualname, reason in ALLOWED.items():
        module_name, _, name = qualname.rpartition(".")
        fn = getattr(importlib.import_module(module_name), name)
        params = list(inspect.signature(fn).parameters.values())
        assert reason and any(_looks_like(p) for p in params[:2]), qualname


def test_the_rule_catches_score_first_positional_and_misnamed_signatures():
    """The rule must be able to fail: each old-style signature of #27 is caught."""

    def priority_auc(priority: np.ndarray, abnormal: np.ndarray) -> float: ...

    def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float: ...

    def threshold_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> dict: ...

    def choose_threshold(y_true: np.ndarray, y_score: np.ndarray, method: str = "youden") -> float: ...

    def plot_roc_curves(y: np.ndarray, p: np.ndarray, *, names: list[str]): ...

    def good(y_true: np.ndarray, y_score: np.ndarray, *, threshold: float) -> float: ...

    def truth_only(y_true: np.ndarray, *, groups: np.ndarray) -> float: ...

    def not_a_metric(names: list[str], title: str = "") -> None: ...

    bad = [priority_auc, fit_temperature, threshold_metrics, choose_threshold, plot_roc_curves]
    fns = [(f.__name__, f) for f in [*bad, good, truth_only, not_a_metric]]
    caught = convention_violations(fns)
    assert [c.split("(")[0] for c in caught] == [f.__name__ for f in bad]


@pytest.mark.parametrize("binarize", [False, True])
def test_one_masking_rule_drops_unknown_labels_and_scores(binarize):
    from xraytriage.stats import known_rows, valid_pairs

    y = np.array([1, 0, np.nan, 1, -1, 2, 0.8, 0.0])
    p = np.array([0.9, 0.1, 0.5, np.nan, 0.4, 0.6, 0.7, 0.2])
    keep = known_rows(y, p, binarize=binarize)
    if binarize:  # training targets: -1 (uncertain) and 2 (U-MultiClass) unknown, soft rounded
        assert keep.tolist() == [True, True, False, False, False, False, True, True]
        assert valid_pairs(y, p, binarize=True)[0].tolist() == [1, 0, 1, 0]
    else:
        assert keep.tolist() == [True, True, False, False, True, True, True, True]
    with pytest.raises(ValueError, match="differ in length"):
        known_rows(y, p[:-1])


def test_one_youden_threshold_for_training_and_evaluation():
    from xraytriage.evaluate.operating_points import youden_threshold as evaluation_youden
    from xraytriage.stats import youden_threshold
    from xraytriage.train.metrics import youden_threshold as training_youden

    assert evaluation_youden is youden_threshold
    y = np.array([0, 0, 1, 1, 0, 1, np.nan])
    p = np.array([0.1, 0.4, 0.75, 0.8, 0.3, 0.7, 0.99])
    assert training_youden(y, p) == youden_threshold(y, p) == pytest.approx(0.7)
    # ties: J is 1/2 at 0.9 and at 0.6; the higher threshold (fewer false alarms) wins
    assert youden_threshold(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.6, 0.5])) == 0.9
    assert youden_threshold(np.ones(4), np.linspace(0, 1, 4), default=0.25) == 0.25
    assert training_youden(np.ones(4), np.linspace(0, 1, 4), default=0.25) == 0.25

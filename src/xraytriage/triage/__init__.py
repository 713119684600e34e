"""Triage: bulk inference over files and folders, study grouping, priority, worklist rows.

The pipeline (``engine``) streams: worker processes decode and preprocess while the main
process runs the model on batches; results are grouped into studies (``grouping``), scored
(``aggregate``, ``priority``) and written as worklist rows (``worklist``).
"""

from xraytriage.triage.aggregate import AGGREGATIONS, aggregate_probabilities
from xraytriage.triage.engine import ImageResult, TriageEngine, TriageOptions, TriageResult
from xraytriage.triage.grouping import STUDY_MODES, study_key
from xraytriage.triage.priority import (
    SITE_PRIORITY_LEVELS,
    PriorityRules,
    SitePriorities,
    UrgencyWeights,
    parse_site_priority,
)
from xraytriage.triage.worklist import WorklistRow, read_worklist_csv, write_worklist

__all__ = [
    "AGGREGATIONS",
    "SITE_PRIORITY_LEVELS",
    "STUDY_MODES",
    "ImageResult",
    "PriorityRules",
    "SitePriorities",
    "TriageEngine",
    "TriageOptions",
    "TriageResult",
    "UrgencyWeights",
    "WorklistRow",
    "aggregate_probabilities",
    "parse_site_priority",
    "read_worklist_csv",
    "study_key",
    "write_worklist",
]

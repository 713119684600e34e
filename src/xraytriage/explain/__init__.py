"""Explanations and localisation: Grad-CAM family heatmaps, boxes, the NIH box benchmark,
overlay pictures and feature-map grids. Start with :class:`Explainer` and :func:`explain_image`."""

from xraytriage.explain.boxes import Box, SizePrior, boxes_from_heatmap, learn_size_priors, load_size_priors
from xraytriage.explain.cam import METHODS, GradCAM
from xraytriage.explain.explainer import Explainer, Explanation, explain_image
from xraytriage.explain.layers import find_target_layer
from xraytriage.explain.localization import (
    box_iobb,
    box_iou,
    evaluate_localization,
    load_ground_truth,
    pointing_hit,
    write_localization_report,
)

__all__ = [
    "METHODS",
    "Box",
    "Explainer",
    "Explanation",
    "GradCAM",
    "SizePrior",
    "box_iobb",
    "box_iou",
    "boxes_from_heatmap",
    "evaluate_localization",
    "explain_image",
    "find_target_layer",
    "learn_size_priors",
    "load_ground_truth",
    "load_size_priors",
    "pointing_hit",
    "write_localization_report",
]

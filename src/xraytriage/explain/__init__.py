"""Explanations and localisation: Grad-CAM family heatmaps, boxes, overlay pictures and
feature-map grids (the NIH box benchmark that scores them is :mod:`xraytriage.evaluate.localization`). Start with :class:`Explainer` and :func:`explain_image`."""

from xraytriage.explain.boxes import Box, SizePrior, boxes_from_heatmap, learn_size_priors, load_size_priors
from xraytriage.explain.cam import METHODS, GradCAM
from xraytriage.explain.explainer import Explainer, Explanation, explain_image
from xraytriage.explain.layers import find_target_layer

__all__ = [
    "METHODS",
    "Box",
    "Explainer",
    "Explanation",
    "GradCAM",
    "SizePrior",
    "boxes_from_heatmap",
    "explain_image",
    "find_target_layer",
    "learn_size_priors",
    "load_size_priors",
]

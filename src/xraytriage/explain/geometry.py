"""Kept for imports written before :mod:`xraytriage.geometry` moved below ``models`` (the
localiser in ``models`` maps its maps back to the image with it)."""

from xraytriage.geometry import (  # noqa: F401 - re-exported
    box_to_input,
    cropped_extent,
    input_coordinates,
    map_to_original,
    to_input,
)

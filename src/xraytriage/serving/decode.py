"""How the service decodes a stored image: the pixel limit first, then only what is needed.

The model sees its input size (224 px or less) and the pages at most ``display_size``, so an
image is decoded reduced by the largest integer factor that keeps its longest side at least
``display_size`` (a box average, or JPEG's DCT scaling; see
:func:`xraytriage.io.read_radiograph`). Images up to twice the display size (every NIH image,
most CR/DX) decode exactly as the ``triage`` command decodes them; a larger one costs its
reduced copy, not several float copies of the full file.
"""

from __future__ import annotations

from xraytriage.io import Radiograph, read_radiograph
from xraytriage.preprocess import PreprocessContract
from xraytriage.triage.engine import Prepared, prepare_image


def read_reduced(path: str, max_pixels: int, max_side: int) -> Radiograph:
    """The stored image at the size the service needs (header checked against ``max_pixels``)."""
    return read_radiograph(path, max_pixels=max_pixels, max_side=max_side)


def prepare_for_model(path: str, contract: PreprocessContract, max_pixels: int, max_side: int) -> Prepared:
    """The triage engine's ``prepare`` step with the service's limits. Never raises."""
    return prepare_image(path, contract, max_pixels=max_pixels, max_side=max_side)

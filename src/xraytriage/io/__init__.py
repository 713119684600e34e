"""Reading radiographs: any PNG/JPEG/TIFF/DICOM file into a float32 image in [0, 1] plus metadata.

Bright means dense (bone white), whatever the source encoding: DICOM MONOCHROME1 and
Presentation LUT INVERSE are resolved here, so nothing downstream needs to know.
"""

from xraytriage.io.files import iter_input_files
from xraytriage.io.formats import ImageFormat, sniff_format
from xraytriage.io.reader import DEFAULT_MAX_PIXELS, Radiograph, read_radiograph

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageFormat",
    "Radiograph",
    "iter_input_files",
    "read_radiograph",
    "sniff_format",
]

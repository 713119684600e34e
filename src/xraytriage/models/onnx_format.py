"""The names an xraytriage ONNX file uses (input, output, metadata keys) and the default opset:
shared by the exporter, the reader and the CLI without importing torch or ONNX."""

ONNX_FORMAT = "xraytriage-onnx"
INPUT_NAME = "image_uint8"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"
"""Second output: the pooled penultimate features (N, D) the out-of-distribution score uses."""
DEFAULT_OPSET = 17
META_PREFIX = "xraytriage."
INT8_SUFFIX = ".int8.onnx"
"""The int8 twin of ``model.pt`` is ``model.int8.onnx`` (``models.quantize``)."""
DEFAULT_CALIBRATION = 64
"""Images that calibrate an int8 twin's activation ranges (min-max: more adds time, hardly accuracy)."""
DEFAULT_PARITY = 64
"""Other images an int8 twin is checked on against float32."""

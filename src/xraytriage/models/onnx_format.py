"""The names an xraytriage ONNX file uses (input, output, metadata keys) and the default opset:
shared by the exporter, the reader and the CLI without importing torch or ONNX."""

ONNX_FORMAT = "xraytriage-onnx"
INPUT_NAME = "image_uint8"
OUTPUT_NAME = "logits"
FEATURES_NAME = "features"
"""Second output: the pooled penultimate features (N, D) the out-of-distribution score uses."""
DEFAULT_OPSET = 17
META_PREFIX = "xraytriage."

"""Export stage: trained Hugging Face folder -> quantized ONNX deployment bundle."""

# The int8 parity gate's defaults (`papertasks export --max-prob-diff / --min-same-set`).
DEFAULT_MAX_PROB_DIFF = 0.15
DEFAULT_MIN_SAME_SET = 0.85
WEIGHT_TYPES = {"s8": "QInt8", "u8": "QUInt8"}  # `export --weights`: onnxruntime's QuantType for each

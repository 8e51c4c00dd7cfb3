"""Export stage: trained Hugging Face folder -> quantized ONNX deployment bundle."""

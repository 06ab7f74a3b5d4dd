"""quantize: one fine-tuned LLM in, a checked and published family of quantized variants out."""

__version__ = "0.1.0"

"""Model compression: weight formats for fast decoding (quantize)."""

"""Evaluation: loss, perplexity, bits per character/byte."""

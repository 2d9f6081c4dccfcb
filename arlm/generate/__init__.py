"""Generation: pure logits processors (sampling.py), the decode loop (decode.py), text streaming (stream.py)."""

"""Generation: the engine (engine.py: KV-cache slots, continuous batching, prefix caching), the model
calls and the compiled step (step.py), per-row logits processors (sampling.py), beam search
(beam.py), speculative decoding (speculative.py), text streaming (stream.py)."""

"""Model loading, the locally built tiny models, and forge checkpoints."""

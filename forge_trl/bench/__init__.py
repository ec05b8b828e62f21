"""Evaluation of checkpoints on held-out data."""

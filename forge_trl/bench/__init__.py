"""Evaluation of checkpoints and API models on held-out data: metrics, judges, bench.json, bench_results.jsonl."""

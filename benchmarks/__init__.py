"""Measured runs of scripts/bench_perf.py that are not forge_trl: the plain TRL + PEFT side of each comparison."""

"""Benchmarks: run each as ``python -m benchmarks.<name>``; every one prints a table and, as its last
stdout line, the JSON object it also writes to ``benchmarks/results/<name>.json``."""

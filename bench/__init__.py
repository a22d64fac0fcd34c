"""Benchmarks of the real product: accuracy on real photos (accuracy.py, levers.py), speed and memory (performance.py)."""

"""Benchmark harness: load generation, serving metrics, quality, resources, MLflow logging."""

"""Tests of sutazai.benchmark: the benchmark runner and its metrics."""

"""Tests of sutazai.observability: tracing and pushed metrics."""

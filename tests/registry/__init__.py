"""Tests of sutazai.registry: the MLflow registry."""

"""Tests of sutazai.learning: data store and gate, fine-tuning, NAS, monitoring."""

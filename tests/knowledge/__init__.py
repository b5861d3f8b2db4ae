"""Tests of sutazai.knowledge: documents, extraction, resolution, graph stores."""

"""Tests of sutazai.repository: sources, pulls, bundles, integrity, encryption."""

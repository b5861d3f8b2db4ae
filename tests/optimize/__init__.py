"""Tests of sutazai.optimize: quantisation and conversion."""

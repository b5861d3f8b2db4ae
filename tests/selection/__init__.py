"""Tests of sutazai.selection: selection and promotion rules."""

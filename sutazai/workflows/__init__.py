"""Workflows: multi-step jobs composed from the capabilities, each declared once (the
mirror, the nightly cycle and its self-improvement half)."""

"""Tests of sutazai.serving: engines, the gateway, rollout, the HTTP API under fuzzing."""

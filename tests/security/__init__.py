"""Tests of sutazai.security: audit, secrets and Vault, access, rate limits, secret hygiene."""

"""Security: audit trail, secret providers and Vault, API keys and roles, rate limits, TLS.

Layered bottom up: the audit log and the secret interface at the bottom, the providers and
Vault beside them, the provider factory and ``read_secret`` on top, then access control and
TLS, which read secrets. No module imports one above it.
"""

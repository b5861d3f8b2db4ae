"""Serving: engines started from the repository, behind an OpenAI-compatible gateway."""

"""Backups of a SutazAI home: a content-addressed pool, signed manifests, restore."""

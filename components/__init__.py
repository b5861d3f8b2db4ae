"""KFP lightweight components: one pipeline step each, a thin call into ``sutazai``.

Every component imports what it needs inside its body (KFP ships the function's source to
the step's container or subprocess, nothing else), reads SutazAI's settings from the
environment (``SUTAZAI_*``), and returns JSON-able values or typed artifacts.
"""

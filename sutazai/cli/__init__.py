"""The ``sutazai`` command line (typer + rich)."""

"""Backup step: the drill (back up, verify, restore into a scratch home, use it, compare).

No ``from __future__ import annotations`` in component modules: KFP reads the annotations.
"""

from kfp.dsl import Metrics, Output

from components.base import component


@component
def backup_drill(ask: bool, metrics: Output[Metrics]) -> dict:
    """Run :func:`sutazai.backup.drill.run_drill` on the home; returns its report. A failed
    check is in the report, not an exception: the DAG's report task fails the run, and the
    step is not retried for what a retry would only find again."""
    from sutazai.backup.drill import as_json, run_drill
    from sutazai.config import load_settings

    report = run_drill(load_settings(), ask=ask)
    metrics.log_metric("ok", float(report.ok))
    metrics.log_metric("seconds", report.seconds)
    metrics.log_metric("backup_bytes", float(report.backup_bytes))
    metrics.log_metric("checks_failed", float(len(report.failures)))
    return as_json(report)

"""Observability: traces (OpenTelemetry) and the metrics batch jobs push to the
Pushgateway."""

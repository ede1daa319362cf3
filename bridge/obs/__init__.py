"""Observability: Prometheus metrics, gRPC readiness, OpenTelemetry tracing (ADR 0016)."""

"""The ``[metrics]`` and ``[tracing]`` tables every daemon file may carry (ADR 0016)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from bridge.domain.errors import InvalidInput

_METRICS_KEYS = frozenset({"listen", "probe_interval"})
_TRACING_KEYS = frozenset({"enabled", "endpoint", "sample_ratio", "service_name"})


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where ``/metrics`` is served (``host:port``; '' = off) and how often readiness probes run."""

    listen: str = ""
    probe_interval: float = 2.0

    @property
    def host(self) -> str:
        """The address part of ``listen``."""
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        """The port part of ``listen`` (0: an ephemeral port)."""
        return int(self.listen.rsplit(":", 1)[1])


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """OpenTelemetry spans: off unless ``enabled``; exported over OTLP/HTTP to ``endpoint``
    (e.g. ``http://127.0.0.1:4318/v1/traces``) when one is set."""

    enabled: bool = False
    endpoint: str = ""
    sample_ratio: float = 1.0
    service_name: str = ""


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    """A daemon's ``[metrics]`` and ``[tracing]`` tables."""

    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)


def _listen(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{where}: metrics.listen must be a 'host:port' string")
    if value == "":
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(f"{where}: metrics.listen {value!r} is not 'host:port'")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host != "localhost":
            raise InvalidInput(
                f"{where}: metrics.listen host must be an IP address or localhost"
            ) from None
    return value


def load_observability(raw: Mapping[str, Any], where: str) -> ObservabilityConfig:
    """Parse ``[metrics]`` and ``[tracing]`` of a daemon file: unknown keys, wrong types and
    out-of-range values are refused with their path. Both are off when absent."""
    metrics_t = raw.get("metrics", {})
    tracing_t = raw.get("tracing", {})
    for name, table, keys in (
        ("metrics", metrics_t, _METRICS_KEYS),
        ("tracing", tracing_t, _TRACING_KEYS),
    ):
        if not isinstance(table, dict):
            raise InvalidInput(f"{where}: {name} must be a table")
        unknown = sorted(set(table) - keys)
        if unknown:
            raise InvalidInput(f"{where}: {name}: unknown keys {unknown}")
    interval = metrics_t.get("probe_interval", 2.0)
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not (0.1 <= interval <= 300)
    ):
        raise InvalidInput(f"{where}: metrics.probe_interval must be seconds in [0.1, 300]")
    enabled = tracing_t.get("enabled", False)
    if not isinstance(enabled, bool):
        raise InvalidInput(f"{where}: tracing.enabled must be true or false")
    endpoint = tracing_t.get("endpoint", "")
    if not isinstance(endpoint, str) or (
        endpoint and urlparse(endpoint).scheme not in ("http", "https")
    ):
        raise InvalidInput(f"{where}: tracing.endpoint must be an http(s) URL")
    ratio = tracing_t.get("sample_ratio", 1.0)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
        raise InvalidInput(f"{where}: tracing.sample_ratio must be in [0, 1]")
    service = tracing_t.get("service_name", "")
    if not isinstance(service, str):
        raise InvalidInput(f"{where}: tracing.service_name must be a string")
    return ObservabilityConfig(
        MetricsConfig(_listen(metrics_t.get("listen", ""), where), float(interval)),
        TracingConfig(enabled, endpoint, float(ratio), service),
    )

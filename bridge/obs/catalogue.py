"""Every metric the daemons export, read from the code (for the dashboard, alert-rule and
documentation checks): builds each daemon's metric set on a throw-away registry."""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import CollectorRegistry


def exported_metrics() -> dict[str, frozenset[str]]:
    """Sample name (``_total``/``_bucket``/``_count``/``_sum`` included) -> label names.

    GUARANTEES: exactly the names a scrape of the coordinator, a relayer and a member can
    show (histogram buckets add the ``le`` label).
    """
    from bridge.coordinator.ha import LeaseMetrics
    from bridge.coordinator.metrics import CoordinatorMetrics
    from bridge.obs.metrics import CommonMetrics
    from relayers.metrics import RelayerMetrics
    from verifiers.metrics import MemberMetrics

    out: dict[str, frozenset[str]] = {}
    for component in ("coordinator", "relayer", "verifier"):
        registry = CollectorRegistry()
        common = CommonMetrics.create(component, registry)
        if component == "coordinator":
            CoordinatorMetrics(common, 60)
            LeaseMetrics(common)  # ---- active/passive coordinators (ADR 0017)
        elif component == "relayer":
            none = cast(Any, None)
            RelayerMetrics(common, "ledger", none, none, none)
        else:
            MemberMetrics(common)
        for family in registry.collect():
            labels = _labels(registry, family.name)
            kind = family.type
            names = {
                "counter": [family.name + "_total", family.name + "_created"],
                "histogram": [family.name + s for s in ("_bucket", "_count", "_sum", "_created")],
            }.get(kind, [family.name])
            for name in names:
                extra = {"le"} if name.endswith("_bucket") else set()
                out[name] = frozenset(labels | extra)
    return out


def _labels(registry: CollectorRegistry, family: str) -> set[str]:
    """Label names of a family, from its collector (also when it has no sample yet)."""
    names_to_collectors = registry._names_to_collectors  # no public accessor
    collector = names_to_collectors.get(family) or names_to_collectors.get(family + "_total")
    return set(getattr(collector, "_labelnames", ()))

"""Who may read flow limits (ADR 0010): the lanes and queues only the bridge operator, a
ledger's buckets through its relayer only the coordinator (brokerages read their own
transfers' wait reason through GetTransfer)."""

from __future__ import annotations

import pytest

from bridge.rpc.roles import Principal
from bridge.rpc.rules import RULES, role_allowed

pytestmark = [pytest.mark.unit, pytest.mark.governance, pytest.mark.security]

KINDS = (
    "brokerage", "relayer", "member", "coordinator", "depository", "supply-operator",
    "bridge-operator",
)  # fmt: skip


@pytest.mark.parametrize(
    ("method", "allowed"),
    [
        ("/bridge.v1.OperatorService/GetFlowStatus", {"bridge-operator"}),
        ("/bridge.v1.RelayerService/GetFlowStatus", {"coordinator"}),
    ],
)
def test_flow_status_readers(method: str, allowed: set[str]) -> None:
    rule = RULES[method]
    assert rule.scope is None
    for kind in KINDS:
        p = Principal("org", kind, "brokerage-a" if kind in ("brokerage", "relayer") else "")
        assert role_allowed(rule, p) == (kind in allowed), (method, kind)

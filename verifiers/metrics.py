"""A committee member's metrics, refusal log and readiness probes (ADR 0016).

Every refusal to sign is logged (``request refused``, with its reason) and counted in
``kstb_member_refusals_total{method,reason}``; every signature in
``kstb_member_signatures_total{method,claim}``. The reason label is the refusal's
``ErrorReason`` when it carries one, else the error class name: both closed sets. The
audit log (``bridge/rpc/audit.py``) records who was *allowed to ask*; this records what
the member *decided* on an allowed request, so the two never describe the same event.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from prometheus_client import Counter, Gauge

from bridge.core.reasons import ErrorReason
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import BridgeError
from bridge.ledgers.adapter import LedgerReader
from bridge.logfields import ERROR, REASON, TRANSFER, get_logger
from bridge.obs.metrics import CommonMetrics
from bridge.obs.readiness import Probe

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_REASONS = frozenset(r.value for r in ErrorReason)


def refusal_reason(exc: BaseException) -> str:
    """A bounded label for why a request was refused: the ``ErrorReason`` the error
    carries when it is one of the closed set, else the error's class name."""
    reason = getattr(exc, "reason", None)
    if reason is not None and str(reason) in _REASONS:
        return str(reason)
    return type(exc).__name__


class MemberMetrics:
    """Every member metric, registered on ``common.registry``."""

    def __init__(self, common: CommonMetrics) -> None:
        reg = common.registry
        self.common = common
        self.signatures = Counter(
            "kstb_member_signatures", "Requests this member signed.", ["method", "claim"],
            registry=reg,
        )  # fmt: skip
        self.refusals = Counter(
            "kstb_member_refusals", "Requests this member refused to sign, by reason.",
            ["method", "reason"], registry=reg,
        )  # fmt: skip
        self.ledger_height = Gauge(
            "kstb_member_ledger_height", "Finalized height of each ledger as this member reads it.",
            ["ledger"], registry=reg,
        )  # fmt: skip


_installed: MemberMetrics | None = None


def install(metrics: MemberMetrics | None) -> None:
    """Count into ``metrics`` (None: log refusals only)."""
    global _installed  # noqa: PLW0603 - one member per process
    _installed = metrics


def _claim(request: Any) -> str:
    kind = getattr(request, "kind", None)
    if not isinstance(kind, int):
        return ""
    try:
        return ClaimKind(kind).name
    except ValueError:
        return "UNKNOWN"


def _transfer(request: Any) -> str:
    terms = getattr(request, "terms", None)
    tid = getattr(terms, "transfer_id", b"") if terms is not None else b""
    return "0x" + bytes(tid).hex() if isinstance(tid, bytes) and tid else ""


def observed(method_label: str) -> Callable[[F], F]:
    """Decorate a signing RPC (inside ``@grpc_errors``): count its signatures, and log and
    count every refusal with its reason before the error goes back to the caller."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: Any) -> Any:
            claim = _claim(request)
            try:
                out = await method(self, request, context)
            except BridgeError as exc:
                reason = refusal_reason(exc)
                fields = {REASON: reason, ERROR: str(exc)[:300]}
                if tid := _transfer(request):
                    fields[TRANSFER] = tid
                get_logger().warning("request refused", method=method_label, claim=claim, **fields)
                if _installed is not None:
                    _installed.refusals.labels(method_label, reason).inc()
                raise
            if _installed is not None:
                _installed.signatures.labels(method_label, claim).inc()
            return out

        return cast(F, wrapper)

    return decorate


def member_probes(
    metrics: MemberMetrics, vote_db: Path, readers: Mapping[str, LedgerReader]
) -> list[Probe]:
    """Readiness: the vote log readable, and every ledger this member certifies reachable."""

    async def store() -> None:
        db = sqlite3.connect(f"file:{vote_db}?mode=ro", uri=True)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            db.close()

    def ledger(name: str, reader: LedgerReader) -> Callable[[], Awaitable[None]]:
        async def check() -> None:
            metrics.ledger_height.labels(name).set(await reader.finalized_height())

        return check

    return [Probe("store", store)] + [
        Probe(f"ledger:{name}", ledger(name, reader)) for name, reader in readers.items()
    ]

"""The ``StatusService`` every daemon serves, and how a daemon describes what it sees.

Each daemon hands :class:`StatusServicer` a coroutine building its
:class:`~bridge.doctor.model.ComponentStatus`; :func:`read_view` reads one ledger through the
daemon's own reader, turning a failing read into the view's ``error`` (a doctor must see a
component that cannot reach its node, not an RPC error).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import grpc
import structlog

from bridge.aio import retrieve
from bridge.core.digests import PROTOCOL_VERSION
from bridge.doctor.convert import status_to_pb
from bridge.doctor.model import ComponentStatus, LedgerView
from bridge.domain.errors import Unavailable
from bridge.ledgers.adapter import LedgerReader
from bridge.rpc.authz import current_principal
from bridge.rpc.roles import BRIDGE_OPERATOR
from bridge.rpc.rules import DEVELOPMENT
from bridge.v1 import status_pb2, status_pb2_grpc

log = structlog.get_logger(__name__)

Describe = Callable[[], Awaitable[ComponentStatus]]
"""Builds the daemon's status (its ledger views, endpoints, feeds) when asked."""


def build_version() -> str:
    """The installed ``kstb`` distribution's version (``0+unknown`` when not installed)."""
    try:
        return metadata.version("kstb")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def base_status(component: str, **fields: object) -> ComponentStatus:
    """A status with this build's version, the protocol version and the clock now."""
    return ComponentStatus(
        component=component,
        version=build_version(),
        protocol_version=PROTOCOL_VERSION,
        time_unix_ms=int(time.time() * 1000),
        **fields,  # type: ignore[arg-type]
    )


VIEW_UNREACHABLE = "unreachable"
"""A view's ``error``: the node did not answer (connection, timeout, 5xx)."""
VIEW_REFUSED = "refused"
"""A view's ``error``: the node answered but refused the request (HTTP 4xx, auth)."""
VIEW_MALFORMED = "malformed"
"""A view's ``error``: the node answered something this reader could not use."""
VIEW_ERRORS = frozenset({VIEW_UNREACHABLE, VIEW_REFUSED, VIEW_MALFORMED})
"""The closed set of ``LedgerView.error`` words a daemon sends (besides '' for none)."""

_URL = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/\s@]*@)?([^/\s?#'\"]*)[^\s'\"]*")


def redact_urls(text: str) -> str:
    """``text`` with every URL cut to its scheme and host:port (userinfo, path and query
    dropped: they carry API keys and passwords). Safe for the daemon's OWN log; never
    the text to send to another institution (see :func:`view_error`)."""
    return _URL.sub(lambda m: f"{m.group(1)}{m.group(2)}/…", text)


def view_error(exc: BaseException) -> str:
    """The fixed word (one of :data:`VIEW_ERRORS`) a failed read is reported as.

    SECURITY: the exception's text never leaves the daemon: node errors quote URLs with
    API keys, ``user:pass@`` and internal host:port, and ``GetStatus`` answers the
    depository, another institution."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        status = getattr(e, "status", None)
        if isinstance(status, int) and 400 <= status < 500:
            return VIEW_REFUSED
        if isinstance(e, PermissionError):
            return VIEW_REFUSED
        if isinstance(e, grpc.RpcError) and callable(getattr(e, "code", None)):
            code = e.code()  # a Fabric peer's answer
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                return VIEW_REFUSED
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return VIEW_UNREACHABLE
    if any(isinstance(e, Unavailable | OSError | asyncio.TimeoutError) for e in chain):
        return VIEW_UNREACHABLE
    if any(isinstance(getattr(e, "status", None), int) for e in chain):
        return VIEW_UNREACHABLE  # an HTTP 5xx: the node is there but not serving
    return VIEW_MALFORMED


async def read_view(
    name: str,
    reader: LedgerReader,
    *,
    scanned_height: Callable[[], int | None] | None = None,
    operator: str = "",
    gas_balance: Callable[[], Awaitable[int]] | None = None,
) -> LedgerView:
    """What ``reader``'s node says now: network word, finalized height, live epochs (and for
    a relayer its scanned height and gas). Never raises for a node fault: the view's
    ``error`` carries its category (:func:`view_error`); the detail is logged here only,
    URLs redacted."""
    try:
        word = await reader.network_word()
        height = await reader.finalized_height()
        epochs = tuple(await reader.committees(height))
        balance = await gas_balance() if gas_balance is not None else None
    except Exception as exc:
        category = view_error(exc)
        log.warning(
            "status read failed",
            ledger=name,
            category=category,
            error=redact_urls(f"{type(exc).__name__}: {exc}")[:500],
        )
        return LedgerView(
            ledger=name,
            kind=reader.kind,
            network_word=b"",
            bridge_word=reader.bridge_word,
            finalized_height=0,
            error=category,
        )
    return LedgerView(
        ledger=name,
        kind=reader.kind,
        network_word=word,
        bridge_word=reader.bridge_word,
        finalized_height=height,
        scanned_height=scanned_height() if scanned_height is not None else None,
        operator=operator,
        gas_balance=balance,
        epochs=epochs,
    )


CACHE_SECONDS = 3.0
"""How long one built status answers every caller (review finding 3)."""


def for_caller(status: ComponentStatus, role_kind: str) -> ComponentStatus:
    """What a caller of ``role_kind`` is told: the bridge operator (and development
    plaintext) everything; anyone else (the depository) no internal endpoints, no operator
    identity and no gas balance (review finding 9)."""
    if role_kind in (BRIDGE_OPERATOR, DEVELOPMENT):
        return status
    return dataclasses.replace(
        status,
        endpoints=(),
        ledgers=tuple(
            dataclasses.replace(v, operator="", gas_balance=None) for v in status.ledgers
        ),
    )


class StatusServicer(status_pb2_grpc.StatusServiceServicer):
    """``GetStatus``: the daemon's status as ``describe`` builds it (authorised by
    :mod:`bridge.rpc.rules`: operator and depository; the depository gets
    :func:`for_caller`'s reduced answer).

    SECURITY: ``describe`` costs node RPCs on the connection pool the daemon signs with, so
    a built status answers every caller for :data:`CACHE_SECONDS`, and at most one build
    runs at a time (single flight); a caller that gives up (a tiny deadline) neither
    cancels nor restarts it. Only the clock (``time_unix_ms``) is fresh in every answer."""

    def __init__(self, describe: Describe, cache_seconds: float = CACHE_SECONDS) -> None:
        self._describe = describe
        self._cache_seconds = cache_seconds
        self._cached: tuple[float, ComponentStatus] | None = None
        self._building: asyncio.Future[ComponentStatus] | None = None

    async def status(self) -> ComponentStatus:
        """The cached status, or the one being built, or a new build; the clock now."""
        cached = self._cached
        if cached is None or time.monotonic() - cached[0] >= self._cache_seconds:
            if self._building is None:
                self._building = asyncio.ensure_future(self._build())
                self._building.add_done_callback(retrieve)
            status = await asyncio.shield(self._building)
        else:
            status = cached[1]
        return dataclasses.replace(status, time_unix_ms=int(time.time() * 1000))

    async def _build(self) -> ComponentStatus:
        try:
            status = await self._describe()
            self._cached = (time.monotonic(), status)
            return status
        finally:
            self._building = None

    async def GetStatus(
        self, request: status_pb2.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> status_pb2.GetStatusResponse:
        """The status now, as much of it as the caller may see."""
        status = for_caller(await self.status(), current_principal().role)
        return status_pb2.GetStatusResponse(status=status_to_pb(status))


SERVICE_NAME = status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name
"""``bridge.v1.StatusService`` (for health and reflection registration)."""


def add_to_server(servicer: StatusServicer) -> Callable[[grpc.aio.Server], None]:
    """The adder :class:`~bridge.rpc.server.BridgeServer` takes."""
    return lambda s: status_pb2_grpc.add_StatusServiceServicer_to_server(servicer, s)

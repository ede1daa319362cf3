"""The ``StatusService`` every daemon serves, and how a daemon describes what it sees.

Each daemon hands :class:`StatusServicer` a coroutine building its
:class:`~bridge.doctor.model.ComponentStatus`; :func:`read_view` reads one ledger through the
daemon's own reader, turning a failing read into the view's ``error`` (a doctor must see a
component that cannot reach its node, not an RPC error).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import grpc
import structlog

from bridge.core.digests import PROTOCOL_VERSION
from bridge.doctor.convert import status_to_pb
from bridge.doctor.model import ComponentStatus, LedgerView
from bridge.ledgers.adapter import LedgerReader
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
    ``error`` carries it."""
    try:
        word = await reader.network_word()
        height = await reader.finalized_height()
        epochs = tuple(await reader.committees(height))
        balance = await gas_balance() if gas_balance is not None else None
    except Exception as exc:
        log.warning("status read failed", ledger=name, error=str(exc))
        return LedgerView(
            ledger=name,
            kind=reader.kind,
            network_word=b"",
            bridge_word=reader.bridge_word,
            finalized_height=0,
            error=f"{type(exc).__name__}: {exc}"[:300],
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


class StatusServicer(status_pb2_grpc.StatusServiceServicer):
    """``GetStatus``: the daemon's status as ``describe`` builds it (authorised by
    :mod:`bridge.rpc.rules`: operator, depository, coordinator)."""

    def __init__(self, describe: Describe) -> None:
        self._describe = describe

    async def GetStatus(
        self, request: status_pb2.GetStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> status_pb2.GetStatusResponse:
        """The status now."""
        return status_pb2.GetStatusResponse(status=status_to_pb(await self._describe()))


SERVICE_NAME = status_pb2.DESCRIPTOR.services_by_name["StatusService"].full_name
"""``bridge.v1.StatusService`` (for health and reflection registration)."""


def add_to_server(servicer: StatusServicer) -> Callable[[grpc.aio.Server], None]:
    """The adder :class:`~bridge.rpc.server.BridgeServer` takes."""
    return lambda s: status_pb2_grpc.add_StatusServiceServicer_to_server(servicer, s)

"""A brokerage-like client for the demo, tests and benchmarks.

Every submission in the devnet, the demo, the benchmarks and the tests goes through this
module: calls go out as the brokerage of the request's source ledger, and a
:class:`~bridge.instructions.Brokerage` signs each request's instruction (protocol v2) with
the instruction key registered for that ledger (``LocalSystem.brokerage``,
``LocalSystem.submit``, the routed stubs' ``instruct``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Protocol

import grpc

from bridge.domain.errors import BridgeError
from bridge.instructions import Brokerage
from bridge.rpc.channels import sync_channel
from bridge.v1 import transfer_pb2, transfer_pb2_grpc

__all__ = [
    "AsyncRoutedTransferStub",
    "Brokerage",
    "Instruct",
    "RoutedTransferStub",
    "brokerage_channel",
    "instructed",
    "submit_retrying",
]

Instruct = Callable[[transfer_pb2.SubmitTransferRequest], transfer_pb2.SubmitTransferRequest]
"""Signs a request's instruction as its source ledger's brokerage (``Brokerage.instruct``)."""


def instructed(
    instruct: Instruct | None, request: transfer_pb2.SubmitTransferRequest
) -> transfer_pb2.SubmitTransferRequest:
    """``request`` with its instruction: as given when it has one (or nobody signs), signed
    by ``instruct`` otherwise; a request the brokerage will not sign (malformed) is returned
    as is, for the coordinator to refuse precisely."""
    if instruct is None or request.HasField("instruction"):
        return request
    with contextlib.suppress(BridgeError):
        return instruct(request)
    return request


_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ChannelSource(Protocol):
    """Anything that opens an mTLS channel to the coordinator as a principal (LocalSystem)."""

    def channel(self, principal: str) -> grpc.Channel:
        """A channel holding ``principal``'s certificate (a role string)."""
        ...


Channels = ChannelSource | Callable[[str], grpc.Channel] | str
"""A LocalSystem (or similar), a factory ``principal -> channel``, or a bare target
(plaintext: development flag only)."""


def brokerage_channel(channels: Channels, source_ledger: str) -> grpc.Channel:
    """A channel as the brokerage of ``source_ledger`` (the only one that may submit a
    transfer from it)."""
    principal = f"brokerage:{source_ledger}"
    if isinstance(channels, str):
        return sync_channel(channels)
    if callable(channels):
        return channels(principal)
    return channels.channel(principal)


def submit_retrying(
    channels: Channels, request: transfer_pb2.SubmitTransferRequest, limit_s: float = 60.0
) -> str:
    """Submit as a brokerage should: retry UNAVAILABLE/DEADLINE_EXCEEDED with the same
    idempotency key (so a retry never creates a second transfer); return the transfer id.

    The call is made as the brokerage of the request's source ledger; ``request`` carries
    its instruction already (see :func:`instructed`). Raises the last RpcError for any
    other status, or TimeoutError after ``limit_s``.
    """
    give_up = time.monotonic() + limit_s
    while True:
        try:
            with brokerage_channel(channels, request.source_ledger) as channel:
                stub = transfer_pb2_grpc.TransferServiceStub(channel)
                return str(stub.SubmitTransfer(request, timeout=10).transfer.transfer_id)
        except grpc.RpcError as exc:
            if exc.code() not in _RETRYABLE:
                raise
            if time.monotonic() > give_up:
                raise TimeoutError(
                    f"SubmitTransfer {request.idempotency_key} not accepted"
                ) from exc
            time.sleep(0.3)


class RoutedTransferStub:
    """TransferService calls made as the devnet's institutions would make them.

    ``SubmitTransfer`` goes as the brokerage of the request's source ledger (the only one
    allowed to), or of ``fallback_ledger`` when the request names no ledger the devnet
    has a brokerage for; reads (Get/List/Watch) go as ``reader`` (the depository, which
    reads every transfer, by default).
    """

    def __init__(
        self,
        channels: ChannelSource,
        fallback_ledger: str,
        reader: str = "depository",
        instruct: Instruct | None = None,
    ) -> None:
        self._source = channels
        self._fallback = fallback_ledger
        self._instruct = instruct
        self._open: dict[str, grpc.Channel] = {}
        self._reader = transfer_pb2_grpc.TransferServiceStub(self._channel(reader))

    def _channel(self, principal: str) -> grpc.Channel:
        if principal not in self._open:
            self._open[principal] = self._source.channel(principal)
        return self._open[principal]

    def SubmitTransfer(
        self, request: transfer_pb2.SubmitTransferRequest, timeout: float | None = None
    ) -> transfer_pb2.SubmitTransferResponse:
        """Submit as the brokerage of ``request.source_ledger``, its instruction signed by
        ``instruct`` when it has none (see :func:`instructed`)."""
        request = instructed(self._instruct, request)
        try:
            channel = self._channel(f"brokerage:{request.source_ledger}")
        except (KeyError, BridgeError):  # no such brokerage in the devnet
            channel = self._channel(f"brokerage:{self._fallback}")
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        return stub.SubmitTransfer(request, timeout=timeout)

    def SubmitTransfers(  # ---- batch API (ADR 0023)
        self, request: transfer_pb2.SubmitTransfersRequest, timeout: float | None = None
    ) -> transfer_pb2.SubmitTransfersResponse:
        """Submit a batch as the brokerage of ``request.source_ledger``, each item without
        an instruction signed by ``instruct`` (items ``instruct`` refuses go unsigned, for
        the coordinator to refuse in their own results)."""
        batch = transfer_pb2.SubmitTransfersRequest()
        batch.CopyFrom(request)
        for item in batch.items:
            item.CopyFrom(instructed(self._instruct, item))
        stub = transfer_pb2_grpc.TransferServiceStub(
            self._channel(f"brokerage:{request.source_ledger}")
        )
        return stub.SubmitTransfers(batch, timeout=timeout)

    def __getattr__(self, name: str) -> object:
        """GetTransfer, ListTransfers, WatchTransfer, WatchBatch: as the reader."""
        return getattr(self._reader, name)

    def close(self) -> None:
        """Close every channel."""
        for ch in self._open.values():
            ch.close()


class AsyncChannelSource(Protocol):
    """Anything that opens asyncio mTLS channels to the coordinator as a principal."""

    def aio_channel(self, principal: str) -> grpc.aio.Channel:
        """An asyncio channel holding ``principal``'s certificate."""
        ...


class AsyncRoutedTransferStub:
    """:class:`RoutedTransferStub` for asyncio callers (benchmarks): SubmitTransfer as the
    source ledger's brokerage, Get/List/Watch as ``reader``."""

    def __init__(
        self,
        channels: AsyncChannelSource,
        reader: str = "depository",
        instruct: Instruct | None = None,
    ) -> None:
        self._source = channels
        self._instruct = instruct
        self._open: dict[str, grpc.aio.Channel] = {}
        self._reader = reader

    def channel(self, principal: str) -> grpc.aio.Channel:
        """The (cached) channel of ``principal``."""
        if principal not in self._open:
            self._open[principal] = self._source.aio_channel(principal)
        return self._open[principal]

    def _stub(self, principal: str) -> transfer_pb2_grpc.TransferServiceAsyncStub:
        return transfer_pb2_grpc.TransferServiceStub(self.channel(principal))

    def SubmitTransfer(
        self, request: transfer_pb2.SubmitTransferRequest, timeout: float | None = None
    ) -> object:
        """Submit as the brokerage of ``request.source_ledger`` (an awaitable call), its
        instruction signed by ``instruct`` when it has none."""
        request = instructed(self._instruct, request)
        return self._stub(f"brokerage:{request.source_ledger}").SubmitTransfer(
            request, timeout=timeout
        )

    def __getattr__(self, name: str) -> object:
        """GetTransfer, ListTransfers, WatchTransfer: as the reader."""
        return getattr(self._stub(self._reader), name)

    async def close(self) -> None:
        """Close every channel."""
        for ch in self._open.values():
            await ch.close(None)

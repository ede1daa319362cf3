"""A brokerage-like client for the demo, tests and benchmarks.

Every submission in the devnet, the demo, the benchmarks and the tests goes through this
module: a :class:`~bridge.instructions.Brokerage` signs each request's instruction
(protocol v2) with the instruction key registered for its source ledger (see
``LocalSystem.brokerage`` / ``LocalSystem.submit``), and :func:`channel` is the one place a
client channel to the coordinator is created.
"""

from __future__ import annotations

import time

import grpc

from bridge.instructions import Brokerage
from bridge.v1 import transfer_pb2, transfer_pb2_grpc

__all__ = ["Brokerage", "channel", "submit_retrying"]

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def channel(target: str) -> grpc.Channel:
    """A client channel to the coordinator at ``target`` (the one place channels are made)."""
    return grpc.insecure_channel(target)


def submit_retrying(
    target: str, request: transfer_pb2.SubmitTransferRequest, limit_s: float = 60.0
) -> str:
    """Submit as a brokerage should: retry UNAVAILABLE/DEADLINE_EXCEEDED with the same
    idempotency key (so a retry never creates a second transfer); return the transfer id.

    ``request`` carries its instruction already (see :meth:`Brokerage.instruct`). Raises
    the last RpcError for any other status, or TimeoutError after ``limit_s``.
    """
    give_up = time.monotonic() + limit_s
    while True:
        try:
            with channel(target) as ch:
                stub = transfer_pb2_grpc.TransferServiceStub(ch)
                return str(stub.SubmitTransfer(request, timeout=10).transfer.transfer_id)
        except grpc.RpcError as exc:
            if exc.code() not in _RETRYABLE:
                raise
            if time.monotonic() > give_up:
                raise TimeoutError(
                    f"SubmitTransfer {request.idempotency_key} not accepted"
                ) from exc
            time.sleep(0.3)

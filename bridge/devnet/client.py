"""A brokerage-like client for the demo, tests and benchmarks."""

from __future__ import annotations

import time

import grpc

from bridge.v1 import transfer_pb2, transfer_pb2_grpc

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def submit_retrying(
    target: str, request: transfer_pb2.SubmitTransferRequest, limit_s: float = 60.0
) -> str:
    """Submit as a brokerage should: retry UNAVAILABLE/DEADLINE_EXCEEDED with the same
    idempotency key (so a retry never creates a second transfer); return the transfer id.

    Raises the last RpcError for any other status, or TimeoutError after ``limit_s``.
    """
    give_up = time.monotonic() + limit_s
    while True:
        try:
            with grpc.insecure_channel(target) as channel:
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

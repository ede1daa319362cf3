"""Client channels for the bridge's internal gRPC calls."""

from __future__ import annotations

import grpc

# A peer that restarts should be reachable again within about a second, not after
# gRPC's default exponential reconnect backoff (which grows to two minutes).
INTERNAL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


def internal_channel(target: str) -> grpc.aio.Channel:
    """An asyncio channel to another bridge component (plaintext on loopback for now;
    mTLS is a later change confined to this function)."""
    return grpc.aio.insecure_channel(target, options=INTERNAL_OPTIONS)

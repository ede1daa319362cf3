"""``bridge health``: ask one daemon's gRPC health service whether it is SERVING.

The probe a supervisor runs (Kubernetes exec probes, ADR 0021): Kubernetes' built-in gRPC
probe speaks plaintext, and every KSTB port is mutual TLS, so the container runs this command
with the daemon's own configuration file (``--client-config``: its ``network`` and ``[tls]``
table), which authenticates the server as the role it must hold.

Exit status: 0 SERVING, 1 NOT_SERVING (or any other status), 2 unreachable or misconfigured.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge.cli import credentials
from bridge.domain.errors import BridgeError
from bridge.rpc.channels import sync_channel
from bridge.rpc.roles import Role

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_UNREACHABLE = 2


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``health`` command."""
    h = top.add_parser("health", help="exit 0 when a daemon's gRPC health is SERVING")
    h.add_argument("--target", required=True, help="host:port of the daemon")
    h.add_argument(
        "--role",
        required=True,
        help="the role the server must hold: coordinator, relayer:<ledger>, member:<0xaddr>",
    )
    h.add_argument("--service", default="", help="one service's status ('' = the server's)")


def run(a: argparse.Namespace) -> int:
    """Check once; see the module docstring for the exit status.

    Guarantees: SERVING is reported only over a channel that authenticated the server as
    ``--role`` (or over plaintext when the development flag allows it).
    """
    try:
        kind, _, scope = str(a.role).partition(":")
        identity = credentials.identity(a, Role(kind, scope))
        channel = sync_channel(a.target, identity)
    except (OSError, BridgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=a.service), timeout=a.timeout)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return (
        EXIT_SERVING
        if reply.status == health_pb2.HealthCheckResponse.SERVING
        else (EXIT_NOT_SERVING)
    )

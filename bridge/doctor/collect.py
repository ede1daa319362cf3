"""Ask every component of a deployment for its status (the doctor's only I/O).

The coordinator is asked first: it names the relayer and member endpoints it dials. Members
of later epochs are added from the network file's ``[[committee.later]]``, and the caller
may name or override any endpoint. Every other component is then asked in parallel, each
over mutual TLS toward its own role (so a relayer's answer comes from a certificate holding
that relayer's role, a member's from that member's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import grpc
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from bridge.config import NetworkConfig
from bridge.doctor.checks import Reading, member_component
from bridge.doctor.convert import status_from_pb
from bridge.domain.errors import BridgeError
from bridge.rpc.channels import sync_channel
from bridge.rpc.errors import describe_rpc_error
from bridge.rpc.roles import COORDINATOR, Role, parse_role
from bridge.rpc.tls import ClientIdentity
from bridge.v1 import status_pb2, status_pb2_grpc

IdentityFor = Callable[[Role], ClientIdentity | None]
"""The caller's TLS identity toward a server holding a role (None: development plaintext)."""


def read_status(component: str, target: str, identity_for: IdentityFor, timeout: float) -> Reading:
    """One component's status, or the reason it could not be read (never raises for a
    transport, TLS or decoding fault)."""
    sent = time.time()
    try:
        role = Role(COORDINATOR) if component == "coordinator" else parse_role(component)
        identity = identity_for(role)
        for attempt in Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(ATTEMPTS),
            wait=wait_fixed(0.5),
            reraise=True,
        ):
            with attempt:
                sent = time.time()
                with sync_channel(target, identity) as channel:
                    answer = status_pb2_grpc.StatusServiceStub(channel).GetStatus(
                        status_pb2.GetStatusRequest(), timeout=timeout
                    )
                received = time.time()
                return Reading(component, target, status_from_pb(answer.status), "", sent, received)
        raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or raises
    except grpc.RpcError as exc:
        return Reading(component, target, None, describe_rpc_error(exc), sent, time.time())
    except (BridgeError, ValueError, OSError) as exc:
        return Reading(component, target, None, f"{type(exc).__name__}: {exc}", sent, time.time())


ATTEMPTS = 2
"""A status read that failed in transport is tried once more (it is idempotent): one slow
TLS handshake on a loaded host is not an outage; a stopped daemon fails both at once."""


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and cast(Any, exc).code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


def endpoints_to_read(
    network: NetworkConfig, coordinator: Reading, overrides: Mapping[str, str]
) -> dict[str, str]:
    """Component name -> ``host:port``: what the coordinator dials, the file's later members,
    then ``overrides`` (which win)."""
    targets: dict[str, str] = {}
    if coordinator.status is not None:
        targets.update(dict(coordinator.status.endpoints))
    for address, endpoint in network.later_members.items():
        if endpoint:
            targets.setdefault(member_component(address), endpoint)
    targets.update(overrides)
    return targets


def collect(
    network: NetworkConfig,
    coordinator_target: str,
    identity_for: IdentityFor,
    overrides: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> dict[str, Reading]:
    """Every component's reading, keyed by component name (``coordinator``,
    ``relayer:<ledger>``, ``member:0x<address>``)."""
    coordinator = read_status("coordinator", coordinator_target, identity_for, timeout)
    targets = endpoints_to_read(network, coordinator, overrides or {})
    readings = {"coordinator": coordinator}
    if not targets:
        return readings
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        futures = {
            name: pool.submit(read_status, name, target, identity_for, timeout)
            for name, target in targets.items()
        }
        for name, future in futures.items():
            readings[name] = future.result()
    return readings

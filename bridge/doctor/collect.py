"""Ask every component of a deployment for its status (the doctor's only I/O).

The coordinator is asked first: it names the relayer and member endpoints it dials. Members
of later epochs are added from the network file's ``[[committee.later]]``, and the caller
may name or override any endpoint. SECURITY: only the components the network file expects
are dialled (one relayer per ledger, the genesis and later members; review finding 4): a
compromised coordinator cannot make the doctor dial hosts of its choosing, nor replace the
coordinator's own reading. Every other component is then asked in parallel, each
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
from bridge.domain.errors import BridgeError, InvalidInput
from bridge.domain.ids import parse_evm_address
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


def expected_components(network: NetworkConfig) -> frozenset[str]:
    """The component names the network file expects besides the coordinator: one relayer
    per ledger, every genesis and later member."""
    members = set(network.committee.members) | set(network.later_members)
    return frozenset(
        [f"relayer:{name}" for name in network.ledgers] + [member_component(m) for m in members]
    )


def _canonical(name: str) -> str:
    """A component name as :func:`expected_components` writes it (members' addresses in
    any case), or '' when it is not one."""
    kind, _, rest = name.partition(":")
    if kind == "member":
        try:
            return member_component(parse_evm_address(rest))
        except InvalidInput:
            return ""
    return name


def endpoints_to_read(
    network: NetworkConfig, coordinator: Reading, overrides: Mapping[str, str]
) -> dict[str, str]:
    """Component name -> ``host:port``: what the coordinator dials, the file's later members,
    then ``overrides`` (which win; InvalidInput for one the file does not expect); only
    components of :func:`expected_components` (never
    ``coordinator``, so at most one per ledger and member)."""
    expected = expected_components(network)
    targets: dict[str, str] = {}
    if coordinator.status is not None:
        for name, target in coordinator.status.endpoints:
            canonical = _canonical(name)
            if canonical in expected:
                targets[canonical] = target
    for address, endpoint in network.later_members.items():
        if endpoint:
            targets.setdefault(member_component(address), endpoint)
    for name, target in overrides.items():
        if _canonical(name) not in expected:
            raise InvalidInput(f"{name}: not a relayer or member of the network file")
        targets[_canonical(name)] = target
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
            if name != "coordinator"  # SECURITY: never replaced (endpoints_to_read ensures)
        }
        for name, future in futures.items():
            readings[name] = future.result()
    return readings

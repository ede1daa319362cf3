"""The authorisation interceptor on a real in-process gRPC server over real mutual TLS
(devnet PKI): status codes, audit records, unknown methods, streams that outlive a
revocation, broken or replaced revocation lists, errors other than Unauthenticated."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bridge.config import NetworkConfig, TlsConfig, load_network
from bridge.devnet.pki import DevPki, IssuedCertificate
from bridge.domain.errors import InvalidInput
from bridge.rpc.audit import AuditLog
from bridge.rpc.authn import Authenticator
from bridge.rpc.authz import AuthorisationInterceptor
from bridge.rpc.roles import Role
from bridge.rpc.tls import ClientIdentity, ServerCredentialSource, server_roots
from tests.unit.test_authorisation import A, B, network_with

pytestmark = [pytest.mark.unit, pytest.mark.security]

ABORT = "/bridge.v1.OperatorService/AbortTransfer"
CHECK = "/grpc.health.v1.Health/Check"


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return make_pki(tmp_path / "pki")


def make_pki(root: Path) -> DevPki:
    """CAs and certificates for the coordinator, the bridge operator and brokerages A, B."""
    pki = DevPki(root)
    pki.organisation("bridge-operator", ["coordinator", "bridge-operator"])
    pki.issue("bridge-operator", "coordinator", "coordinator")
    pki.issue("bridge-operator", "bridge-operator", "operator")
    pki.organisation(A, [f"brokerage:{A}", f"relayer:{A}"])
    pki.issue(A, f"brokerage:{A}", f"brokerage-{A}")
    pki.organisation(B, [f"brokerage:{B}"])
    pki.issue(B, f"brokerage:{B}", f"brokerage-{B}")
    return pki


@dataclass
class Served:
    port: int
    pki: DevPki
    network: NetworkConfig
    authn: Authenticator
    audit_file: Path
    handled: list[str]

    def channel(self, cert: IssuedCertificate) -> grpc.aio.Channel:
        ident = ClientIdentity(
            TlsConfig(cert.cert_file, cert.key_file),
            (self.pki.cas["bridge-operator"].ca_file,),
            Role("coordinator"),
        )
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.port}", ident.credentials(), options=ident.options()
        )

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_file.read_text().splitlines()]


@pytest.fixture
async def served(pki: DevPki, tmp_path: Path) -> AsyncIterator[Served]:
    network = load_network(network_with(pki, tmp_path))
    authn = Authenticator(network)
    audit_file = tmp_path / "audit.jsonl"
    audit = AuditLog(audit_file)
    server = grpc.aio.server(
        interceptors=[AuthorisationInterceptor(authn, audit, recheck_every=0.2)]
    )
    handled: list[str] = []

    async def abort(request: bytes, context: Any) -> bytes:
        handled.append(ABORT)
        return b""

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bridge.v1.OperatorService",
                {"AbortTransfer": grpc.unary_unary_rpc_method_handler(abort)},
            ),
        )
    )
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    coordinator = pki.cert_for("coordinator")
    tls = TlsConfig(coordinator.cert_file, coordinator.key_file)
    creds = ServerCredentialSource(tls, server_roots(network, tls)).credentials()
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    yield Served(port, pki, network, authn, audit_file, handled)
    await server.stop(0)
    audit.close()


async def check(served: Served, cert: IssuedCertificate) -> grpc.aio.AioRpcError | None:
    async with served.channel(cert) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc
    return None


async def test_allowed_and_denied_calls_are_audited(served: Served) -> None:
    broker = served.pki.cert_for(f"brokerage:{A}")
    assert await check(served, broker) is None
    async with served.channel(broker) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary(ABORT)(b"", timeout=10)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == f"role brokerage:{A} may not call {ABORT}"
    assert served.handled == [], "the handler never ran"
    records = served.audit()
    assert [(r["method"], r["allowed"], r["org"]) for r in records] == [
        (CHECK, True, A),
        (ABORT, False, A),
    ]
    async with served.channel(served.pki.cert_for("bridge-operator")) as ch:
        await ch.unary_unary(ABORT)(b"", timeout=10)
    assert served.handled == [ABORT]


async def test_unknown_methods_are_authenticated_and_audited_first(served: Served) -> None:
    broker = served.pki.cert_for(f"brokerage:{A}")
    async with served.channel(broker) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary("/bridge.v1.Nope/Probe")(b"", timeout=10)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED
    served.pki.revoke(broker)
    async with served.channel(broker) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ch.unary_unary("/bridge.v1.Nope/Probe")(b"", timeout=10)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED, "no method list to a stranger"
    assert "is revoked" in (err.value.details() or "")
    records = served.audit()
    assert [(r["method"], r["allowed"]) for r in records] == [
        ("/bridge.v1.Nope/Probe", False),
        ("/bridge.v1.Nope/Probe", False),
    ]
    assert records[0]["reason"] == "method /bridge.v1.Nope/Probe does not exist"
    assert records[1]["fingerprint"] == broker.fingerprint


async def test_an_error_other_than_unauthenticated_is_refused_and_audited(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(pem: bytes) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(served.authn, "principal", explode)
    err = await check(served, served.pki.cert_for(f"brokerage:{A}"))
    assert err is not None and err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == "could not authenticate the caller: RuntimeError"
    (record,) = served.audit()
    assert (record["method"], record["allowed"]) == (CHECK, False)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("malformed", "is not a SHA-256 fingerprint"),
        ("missing", "is not readable"),
    ],
)
async def test_a_broken_revocation_list_refuses_only_its_organisation(
    served: Served, damage: str, message: str
) -> None:
    revoked = served.pki.cas[A].revoked_file
    good = revoked.read_bytes()
    if damage == "malformed":
        revoked.write_bytes(good + b"not-a-fingerprint\n")
    else:
        revoked.unlink()
    err = await check(served, served.pki.cert_for(f"brokerage:{A}"))
    assert err is not None and err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert f"certificates of {A} are refused" in (err.details() or "")
    assert message in (err.details() or "")
    assert await check(served, served.pki.cert_for(f"brokerage:{B}")) is None, "B unaffected"
    assert served.authn.problems().keys() == {A}
    assert [(r["org"], r["allowed"]) for r in served.audit()] == [(A, False), (B, True)]
    revoked.write_bytes(good)  # repaired
    assert await check(served, served.pki.cert_for(f"brokerage:{A}")) is None
    assert served.authn.problems() == {}


async def test_a_replaced_revocation_list_is_read_again(served: Served) -> None:
    first = served.pki.issue_extra(A, f"relayer:{A}", "first")
    second = served.pki.issue_extra(A, f"relayer:{A}", "second")
    revoked = served.pki.cas[A].revoked_file
    served.pki.revoke(first)
    assert (await check(served, first)) is not None
    assert await check(served, second) is None
    # Replaced (renamed over, same size): the list now names only the second certificate.
    replacement = revoked.with_suffix(".new")
    replacement.write_text(f"{second.fingerprint}  # second\n")
    replacement.replace(revoked)
    assert await check(served, first) is None, "no longer revoked"
    err = await check(served, second)
    assert err is not None and err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "is revoked" in (err.details() or "")


async def test_revocation_ends_an_open_stream(served: Served) -> None:
    broker = served.pki.cert_for(f"brokerage:{A}")
    async with served.channel(broker) as ch:
        call = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=20)
        first = await call.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        served.pki.revoke(broker)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(call.read(), timeout=10)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert (err.value.details() or "").startswith("stream ended: certificate")
    records = served.audit()
    assert [(r["method"], r["allowed"]) for r in records] == [
        ("/grpc.health.v1.Health/Watch", True),
        ("/grpc.health.v1.Health/Watch", False),
    ]


def test_a_missing_revocation_list_refuses_to_start(pki: DevPki, tmp_path: Path) -> None:
    path = network_with(pki, tmp_path)
    pki.cas[A].revoked_file.unlink()
    with pytest.raises(InvalidInput, match=r"revocation list .* is not readable"):
        load_network(path)


def test_a_malformed_revocation_list_refuses_to_start(pki: DevPki, tmp_path: Path) -> None:
    network = load_network(network_with(pki, tmp_path))
    pki.cas[B].revoked_file.write_text("zz\n")
    with pytest.raises(InvalidInput, match="is not a SHA-256 fingerprint"):
        Authenticator(network)


@pytest.mark.parametrize(
    ("context", "reason"),
    [
        (
            {"ssl_tls_version": [b"TLSv1.2"]},
            "the connection negotiated TLSv1.2; TLS 1.3 is required",
        ),
        (
            {"ssl_tls_version": [b"TLSv1.1"]},
            "the connection negotiated TLSv1.1; TLS 1.3 is required",
        ),
        ({}, "the connection's TLS version is unknown; TLS 1.3 is required"),
        ({"ssl_tls_version": []}, "the connection's TLS version is unknown; TLS 1.3 is required"),
        (
            {"ssl_tls_version": [b"TLSv1.3", b"TLSv1.2"]},
            "the connection's TLS version is unknown; TLS 1.3 is required",
        ),
    ],
)
def test_only_tls13_passes_the_version_check(context: dict[str, list[bytes]], reason: str) -> None:
    """Anything but exactly one ``TLSv1.3`` in the auth context is refused (fail closed)."""
    from bridge.rpc.authn import Unauthenticated, require_tls13

    with pytest.raises(Unauthenticated) as exc:
        require_tls13(context)
    assert str(exc.value) == reason
    require_tls13({"ssl_tls_version": [b"TLSv1.3"]})  # the control: nothing raised

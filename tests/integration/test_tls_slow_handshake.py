"""A mutual-TLS handshake slower than a fraction of a second is waited for, not cut short.

The server's certificate fetcher (called by gRPC at every handshake) is slowed down, which
makes every handshake take at least :data:`HANDSHAKE_DELAY_S`: the same condition a loaded
host produces at random. Real gRPC, real TLS, real certificates; no retry anywhere.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from bridge.config import TlsConfig
from bridge.devnet.pki import DevPki, IssuedCertificate
from bridge.rpc import channels
from bridge.rpc.roles import Role
from bridge.rpc.tls import ClientIdentity, ServerCredentialSource

pytestmark = [pytest.mark.integration, pytest.mark.security]

HANDSHAKE_DELAY_S = 0.5
"""Every server handshake waits this long: five times the old 100 ms connect deadline."""
METHOD = "/kstb.test.Echo/Echo"


class SlowSource(ServerCredentialSource):
    """The real credential source, with every handshake delayed by the fetcher."""

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        time.sleep(HANDSHAKE_DELAY_S)
        return super()._fetch()


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    pki = DevPki(tmp_path / "pki")
    pki.organisation("bridge-operator", ["coordinator"])
    pki.issue("bridge-operator", "coordinator", "coordinator")
    return pki


@pytest.fixture
def slow_server(pki: DevPki) -> Iterator[str]:
    """An asyncio mTLS server (own thread and loop) whose handshakes are slow; its target."""
    cert = pki.cert_for("coordinator")
    source = SlowSource(
        TlsConfig(cert.cert_file, cert.key_file), [pki.cas["bridge-operator"].ca_file]
    )
    started = threading.Event()
    port: list[int] = []
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def serve() -> None:
        server = grpc.aio.server()
        echo = grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("kstb.test.Echo", {"Echo": echo}),)
        )
        port.append(server.add_secure_port("127.0.0.1:0", source.credentials()))
        stop.append((asyncio.get_running_loop(), asyncio.Event()))
        await server.start()
        started.set()
        await stop[0][1].wait()
        await server.stop(None)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(30)
    yield f"127.0.0.1:{port[0]}"
    loop, event = stop[0]
    loop.call_soon_threadsafe(event.set)
    thread.join(30)


def identity(cert: IssuedCertificate, pki: DevPki) -> ClientIdentity:
    return ClientIdentity(
        TlsConfig(cert.cert_file, cert.key_file),
        (pki.cas["bridge-operator"].ca_file,),
        Role("coordinator"),
    )


def test_fresh_sync_channels_wait_for_a_slow_handshake(slow_server: str, pki: DevPki) -> None:
    """What a polling caller (CLI, test helper) does: a fresh channel per call."""
    for _ in range(3):
        with channels.sync_channel(slow_server, identity(pki.cert_for("coordinator"), pki)) as ch:
            assert ch.unary_unary(METHOD, None, None)(b"ping", timeout=10) == b"ping"


async def test_an_asyncio_channel_waits_for_a_slow_handshake(slow_server: str, pki: DevPki) -> None:
    """What the daemons do (coordinator -> relayer/verifier, supply client)."""
    ident = identity(pki.cert_for("coordinator"), pki)
    async with channels.internal_channel(slow_server, ident) as ch:
        assert await ch.unary_unary(METHOD, None, None)(b"ping", timeout=10) == b"ping"


def test_the_old_100ms_connect_deadline_cut_the_handshake(slow_server: str, pki: DevPki) -> None:
    """Control: the condition is real. A 100 ms connect deadline
    (``grpc.min_reconnect_backoff_ms``) makes the client abandon its own handshake with the
    error seen in the flaky end-to-end runs."""
    ident = identity(pki.cert_for("coordinator"), pki)
    options = [o for o in channels.INTERNAL_OPTIONS if o[0] != "grpc.min_reconnect_backoff_ms"]
    options += [("grpc.min_reconnect_backoff_ms", 100), *ident.options()]
    with (
        grpc.secure_channel(slow_server, ident.credentials(), options=options) as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        ch.unary_unary(METHOD, None, None)(b"ping", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Endpoint closing" in str(err.value.details())


def test_a_refused_certificate_is_still_refused_promptly(slow_server: str, pki: DevPki) -> None:
    """The longer connect deadline does not turn a refusal into a wait: a client whose
    certificate no trusted CA issued fails with UNAVAILABLE as soon as the server closes
    the handshake, well inside the call's deadline."""
    rogue = pki.issue_unknown_ca("bridge-operator", "coordinator", "coordinator")
    started = time.monotonic()
    with (
        channels.sync_channel(slow_server, identity(rogue, pki)) as ch,
        pytest.raises(grpc.RpcError) as err,
    ):
        ch.unary_unary(METHOD, None, None)(b"ping", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 5
    assert "Endpoint closing" not in str(err.value.details()), "refused by the server"

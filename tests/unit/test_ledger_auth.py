"""How daemons authenticate to ledger nodes: `[ledger_auth]` parsing, token files, the EVM
transport's headers and TLS trust, the devnet proxy's token check, and the Fabric client's
TLS client certificate and Deliver binding (pure logic, no processes)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from bridge.config import LedgerAuth, LedgerConfig, dump_toml, load_relayer, load_verifier
from bridge.devnet.evm_proxy import authorised, read_tokens
from bridge.devnet.ledger_tls import DevCA
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import LedgerId
from bridge.ledgers.evm.adapter import EvmAdapter
from bridge.ledgers.evm.transport import (
    EvmTransport,
    NodeConnectionRefused,
    read_token_file,
)
from bridge.ledgers.fabric._protos import common_pb2
from bridge.ledgers.fabric.gateway import GatewayClient, build_seek_envelope, tls_cert_hash
from bridge.ledgers.fabric.identity import SigningIdentity
from bridge.ledgers.startup import LedgerMismatch
from bridge.rpc.tls import INSECURE_ENV
from tests.unit.test_config import fabric_ledger, network_data

pytestmark = [pytest.mark.unit, pytest.mark.security]

TOKEN = "3f" * 32


def token_file(tmp_path: Path, text: str = TOKEN + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "rpc.token"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def network(tmp_path: Path, https: bool = True) -> Path:
    data = network_data()
    if https:
        data["ledgers"][0]["rpc_url"] = "https://node-a.example:8545"
        data["ledgers"][0]["tls_ca"] = "node-a-ca.pem"
    data["ledgers"].append(fabric_ledger())
    path = tmp_path / "network.toml"
    path.write_text(dump_toml(data))
    return path


def relayer(tmp_path: Path, ledger: str, auth: dict[str, Any], https: bool = True) -> Any:
    network(tmp_path, https)
    path = tmp_path / "relayer.toml"
    path.write_text(
        dump_toml(
            {
                "network": "network.toml",
                "ledger": ledger,
                "listen": "127.0.0.1:1",
                "coordinator": "127.0.0.1:2",
                "key_file": "k",
                "state_db": "s",
                "ledger_auth": auth,
            }
            | ({"cert_file": "c.pem", "msp_id": "Org1MSP"} if ledger == "brokerage-f" else {})
        )
    )
    return load_relayer(path)


# -- [ledger_auth] ---------------------------------------------------------------------------


def test_relayer_ledger_auth_paths_resolve_against_the_file(tmp_path: Path) -> None:
    evm = relayer(tmp_path, "brokerage-a", {"token_file": "keys/token"})
    assert evm.ledger_auth == LedgerAuth(token_file=tmp_path / "keys" / "token")
    fab = relayer(tmp_path, "brokerage-f", {"tls_cert_file": "c.crt", "tls_key_file": "c.key"})
    assert fab.ledger_auth == LedgerAuth(
        tls_cert_file=tmp_path / "c.crt", tls_key_file=tmp_path / "c.key"
    )
    assert relayer(tmp_path, "brokerage-a", {}).ledger_auth == LedgerAuth()


@pytest.mark.parametrize(
    ("ledger", "auth", "https", "message"),
    [
        ("brokerage-a", {"token_file": "t"}, False, "token_file needs an https:// rpc_url"),
        ("brokerage-a", {"tls_cert_file": "c", "tls_key_file": "k"}, True, "Fabric ledgers only"),
        ("brokerage-f", {"token_file": "t"}, True, "token_file applies to EVM ledgers only"),
        ("brokerage-f", {"tls_cert_file": "c"}, True, "go together"),
        ("brokerage-f", {"tls_key_file": "k"}, True, "go together"),
        ("brokerage-a", {"token": "t"}, True, r"ledger_auth\.token: unknown key"),
    ],
    ids=["token-over-http", "tls-on-evm", "token-on-fabric", "cert-alone", "key-alone", "typo"],
)
def test_ledger_auth_mistakes_are_refused(
    tmp_path: Path, ledger: str, auth: dict[str, Any], https: bool, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        relayer(tmp_path, ledger, auth, https)


def test_network_refuses_tls_ca_for_a_plain_http_evm_node(tmp_path: Path) -> None:
    data = network_data()
    data["ledgers"][0]["tls_ca"] = "ca.pem"
    path = tmp_path / "network.toml"
    path.write_text(dump_toml(data))
    network_file = tmp_path / "relayer.toml"
    network_file.write_text(
        dump_toml(
            {
                "network": "network.toml",
                "ledger": "brokerage-a",
                "listen": "127.0.0.1:1",
                "coordinator": "127.0.0.1:2",
                "key_file": "k",
                "state_db": "s",
            }
        )
    )
    with pytest.raises(InvalidInput, match="tls_ca needs an https:// rpc_url"):
        load_relayer(network_file)


def _verifier(tmp_path: Path, extra: dict[str, Any]) -> Any:
    network(tmp_path)
    path = tmp_path / "verifier.toml"
    path.write_text(
        dump_toml(
            {"network": "network.toml", "listen": "127.0.0.1:1", "key_file": "k", "vote_db": "v"}
            | extra
        )
    )
    return load_verifier(path)


def test_verifier_ledger_auth_per_ledger(tmp_path: Path) -> None:
    v = _verifier(
        tmp_path,
        {
            "ledger_auth": {
                "brokerage-a": {"token_file": "tok-a"},
                "brokerage-f": {"tls_cert_file": "f.crt", "tls_key_file": "f.key"},
            }
        },
    )
    assert v.ledger_auth["brokerage-a"].token_file == tmp_path / "tok-a"
    assert v.ledger_auth["brokerage-f"].tls_key_file == tmp_path / "f.key"
    assert "brokerage-b" not in v.ledger_auth


def test_verifier_token_is_checked_against_the_url_it_actually_uses(tmp_path: Path) -> None:
    # network.toml has https for brokerage-a, but this member's own node is plain http.
    with pytest.raises(InvalidInput, match=r"token would be sent in clear to http://10\.0\.0\.9"):
        _verifier(
            tmp_path,
            {
                "rpc_overrides": {"brokerage-a": "http://10.0.0.9:8545"},
                "ledger_auth": {"brokerage-a": {"token_file": "tok-a"}},
            },
        )
    with pytest.raises(InvalidInput, match=r"ledger_auth\.nowhere: unknown ledger"):
        _verifier(tmp_path, {"ledger_auth": {"nowhere": {"token_file": "t"}}})


# -- token files and the EVM transport -------------------------------------------------------


def test_token_file_is_read_and_its_mode_enforced(tmp_path: Path) -> None:
    assert read_token_file(token_file(tmp_path)) == TOKEN
    with pytest.raises(InvalidInput, match="chmod 600"):
        read_token_file(token_file(tmp_path, mode=0o640))
    with pytest.raises(InvalidInput, match="one token without spaces"):
        read_token_file(token_file(tmp_path, "two tokens\n"))
    with pytest.raises(InvalidInput, match="one token without spaces"):
        read_token_file(token_file(tmp_path, "\n"))
    with pytest.raises(InvalidInput, match="unreadable"):
        read_token_file(tmp_path / "missing")


def _evm(url: str, tls_ca: Path | None = None) -> LedgerConfig:
    return LedgerConfig(LedgerId("l"), "evm", url, "0x" + "11" * 20, 1, 0, 1.0, tls_ca=tls_ca)


def test_transport_sends_the_token_only_over_https_and_never_shows_it(tmp_path: Path) -> None:
    auth = LedgerAuth(token_file=token_file(tmp_path))
    t = EvmTransport.for_ledger(_evm("https://n:1", tmp_path / "ca.pem"), auth)
    assert t.headers() == {"Authorization": f"Bearer {TOKEN}"}
    assert TOKEN not in repr(t)
    assert EvmTransport.for_ledger(_evm("https://n:1"), None).headers() == {}
    with pytest.raises(InvalidInput, match="token needs an https:// rpc_url"):
        EvmTransport.for_ledger(_evm("http://n:1"), auth)
    with pytest.raises(InvalidInput, match="tls_ca needs an https:// rpc_url"):
        EvmTransport.for_ledger(_evm("http://n:1", tmp_path / "ca.pem"), None)


def test_transport_trusts_only_the_configured_ca_and_verifies_names(tmp_path: Path) -> None:
    ca = DevCA(tmp_path / "ca", "test").ensure()
    ctx = EvmTransport(tls_ca=ca.cert_path).ssl_context()
    assert ctx is not None
    assert ctx.check_hostname and ctx.verify_mode.name == "CERT_REQUIRED"
    subjects = [c["subject"] for c in ctx.get_ca_certs()]
    assert subjects == [((("commonName", "test"),),)]
    assert EvmTransport().ssl_context() is None  # the system trust store


def test_transport_and_devnet_proxy_speak_only_tls13_with_a_node(tmp_path: Path) -> None:
    """A node (or proxy) capped at TLS 1.2 is refused by the transport's context; the devnet
    proxy's server context refuses a TLS 1.2 client. Real handshakes over a socket pair."""
    import socket
    import ssl
    import threading

    from bridge.devnet.evm_proxy import server_ssl_context

    ca = DevCA(tmp_path / "ca", "test").ensure()
    leaf = ca.issue("node", hosts=("localhost",), server=True)

    def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
        a, b = socket.socketpair()
        outcome: list[BaseException | str] = []

        def serve() -> None:
            try:
                with server.wrap_socket(a, server_side=True) as tls:
                    outcome.append(tls.version() or "")
            except (ssl.SSLError, OSError) as exc:
                outcome.append(exc)

        t = threading.Thread(target=serve)
        t.start()
        try:
            with client.wrap_socket(b, server_hostname="localhost") as tls:
                return tls.version() or ""
        finally:
            b.close()
            t.join(5)

    client = EvmTransport(tls_ca=ca.cert_path).ssl_context()
    assert client is not None and client.minimum_version == ssl.TLSVersion.TLSv1_3
    node12 = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    node12.load_cert_chain(str(leaf.cert), str(leaf.key))
    node12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(node12, client)
    proxy = server_ssl_context(leaf.cert, leaf.key)
    assert handshake(proxy, client) == "TLSv1.3"
    client12 = ssl.create_default_context(cafile=str(ca.cert_path))
    client12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(proxy, client12)


# -- the devnet proxy's token check ----------------------------------------------------------


def test_proxy_accepts_only_a_listed_bearer_token(tmp_path: Path) -> None:
    tokens = read_tokens(token_file(tmp_path, f"{TOKEN}\nsecond-token\n"))
    assert authorised(f"Bearer {TOKEN}", tokens)
    assert authorised("Bearer second-token", tokens)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer ", "bearer x"):
        assert not authorised(header, tokens), header
    with pytest.raises(PermissionError):
        read_tokens(token_file(tmp_path, mode=0o644))


# -- Fabric: TLS client certificate and the Deliver binding ---------------------------------


def _identity(tmp_path: Path) -> SigningIdentity:
    ca = DevCA(tmp_path / "msp", "msp").ensure()
    issued = ca.issue("user", client=True)
    return SigningIdentity.from_files("Org1MSP", issued.cert, issued.key)


def test_deliver_request_carries_the_tls_certificate_hash(tmp_path: Path) -> None:
    ca = DevCA(tmp_path / "tls", "tls").ensure()
    issued = ca.issue("client", client=True)
    pem = issued.cert.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    assert tls_cert_hash(pem) == hashlib.sha256(der).digest()
    env = build_seek_envelope("bridge", _identity(tmp_path), 1, 2, cert_hash=tls_cert_hash(pem))
    payload = common_pb2.Payload.FromString(env.payload)
    header = common_pb2.ChannelHeader.FromString(payload.header.channel_header)
    assert header.tls_cert_hash == hashlib.sha256(der).digest()
    unbound = build_seek_envelope("bridge", _identity(tmp_path), 1, 2)
    header = common_pb2.ChannelHeader.FromString(
        common_pb2.Payload.FromString(unbound.payload).header.channel_header
    )
    assert header.tls_cert_hash == b""


def test_gateway_client_refuses_half_a_pair_and_a_loose_key(tmp_path: Path) -> None:
    ident = _identity(tmp_path)
    ca = DevCA(tmp_path / "tls", "tls").ensure()
    issued = ca.issue("client", client=True)
    with pytest.raises(InvalidInput, match="go together"):
        GatewayClient("h:1", ca.cert_path, None, ident, "c", tls_client_cert=issued.cert)
    os.chmod(issued.key, 0o644)
    client = GatewayClient(
        "h:1",
        ca.cert_path,
        None,
        ident,
        "c",
        tls_client_cert=issued.cert,
        tls_client_key=issued.key,
    )
    with pytest.raises(InvalidInput, match="chmod 600"):
        client._stubs()


def test_ledger_mismatch_names_ledger_and_both_values() -> None:
    err = LedgerMismatch("brokerage-a", "chain id", "31001", "1")
    assert str(err) == "ledger brokerage-a: chain id mismatch: configured 31001, node reports 1"
    assert (err.ledger, err.what, err.expected, err.found) == (
        "brokerage-a",
        "chain id",
        "31001",
        "1",
    )


# -- review finding 3: plain http and the system trust store need the development flag -------


@pytest.mark.security
@pytest.mark.parametrize(
    ("url", "ca", "missing"),
    [("http://n:1", False, "an https:// rpc_url"), ("https://n:1", False, "tls_ca")],
)
def test_an_evm_node_without_https_and_its_ca_is_refused_without_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, ca: bool, missing: str
) -> None:
    monkeypatch.delenv(INSECURE_ENV, raising=False)
    cfg = _evm(url, tmp_path / "ca.pem" if ca else None)
    with pytest.raises(NodeConnectionRefused) as err:
        EvmAdapter(cfg)
    assert str(err.value) == (
        f"ledger l: the EVM node connection needs {missing} (https verified by the node's CA,"
        f" never plain http or the system trust store); refused unless {INSECURE_ENV}=1"
    )
    monkeypatch.setenv(INSECURE_ENV, "yes")  # only exactly "1" counts
    with pytest.raises(NodeConnectionRefused):
        EvmAdapter(cfg)


@pytest.mark.security
def test_the_development_flag_allows_plain_http_with_a_loud_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from structlog.testing import capture_logs

    monkeypatch.setenv(INSECURE_ENV, "1")
    with capture_logs() as logs:
        EvmAdapter(_evm("http://n:1"))
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["event"].startswith("INSECURE: EVM node connection without TLS")
    assert warnings[0]["ledger"] == "l" and warnings[0]["flag"] == INSECURE_ENV


@pytest.mark.security
def test_https_with_the_nodes_ca_needs_no_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INSECURE_ENV, raising=False)
    ca = DevCA(tmp_path / "ca", "test").ensure()
    cfg = _evm("https://n:1", ca.cert_path)
    EvmAdapter(cfg, transport=EvmTransport.for_ledger(cfg, None))


@pytest.mark.security
def test_a_token_never_goes_to_a_node_verified_only_by_public_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(INSECURE_ENV, "1")  # not even in development
    auth = LedgerAuth(token_file=token_file(tmp_path))
    with pytest.raises(NodeConnectionRefused, match="a token needs tls_ca"):
        EvmTransport.for_ledger(_evm("https://n:1"), auth)
    with pytest.raises(NodeConnectionRefused, match="never sent to a node not verified"):
        EvmAdapter(_evm("https://n:1"), transport=EvmTransport(token=TOKEN))


# -- review finding 8: a malformed TLS client certificate is a typed, start-up error ---------


def _client_with(tmp_path: Path, cert: Path, key: Path) -> GatewayClient:
    ca = DevCA(tmp_path / "tls", "tls").ensure()
    return GatewayClient(
        "127.0.0.1:1",
        ca.cert_path,
        None,
        _identity(tmp_path),
        "c",
        tls_client_cert=cert,
        tls_client_key=key,
    )


@pytest.mark.security
def test_a_malformed_tls_client_certificate_is_invalid_input_naming_the_file(
    tmp_path: Path,
) -> None:
    issued = DevCA(tmp_path / "tls", "tls").ensure().issue("client", client=True)
    bad = tmp_path / "torn.pem"
    bad.write_bytes(issued.cert.read_bytes()[:200])  # a torn copy
    client = _client_with(tmp_path, bad, issued.key)
    expected = f"TLS client certificate {bad} is not a PEM X.509 certificate"
    with pytest.raises(InvalidInput) as err:
        client._stubs()
    assert str(err.value) == expected
    with pytest.raises(InvalidInput) as err:
        client.check_client_tls()
    assert str(err.value) == expected
    with pytest.raises(InvalidInput, match=r"not a PEM X\.509 certificate"):
        tls_cert_hash(b"not a certificate")


@pytest.mark.security
def test_a_tls_client_key_that_is_malformed_or_of_another_certificate_is_refused(
    tmp_path: Path,
) -> None:
    ca = DevCA(tmp_path / "tls", "tls").ensure()
    issued, other = ca.issue("client", client=True), ca.issue("other", client=True)
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    os.chmod(garbage, 0o600)
    with pytest.raises(InvalidInput) as err:
        _client_with(tmp_path, issued.cert, garbage).check_client_tls()
    assert str(err.value) == f"TLS client key {garbage} is not an unencrypted PEM private key"
    with pytest.raises(InvalidInput) as err:
        _client_with(tmp_path, issued.cert, other.key).check_client_tls()
    assert str(err.value) == f"TLS client key {other.key} is not the key of {issued.cert}"
    # A missing file at start is a configuration fault too, not a connection to retry.
    with pytest.raises(InvalidInput, match="unreadable"):
        _client_with(tmp_path, tmp_path / "missing.pem", issued.key).check_client_tls()
    _client_with(tmp_path, issued.cert, issued.key).check_client_tls()  # a real pair


@pytest.mark.security
async def test_the_start_up_check_refuses_at_once_on_a_malformed_client_certificate(
    tmp_path: Path,
) -> None:
    from bridge.ledgers.fabric.adapter import FabricAdapter
    from bridge.ledgers.startup import check_reached

    issued = DevCA(tmp_path / "tls", "tls").ensure().issue("client", client=True)
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"garbage")
    client = _client_with(tmp_path, bad, issued.key)
    adapter = FabricAdapter(LedgerId("brokerage-f"), client, "kstb")
    config = LedgerConfig(
        LedgerId("brokerage-f"), "fabric", "127.0.0.1:1", "kstb", 0, 0, 1.0,
        channel="c", tls_ca=tmp_path / "tls" / "ca.pem",
    )  # fmt: skip
    try:
        with pytest.raises(
            InvalidInput, match=re.escape(f"TLS client certificate {bad} is not a PEM")
        ):
            # Not retried (reach_within would allow a minute): refused before any call.
            await asyncio.wait_for(check_reached(config, adapter, reach_within=60), 5)
    finally:
        await adapter.close()

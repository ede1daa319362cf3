"""Issue 9 items 1 and 2 on the real devnet: mutual TLS on every port, one rule table,
scope by certificate, an audit log of every decision, certificates rotated under load.

Three anvil ledgers (so a third brokerage exists that is party to none of a transfer),
four verifiers, three relayers and the coordinator, all as processes with the devnet PKI.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bridge.devnet.pki import IssuedCertificate
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.rpc.rules import ANY_AUTHENTICATED, RULES
from bridge.supply_client import SupplyFeed
from bridge.v1 import (
    depository_pb2,
    events_pb2,
    events_pb2_grpc,
    operator_pb2,
    relayer_pb2,
    supply_pb2,
    transfer_pb2,
    transfer_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)
from tests.e2e.conftest import demo_request
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.security]

A, B, C = "brokerage-a", "brokerage-b", "brokerage-c"
S = transfer_pb2
TERMINAL = {S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED}
PROTO_MODULES = (
    depository_pb2,  # ---- depository halt
    events_pb2,
    operator_pb2,
    relayer_pb2,
    supply_pb2,
    transfer_pb2,
    verifier_pb2,
)
CALLERS = (
    "coordinator",
    "bridge-operator",
    "depository",
    "supply-operator",
    f"brokerage:{A}",
    f"relayer:{A}",
    "member-0",
)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    with LocalSystem(
        tmp_path_factory.mktemp("security"),
        ledger_names=((A, 31201), (B, 31202), (C, 31203)),
        block_time=0.5,
        transfer_ttl=60,
        supply_heartbeat=2.0,
    ) as s:
        yield s


def caller_role(system: LocalSystem, caller: str) -> str:
    return system.member_role(0) if caller == "member-0" else caller


def peer_of(system: LocalSystem, method: str) -> str:
    """The role of the server that serves ``method``."""
    service = method.split("/")[1].rsplit(".", 1)[1]
    if service == "RelayerService":
        return f"relayer:{A}"
    if service == "VerifierService":
        return system.member_role(0)
    return "coordinator"


def roots_for(system: LocalSystem, peer: str) -> bytes:
    return b"".join(p.read_bytes() for p in system.identity("depository", peer).roots)


def raw_channel(system: LocalSystem, peer: str, cert: IssuedCertificate | None) -> grpc.Channel:
    """A channel to ``peer`` presenting ``cert`` (or no certificate at all)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=roots_for(system, peer),
        private_key=cert.key_file.read_bytes() if cert else None,
        certificate_chain=cert.cert_file.read_bytes() if cert else None,
    )
    from bridge.rpc.roles import parse_role

    return grpc.secure_channel(
        system.target_of(peer),
        creds,
        options=[("grpc.ssl_target_name_override", parse_role(peer).server_name)],
    )


def health_check(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def refusal(call: Any, *args: Any, **kw: Any) -> grpc.RpcError:
    """The error ``call(*args, **kw)`` raises (a streaming call is drained); fails if none."""
    try:
        result = call(*args, **kw)
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            list(result)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{call} was not refused")


def audit(system: LocalSystem, component: str) -> list[dict[str, Any]]:
    path = system.workdir / "audit" / f"{component}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def all_transfers(system: LocalSystem, caller: str = "depository") -> list[S.Transfer]:
    return system.list_transfers(caller, timeout=10)


def request(sender: str, amount: int, src: str, dst: str) -> S.SubmitTransferRequest:
    return demo_request(sender, sender, str(amount), src, dst)


def wait_terminal(system: LocalSystem, tids: list[str], limit: float = 120) -> dict[str, int]:
    with system.channel("depository") as ch:
        stub = transfer_pb2_grpc.TransferServiceStub(ch)

        def probe() -> dict[str, int] | None:
            got = {t: stub.GetTransfer(S.GetTransferRequest(transfer_id=t), timeout=10).state
                   for t in tids}  # fmt: skip
            return got if all(v in TERMINAL for v in got.values()) else None

        return eventually_sync(probe, limit, "transfers terminal", interval=0.3)


# -- authentication at the handshake -------------------------------------------------------------


@pytest.mark.parametrize("peer", ["coordinator", f"relayer:{A}", "member-0"])
def test_no_unknown_or_expired_certificate_gets_through_the_handshake(
    system: LocalSystem, peer: str
) -> None:
    peer = caller_role(system, peer)
    pki = system.pki
    assert pki is not None
    refused = {
        "no certificate": None,
        "unknown CA": pki.issue_unknown_ca(A, f"brokerage:{A}", "stranger"),
        "expired": pki.issue_expired(A, f"brokerage:{A}", "expired"),
    }
    for why, cert in refused.items():
        with raw_channel(system, peer, cert) as ch:
            assert health_check(ch) == grpc.StatusCode.UNAVAILABLE, why
    # The same channel set-up with a valid certificate passes: the refusals are the
    # certificates', not the test's.
    with raw_channel(system, peer, system.certificate(f"brokerage:{A}")) as ch:
        assert health_check(ch) == grpc.StatusCode.OK


def test_a_client_reaches_only_the_role_it_meant(system: LocalSystem) -> None:
    """A channel meant for the coordinator refuses a relayer's (valid) certificate, and a
    channel meant for relayer A refuses relayer B's: the server is checked by role."""
    from bridge.rpc.channels import sync_channel

    mismatched = [
        (system.target_of(f"relayer:{A}"), "coordinator"),
        (system.target_of(f"relayer:{B}"), f"relayer:{A}"),
        (system.coordinator_target, system.member_role(0)),
    ]
    for target, meant in mismatched:
        with sync_channel(target, system.identity("coordinator", meant)) as ch:
            assert health_check(ch) == grpc.StatusCode.UNAVAILABLE, (target, meant)
    with sync_channel(system.coordinator_target, system.identity("depository")) as ch:
        assert health_check(ch) == grpc.StatusCode.OK


def test_a_revoked_certificate_is_unauthenticated(system: LocalSystem) -> None:
    pki = system.pki
    assert pki is not None
    cert = pki.issue_extra(C, f"brokerage:{C}", "soon-revoked")
    with raw_channel(system, "coordinator", cert) as ch:
        stub = transfer_pb2_grpc.TransferServiceStub(ch)
        stub.ListTransfers(S.ListTransfersRequest(), timeout=10)  # valid until revoked
        pki.revoke(cert)
        with pytest.raises(grpc.RpcError) as exc:
            stub.ListTransfers(S.ListTransfersRequest(), timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"certificate {cert.fingerprint[:16]}... of {C} is revoked" in str(exc.value.details())
    denied = [r for r in audit(system, "coordinator") if r["fingerprint"] == cert.fingerprint
              and "is revoked" in r["reason"] and not r["allowed"]]  # fmt: skip
    assert denied and denied[0]["cn"] == "soon-revoked", "the refusal is audited"


def test_tls_version_negotiated(system: LocalSystem) -> None:
    """Our servers negotiate TLS 1.3 with a current client (and present the right certificate)."""
    cert = system.certificate("depository")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=roots_for(system, "coordinator").decode())
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    ctx.set_alpn_protocols(["h2"])
    host, port = system.coordinator_target.split(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="coordinator.kstb-role") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert tls.version() == "TLSv1.3"
        assert hashlib.sha256(der).hexdigest() == system.certificate("coordinator").fingerprint


def _grpc_over_curl(system: LocalSystem, tls_max: str, tmp_path: Path) -> dict[str, str]:
    """One real gRPC call (empty ListTransfersRequest) made by curl with TLS capped at
    ``tls_max``, presenting the depository's valid certificate; the response's headers and
    trailers, lower-cased."""
    cert = system.certificate("depository")
    roots = tmp_path / "roots.pem"
    roots.write_bytes(roots_for(system, "coordinator"))
    frame = tmp_path / "frame.bin"
    frame.write_bytes(b"\x00\x00\x00\x00\x00")  # uncompressed, empty message
    host, port = system.coordinator_target.split(":")
    name = "coordinator.kstb-role"
    run = subprocess.run(
        ["curl", "--silent", "--show-error", "--http2", "--tlsv1.2", "--tls-max", tls_max,
         "--cacert", str(roots), "--cert", str(cert.cert_file), "--key", str(cert.key_file),
         "--resolve", f"{name}:{port}:{host}", "--max-time", "10",
         "-H", "content-type: application/grpc", "-H", "te: trailers",
         "--data-binary", f"@{frame}", "--dump-header", "-", "--output", "/dev/null",
         f"https://{name}:{port}/bridge.v1.TransferService/ListTransfers"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    fields: dict[str, str] = {}
    for line in run.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip().lower()] = urllib.parse.unquote(value.strip())
    return fields


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_tls12_caller_with_a_valid_certificate_is_refused_and_audited(
    system: LocalSystem, tmp_path: Path
) -> None:
    """gRPC Python has no minimum-version setting, so a TLS 1.2 handshake completes; every call
    on it is refused UNAUTHENTICATED before any handler runs, and the refusal is audited.
    The same call at TLS 1.3 passes authentication (the control)."""
    before = len(audit(system, "coordinator"))
    refused = _grpc_over_curl(system, "1.2", tmp_path)
    assert refused.get("grpc-status") == str(grpc.StatusCode.UNAUTHENTICATED.value[0]), refused
    assert refused.get("grpc-message") == "the connection negotiated TLSv1.2; TLS 1.3 is required"
    records = audit(system, "coordinator")[before:]
    denied = [r for r in records if not r["allowed"] and "TLSv1.2" in r["reason"]]
    assert denied and denied[0]["method"].endswith("/ListTransfers"), records
    assert denied[0]["org"] == system.certificate("depository").org, denied[0]

    allowed = _grpc_over_curl(system, "1.3", tmp_path)
    assert allowed.get("grpc-status") == "0", allowed


# -- every role outside its scope ---------------------------------------------------------------------


def _out_of_role() -> list[tuple[str, str]]:
    cases = []
    for module in PROTO_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                method = f"/{service.full_name}/{m.name}"
                rule = RULES[method]
                for caller in CALLERS:
                    kind = caller.split(":")[0].replace("member-0", "member")
                    if kind not in rule.roles and ANY_AUTHENTICATED not in rule.roles:
                        cases.append((method, caller))
    return cases


@pytest.fixture(scope="module")
def channels(system: LocalSystem) -> Iterator[dict[tuple[str, str], grpc.Channel]]:
    opened: dict[tuple[str, str], grpc.Channel] = {}
    yield opened
    for ch in opened.values():
        ch.close()


def _streaming(method: str) -> bool:
    service_name, name = method.strip("/").split("/")
    for module in PROTO_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name == service_name:
                return bool(service.methods_by_name[name].server_streaming)
    raise KeyError(method)


@pytest.mark.parametrize(("method", "caller"), _out_of_role())
def test_every_role_outside_its_rule_is_denied(
    system: LocalSystem,
    channels: dict[tuple[str, str], grpc.Channel],
    method: str,
    caller: str,
) -> None:
    role = caller_role(system, caller)
    peer = peer_of(system, method)
    if (role, peer) not in channels:
        channels[(role, peer)] = system.channel(role, peer=peer)
    ch = channels[(role, peer)]
    raw: Any = bytes  # requests and responses as raw bytes (an empty message)
    make = ch.unary_stream if _streaming(method) else ch.unary_unary
    err = refusal(make(method, raw, raw), b"", timeout=10)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.details() == f"role {role} may not call {method}"


# -- scope inside a role ----------------------------------------------------------------------------------


def test_a_brokerage_cannot_submit_from_another_ledger(system: LocalSystem) -> None:
    b = system.ledgers[B]
    victim = b.make_holder(DEMO_ISIN, 40)
    system.ledgers[A].set_eligible(DEMO_ISIN, victim.address)
    before = len(all_transfers(system))
    req = request(victim.address, 40, src=B, dst=A)
    with system.channel(f"brokerage:{A}") as ch, pytest.raises(grpc.RpcError) as exc:
        transfer_pb2_grpc.TransferServiceStub(ch).SubmitTransfer(req, timeout=10)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert exc.value.details() == (
        f"brokerage:{A} may submit only transfers whose source ledger is {A}, not '{B}'"
    )
    assert len(all_transfers(system)) == before, "nothing recorded"
    assert req.idempotency_key not in {t.idempotency_key for t in all_transfers(system)}
    assert b.balance(DEMO_ISIN, victim.address) == 40
    assert b.escrowed(DEMO_ISIN) == 0
    denied = [r for r in audit(system, "coordinator")
              if r["method"].endswith("/SubmitTransfer") and not r["allowed"]]  # fmt: skip
    assert any(
        r["org"] == A and r["role"] == f"brokerage:{A}" and r["cn"] == f"brokerage-{A}"
        and r["fingerprint"] == system.certificate(f"brokerage:{A}").fingerprint
        and r["reason"].startswith(f"brokerage:{A} may submit only")
        and r["peer"].startswith("ipv4:127.0.0.1:")
        for r in denied
    )  # fmt: skip


def test_a_relayer_cannot_deliver_another_ledgers_events(system: LocalSystem) -> None:
    forged = events_pb2.LedgerEvent(
        height=1, block_hash=b"\x11" * 32, tx_id="0xforged", index=0,
        transfer_id=b"\x42" * 32, leg=1, state=1, terms_hash=b"\x43" * 32,
    )  # fmt: skip
    with system.channel(f"relayer:{A}") as ch, pytest.raises(grpc.RpcError) as exc:
        events_pb2_grpc.LedgerEventSinkStub(ch).DeliverEvents(
            events_pb2.DeliverEventsRequest(ledger_id=B, events=[forged], scanned_height=10**9),
            timeout=10,
        )
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert exc.value.details() == f"relayer:{A} may deliver events of ledger {A} only, not '{B}'"
    rows = system.query_coordinator(
        "SELECT COUNT(*) FROM ledger_events WHERE transfer_id = ?", (b"\x42" * 32,)
    )[0][0]
    progress = system.query_coordinator("SELECT * FROM ledger_progress WHERE ledger = ?", (B,))
    assert rows == 0, "the forged event was not recorded"
    assert all(10**9 not in row for row in progress), "the scanned height was not recorded"


def test_brokerages_see_only_their_own_transfers(system: LocalSystem) -> None:
    a = system.ledgers[A]
    holder = a.make_holder(DEMO_ISIN, 10)
    for other in (B, C):
        system.ledgers[other].set_eligible(DEMO_ISIN, holder.address)
    to_c = system.submit(request(holder.address, 2, src=A, dst=C))
    to_b = system.submit(request(holder.address, 3, src=A, dst=B))
    wait_terminal(system, [to_c, to_b])

    # brokerage-c is party to to_c only; brokerage-b to to_b only.
    for caller, mine, theirs in ((f"brokerage:{C}", to_c, to_b), (f"brokerage:{B}", to_b, to_c)):
        ledger = caller.split(":")[1]
        listed = all_transfers(system, caller)
        assert all(ledger in (t.source_ledger, t.target_ledger) for t in listed)
        ids = {t.transfer_id for t in listed}
        assert mine in ids and theirs not in ids
        # Review helper-140 #5: the target's brokerage reads no source order reference.
        assert all(t.idempotency_key == "" for t in listed if t.source_ledger != ledger)
        with system.channel(caller) as ch:
            stub = transfer_pb2_grpc.TransferServiceStub(ch)
            got = stub.GetTransfer(S.GetTransferRequest(transfer_id=mine), timeout=10)
            assert got.amount and got.target_ledger == ledger and got.idempotency_key == ""
            get = S.GetTransferRequest(transfer_id=theirs)
            watch = S.WatchTransferRequest(transfer_id=theirs)
            for err in (
                refusal(stub.GetTransfer, get, timeout=10),
                refusal(stub.WatchTransfer, watch, timeout=10),
            ):
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED
                assert err.details() == f"transfer {theirs} is not a transfer of {caller}"
            # Pages are filtered in the query: page size 1 never yields an empty page.
            token, seen = "", []
            while True:
                page = stub.ListTransfers(
                    S.ListTransfersRequest(page_size=1, page_token=token), timeout=10
                )
                assert len(page.transfers) == 1
                seen.append(page.transfers[0].transfer_id)
                token = page.next_page_token
                if not token:
                    break
            assert set(seen) == ids
    everything = {t.transfer_id: t for t in all_transfers(system, "depository")}
    assert {to_b, to_c} <= everything.keys(), "the depository reads every transfer"
    assert everything[to_b].idempotency_key, "and reads it whole"
    own = {t.transfer_id: t for t in all_transfers(system, f"brokerage:{A}")}
    assert own[to_b].idempotency_key == everything[to_b].idempotency_key, "as its source does"


def test_committee_signs_only_for_the_coordinator_and_the_feed_goes_on(
    system: LocalSystem,
) -> None:
    record = supply_pb2.SupplyRecord(security_id=DEMO_ISIN, sequence=10**9,
                                     previous_hash=b"\x99" * 32)  # fmt: skip
    for caller in ("depository", "supply-operator", f"brokerage:{A}", f"relayer:{A}"):
        with system.channel(caller, peer=system.member_role(0)) as ch:
            stub = verifier_pb2_grpc.VerifierServiceStub(ch)
            for err in (
                refusal(stub.SignSupply, verifier_pb2.SignSupplyRequest(record=record), timeout=10),
                refusal(stub.SignClaim, verifier_pb2.SignClaimRequest(), timeout=10),
            ):
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "may not call /bridge.v1.VerifierService/Sign" in str(err.details())
    denials = [r for r in audit(system, "verifier-0") if not r["allowed"]]
    assert {r["method"].rsplit("/", 1)[1] for r in denials} >= {"SignSupply", "SignClaim"}

    # The members still sign the coordinator's next real record.
    def latest_sequence() -> int:
        import asyncio

        async def get() -> int:
            feed = SupplyFeed(system.coordinator_target, identity=system.identity("depository"))
            try:
                return (await feed.latest(DEMO_ISIN))[0].signed.record.sequence
            finally:
                await feed.close()

        return asyncio.run(get())

    first = latest_sequence()
    holder = system.ledgers[A].make_holder(DEMO_ISIN, 1)  # a change the feed must attest
    assert holder
    eventually_sync(lambda: latest_sequence() > first, 60, "a newer signed supply record")


# -- certificates replaced on disk while transfers run ------------------------------------------------------


def _served_fingerprint(system: LocalSystem, peer: str) -> str:
    cert = system.certificate("depository")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=roots_for(system, peer).decode())
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    ctx.set_alpn_protocols(["h2"])
    host, port = system.target_of(peer).split(":")
    from bridge.rpc.roles import parse_role

    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=parse_role(peer).server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()


def test_certificates_rotated_under_load_fail_no_transfer(system: LocalSystem) -> None:
    pki = system.pki
    assert pki is not None
    a, b = system.ledgers[A], system.ledgers[B]
    holders = [a.make_holder(DEMO_ISIN, 20) for _ in range(4)]
    for h in holders:
        b.set_eligible(DEMO_ISIN, h.address)
    supply = sum(system.ledgers[n].total_supply(DEMO_ISIN) for n in (A, B, C))
    tids: list[str] = []
    lock = threading.Lock()

    def submit(h: Any) -> None:
        tid = system.submit(request(h.address, 5, src=A, dst=B))
        with lock:
            tids.append(tid)

    threads = [threading.Thread(target=submit, args=(h,)) for h in holders[:2]]
    for t in threads:
        t.start()
    new_coordinator = pki.rotate("coordinator")
    new_relayer = pki.rotate(f"relayer:{A}")
    threads += [threading.Thread(target=submit, args=(h,)) for h in holders[2:]]
    for t in threads[2:]:
        t.start()
    for t in threads:
        t.join(60)
    assert len(tids) == 4
    states = wait_terminal(system, tids)
    assert set(states.values()) == {S.TRANSFER_STATE_COMMITTED}, "no transfer failed"
    for h in holders:
        assert (a.balance(DEMO_ISIN, h.address), b.balance(DEMO_ISIN, h.address)) == (15, 5)
    assert sum(system.ledgers[n].total_supply(DEMO_ISIN) for n in (A, B, C)) == supply

    # Servers now present the new certificates; clients now present theirs.
    assert _served_fingerprint(system, "coordinator") == new_coordinator.fingerprint
    assert _served_fingerprint(system, f"relayer:{A}") == new_relayer.fingerprint

    def relayer_presents_new() -> bool:
        return any(r["fingerprint"] == new_relayer.fingerprint and r["allowed"]
                   for r in audit(system, "coordinator"))  # fmt: skip

    def coordinator_presents_new() -> bool:
        return any(r["fingerprint"] == new_coordinator.fingerprint and r["allowed"]
                   for r in audit(system, f"relayer-{A}"))  # fmt: skip

    eventually_sync(relayer_presents_new, 30, "the relayer's calls with its new certificate")
    eventually_sync(coordinator_presents_new, 30, "the coordinator's calls with its new cert")
    system.wait_processes_alive()


def test_audit_logs_are_append_only_json_with_every_field(system: LocalSystem) -> None:
    for component in ("coordinator", f"relayer-{A}", "verifier-0"):
        records = audit(system, component)
        assert records
        for r in records:
            assert set(r) == {"at", "org", "role", "cn", "fingerprint", "peer", "method",
                              "transfer_id", "allowed", "reason"}  # fmt: skip
        assert any(not r["allowed"] for r in records), "denials are recorded too"
    path: Path = system.workdir / "audit" / "coordinator.jsonl"
    assert path.stat().st_mode & 0o777 == 0o600

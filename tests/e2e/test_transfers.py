"""End to end: brokerages move units through the gRPC API; the system runs as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bridge.core.reasons import ErrorReason
from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.keys.loader import PLAINTEXT_KEYS_ENV
from bridge.ledgers.evm import deploy
from bridge.rpc.errors import received_error
from bridge.v1 import transfer_pb2, transfer_pb2_grpc
from tests.e2e.conftest import demo_terms, eligible_everywhere
from tests.support import eventually_sync

pytestmark = pytest.mark.e2e

A, B = "brokerage-a", "brokerage-b"
S = transfer_pb2
TERMINAL = {S.TRANSFER_STATE_COMMITTED, S.TRANSFER_STATE_ABORTED, S.TRANSFER_STATE_FAILED}


def request(
    sender: str, recipient: str, amount: int | str, src: str = A, dst: str = B, **kw: str
) -> S.SubmitTransferRequest:
    fields = {
        "idempotency_key": str(uuid.uuid4()),
        "security_id": DEMO_ISIN,
        "source_ledger": src,
        "target_ledger": dst,
        "sender": sender,
        "recipient": recipient,
        "amount": str(amount),
    }
    fields.update(kw)
    return S.SubmitTransferRequest(**fields)


def watch_states(stub: transfer_pb2_grpc.TransferServiceStub, tid: str) -> list[int]:
    """Every state from the first until terminal (bounded by a deadline)."""
    return [
        u.state for u in stub.WatchTransfer(S.WatchTransferRequest(transfer_id=tid), timeout=90)
    ]


def total_supply(system: LocalSystem) -> int:
    return sum(h.total_supply(DEMO_ISIN) for h in system.ledgers.values())


def count_transfers(stub: transfer_pb2_grpc.TransferServiceStub) -> int:
    n, token = 0, ""
    while True:
        page = stub.ListTransfers(
            S.ListTransfersRequest(page_size=500, page_token=token), timeout=10
        )
        n += len(page.transfers)
        token = page.next_page_token
        if not token:
            return n


@pytest.fixture
def holder(system: LocalSystem) -> DevAccount:
    """A holder with 100 units on A, eligible on both ledgers."""
    h = system.ledgers[A].make_holder(DEMO_ISIN, 100)
    eligible_everywhere(system, h.address)
    return h


def test_committed_transfer_in_each_direction(
    system: LocalSystem, stub, holder: DevAccount
) -> None:
    a, b = system.ledgers[A], system.ledgers[B]
    supply = total_supply(system)
    resp = stub.SubmitTransfer(request(holder.address, holder.address, 60), timeout=30)
    assert resp.created
    assert resp.transfer.state == S.TRANSFER_STATE_SUBMITTED
    states = watch_states(stub, resp.transfer.transfer_id)
    assert states == [
        S.TRANSFER_STATE_SUBMITTED,
        S.TRANSFER_STATE_SOURCE_LOCKED,
        S.TRANSFER_STATE_TARGET_PREPARED,
        S.TRANSFER_STATE_COMMITTING,
        S.TRANSFER_STATE_COMMITTED,
    ]
    assert (a.balance(DEMO_ISIN, holder.address), b.balance(DEMO_ISIN, holder.address)) == (40, 60)
    back = stub.SubmitTransfer(
        request(holder.address, holder.address, 25, src=B, dst=A), timeout=30
    )
    assert watch_states(stub, back.transfer.transfer_id)[-1] == S.TRANSFER_STATE_COMMITTED
    assert (a.balance(DEMO_ISIN, holder.address), b.balance(DEMO_ISIN, holder.address)) == (65, 35)
    assert total_supply(system) == supply, "no unit created or destroyed"
    assert a.escrowed(DEMO_ISIN) == b.escrowed(DEMO_ISIN) == 0
    got = stub.GetTransfer(S.GetTransferRequest(transfer_id=resp.transfer.transfer_id), timeout=10)
    assert set(got.transactions) == {"lock", "prepare", "burn", "mint"}


def test_ineligible_recipient_aborts_and_releases_to_sender(
    system: LocalSystem, stub, holder: DevAccount
) -> None:
    a, b = system.ledgers[A], system.ledgers[B]
    outsider = DevAccount.generate()  # never made eligible on B
    supply = total_supply(system)
    resp = stub.SubmitTransfer(request(holder.address, outsider.address, 30), timeout=30)
    states = watch_states(stub, resp.transfer.transfer_id)
    assert S.TRANSFER_STATE_SOURCE_LOCKED in states
    assert states[-1] == S.TRANSFER_STATE_ABORTED
    assert S.TRANSFER_STATE_COMMITTING not in states
    t = stub.GetTransfer(S.GetTransferRequest(transfer_id=resp.transfer.transfer_id), timeout=10)
    assert "not eligible" in t.reason
    assert set(t.transactions) >= {"lock", "prepare", "release", "abort"}
    assert a.balance(DEMO_ISIN, holder.address) == 100, "every unit back with the sender"
    assert b.balance(DEMO_ISIN, outsider.address) == 0
    assert total_supply(system) == supply
    assert a.escrowed(DEMO_ISIN) == 0


def test_one_idempotency_key_makes_one_transfer(
    system: LocalSystem, stub, holder: DevAccount
) -> None:
    req = request(holder.address, holder.address, 10)
    first = stub.SubmitTransfer(req, timeout=30)
    second = stub.SubmitTransfer(req, timeout=30)
    assert first.created
    assert not second.created
    assert second.transfer.transfer_id == first.transfer.transfer_id
    assert watch_states(stub, first.transfer.transfer_id)[-1] == S.TRANSFER_STATE_COMMITTED
    third = stub.SubmitTransfer(req, timeout=30)  # after completion: still the same transfer
    assert third.transfer.transfer_id == first.transfer.transfer_id
    assert system.ledgers[B].balance(DEMO_ISIN, holder.address) == 10, "moved once"
    other = S.SubmitTransferRequest()
    other.CopyFrom(req)
    other.amount = "11"
    with pytest.raises(grpc.RpcError) as exc:
        stub.SubmitTransfer(other, timeout=30)
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "idempotency_key" in exc.value.details()


GOOD = "0x" + "11" * 20


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"security_id": "KR7005930003"}, grpc.StatusCode.NOT_FOUND, "not registered"),
        ({"security_id": "KR7005930004"}, grpc.StatusCode.INVALID_ARGUMENT, "not a valid ISIN"),
        ({"security_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "security_id is required"),
        ({"amount": "0"}, grpc.StatusCode.INVALID_ARGUMENT, "at least 1"),
        ({"amount": "-5"}, grpc.StatusCode.INVALID_ARGUMENT, "negative"),
        ({"amount": str(2**256)}, grpc.StatusCode.INVALID_ARGUMENT, "exceeds 2^256-1"),
        ({"amount": "1.5"}, grpc.StatusCode.INVALID_ARGUMENT, "not a decimal integer"),
        ({"amount": ""}, grpc.StatusCode.INVALID_ARGUMENT, "not a decimal integer"),
        ({"sender": "0x1234"}, grpc.StatusCode.INVALID_ARGUMENT, "sender"),
        ({"recipient": "alice"}, grpc.StatusCode.INVALID_ARGUMENT, "recipient"),
        ({"recipient": "0x" + "00" * 20}, grpc.StatusCode.INVALID_ARGUMENT, "zero address"),
        (
            {"recipient": "0x" + "aB" * 20},
            grpc.StatusCode.INVALID_ARGUMENT,
            "checksum",
        ),
        ({"target_ledger": A}, grpc.StatusCode.INVALID_ARGUMENT, "must differ"),
        ({"target_ledger": "brokerage-z"}, grpc.StatusCode.NOT_FOUND, "not a connected ledger"),
        # A brokerage may submit only from its own ledger: refused before validation.
        ({"source_ledger": ""}, grpc.StatusCode.PERMISSION_DENIED, "may submit only transfers"),
        ({"idempotency_key": ""}, grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key"),
        ({"idempotency_key": "k" * 129}, grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key"),
    ],
)
def test_bad_input_is_refused_precisely_and_records_nothing(
    system: LocalSystem, stub, fields: dict[str, str], code: grpc.StatusCode, message: str
) -> None:
    before = count_transfers(stub)
    req = request(GOOD, GOOD, 1)
    for k, v in fields.items():
        setattr(req, k, v)
    with pytest.raises(grpc.RpcError) as exc:
        stub.SubmitTransfer(req, timeout=10)
    assert exc.value.code() == code
    assert message in exc.value.details()
    assert count_transfers(stub) == before


def test_ledger_prechecks_refuse_before_anything_is_recorded(
    system: LocalSystem, stub, holder: DevAccount
) -> None:
    a = system.ledgers[A]
    token = a.tokens[DEMO_ISIN]
    before = count_transfers(stub)
    with pytest.raises(grpc.RpcError) as exc:
        stub.SubmitTransfer(request(holder.address, holder.address, 101), timeout=10)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "insufficient balance" in exc.value.details()
    # The brokerage gets the machine-readable reason and figures ledger too (ADR 0015).
    got = received_error(exc.value.trailing_metadata())  # type: ignore[attr-defined]
    assert (got.reason, got.ledger, got.retryable) == (
        ErrorReason.INSUFFICIENT_BALANCE,
        A,
        False,
    )
    deploy.set_frozen(a.w3, a.admin.private_key, token, holder.address, True)
    try:
        with pytest.raises(grpc.RpcError) as exc:
            stub.SubmitTransfer(request(holder.address, holder.address, 1), timeout=10)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "frozen" in exc.value.details()
        frozen = received_error(exc.value.trailing_metadata())  # type: ignore[attr-defined]
        assert frozen.reason is ErrorReason.HOLDER_FROZEN
    finally:
        deploy.set_frozen(a.w3, a.admin.private_key, token, holder.address, False)
    b = system.ledgers[B]
    deploy.set_paused(b.w3, b.admin.private_key, b.tokens[DEMO_ISIN], True)
    try:
        with pytest.raises(grpc.RpcError) as exc:
            stub.SubmitTransfer(request(holder.address, holder.address, 1), timeout=10)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "paused on brokerage-b" in exc.value.details()
        paused = received_error(exc.value.trailing_metadata())  # type: ignore[attr-defined]
        assert (paused.reason, paused.ledger) == (ErrorReason.TOKEN_PAUSED, B)
    finally:
        deploy.set_paused(b.w3, b.admin.private_key, b.tokens[DEMO_ISIN], False)
    assert count_transfers(stub) == before
    assert a.balance(DEMO_ISIN, holder.address) == 100


def test_unknown_and_malformed_transfer_ids(stub) -> None:
    missing = "0x" + "ab" * 32
    for call in (
        lambda: stub.GetTransfer(S.GetTransferRequest(transfer_id=missing), timeout=10),
        lambda: list(stub.WatchTransfer(S.WatchTransferRequest(transfer_id=missing), timeout=10)),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetTransfer(S.GetTransferRequest(transfer_id="0x12"), timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        stub.ListTransfers(S.ListTransfersRequest(page_size=501), timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        stub.ListTransfers(S.ListTransfersRequest(state=99), timeout=10)  # type: ignore[arg-type]
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "state filter" in exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        stub.ListTransfers(S.ListTransfersRequest(page_token="not-a-token"), timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_every_server_has_health_and_reflection(system: LocalSystem) -> None:
    expected = {
        "coordinator": "bridge.v1.TransferService",
        f"relayer-{A}": "bridge.v1.RelayerService",
        "verifier-0": "bridge.v1.VerifierService",
    }
    peers = {
        "coordinator": "coordinator",
        f"relayer-{A}": f"relayer:{A}",
        "verifier-0": system.member_role(0),
    }
    for name, service in expected.items():
        with system.channel("depository", peer=peers[name]) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)
            replies = refl.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
            names = {s.name for r in replies for s in r.list_services_response.service}
            assert service in names
            assert "grpc.health.v1.Health" in names


def test_coordinator_killed_mid_transfer_finishes_after_restart(
    system: LocalSystem, stub, holder: DevAccount
) -> None:
    b = system.ledgers[B]
    resp = stub.SubmitTransfer(request(holder.address, holder.address, 7), timeout=30)
    tid = resp.transfer.transfer_id
    system.processes["coordinator"].kill9()
    system.start_process("coordinator")
    with system.channel("depository") as ch:
        fresh = transfer_pb2_grpc.TransferServiceStub(ch)
        assert watch_states(fresh, tid)[-1] == S.TRANSFER_STATE_COMMITTED
    assert b.balance(DEMO_ISIN, holder.address) == 7, "minted exactly once"
    assert system.ledgers[A].balance(DEMO_ISIN, holder.address) == 93


def test_target_relayer_down_transfer_says_why_then_completes(
    system: LocalSystem, stub, holder: DevAccount
) -> None:
    relayer = f"relayer-{B}"
    resp = stub.SubmitTransfer(request(holder.address, holder.address, 5), timeout=30)
    system.processes[relayer].kill9()  # before the target can prepare (that needs a lock first)
    tid = resp.transfer.transfer_id

    def waiting_reason() -> str | None:
        t = stub.GetTransfer(S.GetTransferRequest(transfer_id=tid), timeout=10)
        return t.reason if "unreachable" in t.reason else None

    reason = eventually_sync(waiting_reason, 30, "GetTransfer to say why it waits")
    assert B in reason
    assert "since" in reason
    system.start_process(relayer)
    assert watch_states(stub, tid)[-1] == S.TRANSFER_STATE_COMMITTED
    assert system.ledgers[B].balance(DEMO_ISIN, holder.address) == 5


def test_submit_with_a_relayer_down_is_unavailable_and_records_nothing(
    system: LocalSystem, stub, holder: DevAccount
) -> None:
    relayer = f"relayer-{B}"
    before = count_transfers(stub)
    system.processes[relayer].kill9()
    try:
        with pytest.raises(grpc.RpcError) as exc:
            stub.SubmitTransfer(request(holder.address, holder.address, 5), timeout=30)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        # The ledger named, not its relayer's own text (review helper-106 L2).
        assert exc.value.details() == f"{B} could not be read now; retry"
    finally:
        system.start_process(relayer)
    assert count_transfers(stub) == before


def test_one_verifier_down_still_commits(system: LocalSystem, stub, holder: DevAccount) -> None:
    """n - t = 1 member may be absent (n=4, t=3)."""
    system.processes["verifier-0"].kill9()
    try:
        resp = stub.SubmitTransfer(request(holder.address, holder.address, 4), timeout=30)
        assert watch_states(stub, resp.transfer.transfer_id)[-1] == S.TRANSFER_STATE_COMMITTED
    finally:
        system.start_process("verifier-0")
    assert system.ledgers[B].balance(DEMO_ISIN, holder.address) == 4


def test_holder_locking_directly_on_chain_is_carried_through(system: LocalSystem, stub) -> None:
    a, b = system.ledgers[A], system.ledgers[B]
    h = a.make_holder(DEMO_ISIN, 9)
    eligible_everywhere(system, h.address)
    a.node.fund(h.address)
    t = demo_terms(system, h.address, h.address, 9)  # holder-direct: the holder instructs itself
    deploy.send_tx(a.w3, h.private_key, a.endpoint.functions.lock(t.as_abi_tuple(), b""))
    tid = "0x" + t.transfer_id.hex()

    def committed() -> bool:
        try:
            got = stub.GetTransfer(S.GetTransferRequest(transfer_id=tid), timeout=10)
        except grpc.RpcError:
            return False
        return got.state == S.TRANSFER_STATE_COMMITTED

    eventually_sync(committed, 60, "the on-chain lock to be adopted and committed")
    assert b.balance(DEMO_ISIN, h.address) == 9


def test_cli_submit_get_list(system: LocalSystem, holder: DevAccount) -> None:
    cli = [
        sys.executable,
        "-m",
        "bridge.cli.main",
        "--coordinator",
        system.coordinator_target,
        "--tls-cert",
        str(system.certificate(f"brokerage:{A}").cert_file),
        "--tls-key",
        str(system.certificate(f"brokerage:{A}").key_file),
        "--tls-ca",
        str(system.workdir / "pki" / "bridge-operator" / "ca.pem"),
        "--network",
        str(system.workdir / "network.toml"),
        "--json",
    ]
    dev_keys = {**os.environ, PLAINTEXT_KEYS_ENV: "1"}  # the devnet brokerage's key file
    dev_keys["XDG_STATE_HOME"] = str(system.workdir / "cli-state")  # submit's journals
    signed = ["--instruction-key", str(system.workdir / "keys" / f"instruction-{A}.key"),
              "--network", str(system.workdir / "network.toml")]  # fmt: skip
    out = subprocess.run(
        [*cli, "transfer", "submit", "--security", DEMO_ISIN, "--from", A, "--to", B,
         "--sender", holder.address, "--recipient", holder.address, "--amount", "3", *signed],
        capture_output=True, text=True, timeout=60, check=True, env=dev_keys,
    )  # fmt: skip
    # The last line is the result (a development-flag key warning may precede it).
    tid = json.loads(out.stdout.strip().splitlines()[-1])["transfer_id"]
    watch = subprocess.run(
        [*cli, "transfer", "watch", tid], capture_output=True, text=True, timeout=120, check=True
    )
    assert "TRANSFER_STATE_COMMITTED" in watch.stdout
    got = subprocess.run(
        [*cli, "transfer", "get", tid], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(got.stdout)["state"] == "TRANSFER_STATE_COMMITTED"
    bad = subprocess.run(
        [*cli, "transfer", "submit", "--security", DEMO_ISIN, "--from", A, "--to", A,
         "--sender", holder.address, "--recipient", holder.address, "--amount", "3", *signed],
        capture_output=True, text=True, timeout=60, check=False, env=dev_keys,
    )  # fmt: skip
    assert bad.returncode == 2, "refused before anything is signed or sent"
    assert "must differ" in bad.stderr
    unsigned = subprocess.run(
        [*cli, "transfer", "submit", "--security", DEMO_ISIN, "--from", A, "--to", B,
         "--sender", holder.address, "--recipient", holder.address, "--amount", "3"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unsigned.returncode == 2 and "--instruction-key" in unsigned.stderr


@pytest.fixture(autouse=True)
def _processes_alive(system: LocalSystem) -> Iterator[None]:
    yield
    system.wait_processes_alive()


@pytest.mark.ops
def test_every_generated_configuration_file_passes_the_strict_checks(system: LocalSystem) -> None:
    """Issue 12: the devnet's network, coordinator, relayer and verifier files (the ones its
    processes started from) load under the strict schema and cross-field rules unchanged."""
    from bridge.config import load_coordinator, load_network, load_relayer, load_verifier

    loaded = []
    for path in sorted(system.workdir.glob("*.toml")):
        name = path.stem
        if name == "network":
            load_network(path)
        elif name == "coordinator":
            load_coordinator(path)
        elif name.startswith("relayer-"):
            load_relayer(path)
        elif name.startswith(("verifier-", "spare-")):
            load_verifier(path)
        else:
            raise AssertionError(f"a devnet file this test does not know: {path.name}")
        loaded.append(name)
    assert {"network", "coordinator"} <= set(loaded)
    # every ledger's relayer file (earlier tests of the module may have written more)
    assert {f"relayer-{name}" for name in system.ledgers} <= set(loaded)
    assert any(n.startswith("verifier-") for n in loaded)

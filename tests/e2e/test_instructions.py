"""Protocol v2 on the running system: no network position is enough to move a holder's units.

A rogue process holding the coordinator's certificate (a compromised coordinator: the only
role that may call a relayer's ``Submit`` and the members' ``SignClaim``) tries to move a
victim's units to itself without any brokerage's instruction. The ledger refuses an uninstructed lock
and a lock instructed by a key its admin did not register (UnknownInstructor); a lock by a
key registered on chain but not in the network file's ``[instruction_keys]`` (the members'
defence in depth) is escrowed but never certified LOCKED, and the coordinator has the
committee certify ABORT so the units go back to the victim.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import grpc
import pytest
from web3 import Web3

from bridge.devnet.anvil import DevAccount
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.claims import ClaimKind
from bridge.domain.ids import evm_address_word
from bridge.domain.instructions import instruction_digest
from bridge.domain.legs import Action
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.rpc.convert import terms_to_pb
from bridge.v1 import (
    relayer_pb2,
    relayer_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)
from tests.e2e.conftest import demo_request, demo_terms, eligible_everywhere
from tests.support import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.security]

A, B = "brokerage-a", "brokerage-b"
S = transfer_pb2


@pytest.fixture
def victim(system: LocalSystem) -> DevAccount:
    h = system.ledgers[A].make_holder(DEMO_ISIN, 100)
    eligible_everywhere(system, h.address)
    return h


@pytest.fixture
def thief(system: LocalSystem) -> DevAccount:
    t = DevAccount.generate()
    eligible_everywhere(system, t.address)
    return t


def rogue_terms(
    system: LocalSystem, victim: DevAccount, thief: DevAccount, instructor: bytes, amount: int
) -> TransferTerms:
    return demo_terms(system, victim.address, thief.address, amount, instructor=instructor, ttl=50)


@pytest.fixture
def relayer_a(system: LocalSystem) -> Iterator[relayer_pb2_grpc.RelayerServiceStub]:
    with system.channel("coordinator", peer=f"relayer:{A}") as ch:
        yield relayer_pb2_grpc.RelayerServiceStub(ch)


def rogue_lock(
    relayer: relayer_pb2_grpc.RelayerServiceStub, t: TransferTerms, instruction: bytes
) -> relayer_pb2.SubmitResponse:
    return relayer.Submit(
        relayer_pb2.SubmitRequest(
            action=int(Action.LOCK),  # type: ignore[arg-type]
            terms=terms_to_pb(t),
            instruction=instruction,
        ),
        timeout=60,
    )


def test_an_uninstructed_or_forged_lock_is_refused_by_the_ledger(
    system: LocalSystem, relayer_a, victim: DevAccount, thief: DevAccount
) -> None:
    a = system.ledgers[A]
    registered = system.brokerage.signer(A)
    t = rogue_terms(system, victim, thief, bytes(12) + registered.address, 60)
    rogue = LocalKeySigner(secrets.token_bytes(32))
    word = system.network.ledgers[A].network_word
    forged = rogue.sign_digest(instruction_digest(word, t))
    # The rogue's own key, validly signing terms that name it: not registered on chain.
    own = rogue_terms(system, victim, thief, bytes(12) + rogue.address, 60)
    own_signed = rogue.sign_digest(instruction_digest(word, own))
    for terms, instruction, reason in (
        (t, b"", "MissingInstruction"),
        (t, forged, "InvalidInstruction"),
        (own, own_signed, "UnknownInstructor"),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            rogue_lock(relayer_a, terms, instruction)
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason in exc.value.details()
        out = a.endpoint.functions.outbound(terms.transfer_id).call()
        assert out[0] == 0, "no leg recorded"
    assert a.balance(DEMO_ISIN, victim.address) == 100


def test_a_lock_by_a_key_outside_the_network_file_is_never_certified_and_is_released(
    system: LocalSystem, stub, relayer_a, victim: DevAccount, thief: DevAccount
) -> None:
    """Defence in depth: the chain's admin registered a key that is not in the network
    file's ``[instruction_keys]`` (a mistake, or a compromised admin); the members still
    refuse to certify its lock and ABORT it."""
    a, b = system.ledgers[A], system.ledgers[B]
    rogue = LocalKeySigner(secrets.token_bytes(32))
    t = rogue_terms(system, victim, thief, bytes(12) + rogue.address, 60)
    signed = rogue.sign_digest(instruction_digest(system.network.ledgers[A].network_word, t))
    rogue_address = Web3.to_checksum_address(rogue.address)
    system.set_instructor(A, rogue_address, True)
    try:
        rogue_lock(relayer_a, t, signed)  # registered on chain, unknown to the members
        eventually_sync(
            lambda: a.endpoint.functions.outbound(t.transfer_id).call()[0] == 1, 30, "the lock"
        )
    finally:
        system.set_instructor(A, rogue_address, False)
    assert a.balance(DEMO_ISIN, victim.address) == 40
    for i in range(len(system.members)):
        with system.channel("coordinator", peer=system.member_role(i)) as ch:
            member = verifier_pb2_grpc.VerifierServiceStub(ch)
            with pytest.raises(grpc.RpcError) as exc:
                member.SignClaim(
                    verifier_pb2.SignClaimRequest(
                        kind=int(ClaimKind.LOCKED),  # type: ignore[arg-type]
                        terms=terms_to_pb(t),
                    ),
                    timeout=30,
                )
            assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "no brokerage instructed it" in exc.value.details()
    tid = "0x" + t.transfer_id.hex()

    def aborted() -> bool:
        try:
            got = stub.GetTransfer(S.GetTransferRequest(transfer_id=tid), timeout=10)
        except grpc.RpcError:
            return False
        return got.state == S.TRANSFER_STATE_ABORTED

    eventually_sync(aborted, 90, "the uninstructed lock to be released")
    assert a.balance(DEMO_ISIN, victim.address) == 100, "every unit back with the victim"
    assert b.balance(DEMO_ISIN, thief.address) == 0
    assert b.endpoint.functions.inbound(t.transfer_id).call()[0] == 5, "target tombstoned"


def test_squatting_a_brokerages_transfer_id_is_impossible(
    system: LocalSystem, stub, relayer_a, victim: DevAccount, thief: DevAccount
) -> None:
    """The rogue learns the brokerage's instruction (nonce, deadline, signature) before the
    coordinator locks, and tries to take the transfer id with other terms."""
    request = system.brokerage.instruct(demo_request(victim.address, victim.address, "10", A, B))
    i = request.instruction
    real = rogue_terms(system, victim, victim, bytes(12) + i.instructor, 10)
    real = TransferTerms(**{**_fields(real), "nonce": i.nonce, "deadline": i.deadline})
    squat = TransferTerms(**{**_fields(real), "recipient": evm_address_word(thief.address)})
    assert squat.transfer_id == real.transfer_id  # same sender, instructor and nonce
    with pytest.raises(grpc.RpcError) as exc:
        rogue_lock(relayer_a, squat, i.signature)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "InvalidInstruction" in exc.value.details()
    rogue = LocalKeySigner(secrets.token_bytes(32))
    own = TransferTerms(**{**_fields(squat), "instructor": bytes(12) + rogue.address})
    assert own.transfer_id != real.transfer_id, "another instructor is another transfer"
    resp = stub.SubmitTransfer(request, timeout=30)
    assert resp.transfer.transfer_id == "0x" + real.transfer_id.hex()
    states = [
        u.state
        for u in stub.WatchTransfer(
            S.WatchTransferRequest(transfer_id=resp.transfer.transfer_id), timeout=90
        )
    ]
    assert states[-1] == S.TRANSFER_STATE_COMMITTED
    assert system.ledgers[B].balance(DEMO_ISIN, victim.address) == 10
    assert system.ledgers[B].balance(DEMO_ISIN, thief.address) == 0


def test_a_request_signed_by_an_unregistered_key_is_refused_and_not_recorded(
    system: LocalSystem, stub, victim: DevAccount
) -> None:
    before = count_transfers(stub)
    base = demo_request(victim.address, victim.address, "5", A, B)
    for signer, code, message in (
        (LocalKeySigner(secrets.token_bytes(32)), grpc.StatusCode.PERMISSION_DENIED,
         "not an instruction key registered for ledger brokerage-a"),
        (system.brokerage.signer(B), grpc.StatusCode.PERMISSION_DENIED,
         "not an instruction key registered for ledger brokerage-a"),
    ):  # fmt: skip
        req = system.brokerage.instruct(base, signer=signer)
        with pytest.raises(grpc.RpcError) as exc:
            stub.SubmitTransfer(req, timeout=30)
        assert exc.value.code() == code
        assert message in exc.value.details()
    forged = system.brokerage.instruct(base)
    forged.amount = "6"  # the signature covers 5
    with pytest.raises(grpc.RpcError) as exc:
        stub.SubmitTransfer(forged, timeout=30)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "InvalidInstruction" in exc.value.details()
    missing = S.SubmitTransferRequest()
    missing.CopyFrom(base)
    with system.channel(f"brokerage:{A}") as ch:
        raw = transfer_pb2_grpc.TransferServiceStub(ch)
        with pytest.raises(grpc.RpcError) as exc:
            raw.SubmitTransfer(missing, timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "instruction is required" in exc.value.details()
    assert count_transfers(stub) == before, "nothing recorded"
    assert system.ledgers[A].balance(DEMO_ISIN, victim.address) == 100


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


def _fields(t: TransferTerms) -> dict[str, object]:
    return {name: getattr(t, name) for name in t.__dataclass_fields__}


@pytest.fixture(autouse=True)
def _processes_alive(system: LocalSystem) -> Iterator[None]:
    yield
    system.wait_processes_alive()

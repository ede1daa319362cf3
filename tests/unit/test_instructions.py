"""Brokerage instructions (protocol v2): building, signing, verifying; the verifier's
network check."""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.config import dump_toml, load_network
from bridge.core.words import evm_network_word
from bridge.domain.committee import Committee
from bridge.domain.errors import InvalidInput, PreconditionFailed
from bridge.domain.instructions import (
    Instruction,
    InvalidInstruction,
    instruction_digest,
    make_nonce,
    sign_instruction,
    verify_instruction,
)
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.instructions import Brokerage
from bridge.v1 import transfer_pb2

pytestmark = [pytest.mark.unit, pytest.mark.security]

ISIN = "KR7005930003"
BROKER = LocalKeySigner(bytes([7]) * 32)
NETWORK_WORD = evm_network_word(31337)


def terms(**kw: Any) -> TransferTerms:
    fields: dict[str, Any] = {
        "nonce": b"\x01" * 32,
        "security": ISIN.encode().ljust(32, b"\0"),
        "amount": 5,
        "src_ledger": b"\x0a" * 32,
        "src_bridge": b"\x0b" * 32,
        "dst_ledger": b"\x0c" * 32,
        "dst_bridge": b"\x0d" * 32,
        "sender": bytes(12) + b"\x51" * 20,
        "recipient": bytes(12) + b"\x52" * 20,
        "instructor": bytes(12) + BROKER.address,
        "deadline": 2_000_000_000,
    }
    fields.update(kw)
    return TransferTerms(**fields)


def test_sign_and_verify_round_trip() -> None:
    t = terms()
    sig = sign_instruction(BROKER, NETWORK_WORD, t)
    verify_instruction(NETWORK_WORD, t, sig)
    assert BROKER.sign_digest(instruction_digest(NETWORK_WORD, t)) == sig  # RFC 6979


@pytest.mark.parametrize(
    "tamper",
    ["amount", "recipient", "deadline", "network", "signer", "empty", "high_s"],
)
def test_any_change_breaks_the_instruction(tamper: str) -> None:
    t = terms()
    sig = sign_instruction(BROKER, NETWORK_WORD, t)
    network = NETWORK_WORD
    if tamper == "amount":
        t = dataclasses.replace(t, amount=6)
    elif tamper == "recipient":
        t = dataclasses.replace(t, recipient=bytes(12) + b"\x53" * 20)
    elif tamper == "deadline":
        t = dataclasses.replace(t, deadline=t.deadline + 1)
    elif tamper == "network":
        network = evm_network_word(1)
    elif tamper == "signer":
        sig = LocalKeySigner(bytes([8]) * 32).sign_digest(instruction_digest(network, t))
    elif tamper == "empty":
        sig = b""
    elif tamper == "high_s":
        n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
        s = int.from_bytes(sig[32:64], "big")
        sig = sig[:32] + (n - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(InvalidInstruction) as info:
        verify_instruction(network, t, sig)
    expected = "MissingInstruction" if tamper == "empty" else "InvalidInstruction"
    assert info.value.reason.value == expected


def test_a_signer_refuses_terms_naming_another_instructor() -> None:
    with pytest.raises(InvalidInput, match="another instructor"):
        sign_instruction(LocalKeySigner(bytes([8]) * 32), NETWORK_WORD, terms())


def test_nonces_are_stable_per_key_and_salt_and_unpredictable_without_the_salt() -> None:
    salt = secrets.token_bytes(32)
    assert make_nonce("k1", salt) == make_nonce("k1", salt)
    assert make_nonce("k1", salt) != make_nonce("k2", salt)
    assert make_nonce("k1", salt) != make_nonce("k1", secrets.token_bytes(32))
    with pytest.raises(InvalidInput, match="salt"):
        make_nonce("k1", b"short")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"nonce": b"\x01" * 31}, "nonce must be 32 bytes"),
        ({"instructor": bytes(20)}, "nonzero 20-byte address"),
        ({"signature": b"\x01" * 64}, "signature must be 65 bytes"),
        ({"deadline": 0}, "positive uint64"),
    ],
)
def test_malformed_instructions_are_refused(fields: dict[str, Any], match: str) -> None:
    good: dict[str, Any] = {
        "nonce": b"\x01" * 32,
        "deadline": 1,
        "instructor": BROKER.address,
        "signature": b"\x01" * 65,
    }
    with pytest.raises(InvalidInput, match=match):
        Instruction(**{**good, **fields})


def network_file(tmp_path: Path) -> Path:
    path = tmp_path / "network.toml"
    path.write_text(
        dump_toml(
            {
                "committee": {"epoch": 1, "threshold": 1, "members": ["0x" + "22" * 20]},
                "securities": {"isins": [ISIN]},
                "ledgers": [
                    {
                        "id": "a",
                        "kind": "evm",
                        "rpc_url": "x",
                        "bridge": "0x" + "aa" * 20,
                        "chain_id": 31337,
                        "finality_depth": 0,
                    },
                    {
                        "id": "b",
                        "kind": "evm",
                        "rpc_url": "y",
                        "bridge": "0x" + "bb" * 20,
                        "chain_id": 31338,
                        "finality_depth": 0,
                    },
                ],
                "instruction_keys": {"a": ["0x" + BROKER.address.hex()]},
            }
        )
    )
    return path


def test_the_brokerage_client_signs_what_the_coordinator_checks(tmp_path: Path) -> None:
    from bridge.coordinator.requests import check_instruction, validate_request
    from bridge.rpc.convert import instruction_from_pb

    network = load_network(network_file(tmp_path))
    brokerage = Brokerage(network, {"a": BROKER}, ttl=60)
    request = transfer_pb2.SubmitTransferRequest(
        idempotency_key="k1", security_id=ISIN, source_ledger="a", target_ledger="b",
        sender="0x" + "51" * 20, recipient="0x" + "52" * 20, amount="5",
    )  # fmt: skip
    signed = brokerage.instruct(request)
    again = brokerage.instruct(request)
    assert signed == again, "a retry of one idempotency key sends the same instruction"
    req = validate_request(
        network, idempotency_key="k1", security=ISIN, source_ledger="a", target_ledger="b",
        sender="0x" + "51" * 20, recipient="0x" + "52" * 20, amount="5",
    )  # fmt: skip
    t = check_instruction(network, req, instruction_from_pb(signed), now=time.time(), ttl=60)
    assert t.instructor == bytes(12) + BROKER.address
    with pytest.raises(InvalidInput, match="no instruction key for ledger 'b'"):
        brokerage.instruct(
            transfer_pb2.SubmitTransferRequest(
                idempotency_key="k2",
                security_id=ISIN,
                source_ledger="b",
                target_ledger="a",
                sender="0x" + "51" * 20,
                recipient="0x" + "52" * 20,
                amount="5",
            )
        )


class FakeReader:
    def __init__(self, name: str, word: bytes) -> None:
        from bridge.domain.ids import LedgerId

        self.ledger = LedgerId(name)
        self.word = word
        self.reads = 0

    async def network_word(self) -> bytes:
        self.reads += 1
        return self.word


async def test_a_member_signs_only_for_the_network_its_own_node_is_on(tmp_path: Path) -> None:
    from verifiers.service import VerifierServicer
    from verifiers.votes import VoteLog

    member = LocalKeySigner(bytes([9]) * 32)
    committee = Committee(1, 1, (member.address,))
    production, staging = evm_network_word(1), evm_network_word(5)
    servicer = VerifierServicer(
        member,
        committee,
        {},
        VoteLog(tmp_path / "votes.sqlite"),
        network_words={"a": production},
    )
    good, bad = FakeReader("a", production), FakeReader("a", staging)
    with pytest.raises(PreconditionFailed, match="refusing to sign"):
        await servicer._network_word(bad)  # type: ignore[arg-type]
    assert await servicer._network_word(good) == production  # type: ignore[arg-type]
    assert await servicer._network_word(good) == production  # type: ignore[arg-type]
    assert good.reads == 1, "checked once, then remembered"
    with pytest.raises(PreconditionFailed, match="no network word configured for ledger b"):
        await servicer._network_word(FakeReader("b", production))  # type: ignore[arg-type]


class CapturingStub:
    """Records the request; answers the transfer it makes (the CLI checks the answer)."""

    def __init__(self, network_file: Path) -> None:
        self.requests: list[transfer_pb2.SubmitTransferRequest] = []
        self.network = load_network(network_file)

    def SubmitTransfer(self, request: transfer_pb2.SubmitTransferRequest, timeout: float) -> Any:
        from bridge.cli.answers import expected_of

        self.requests.append(request)
        want = expected_of(self.network, request)
        assert want is not None
        t = transfer_pb2.Transfer(
            transfer_id=want.transfer_id, idempotency_key=want.idempotency_key,
            security_id=want.security, source_ledger=want.source_ledger,
            target_ledger=want.target_ledger, sender=want.sender, recipient=want.recipient,
            amount=want.amount,
        )  # fmt: skip
        return transfer_pb2.SubmitTransferResponse(created=True, transfer=t)


def test_the_cli_signs_with_a_keystore_instruction_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bridge transfer submit --instruction-key-config``: the brokerage's key in an
    encrypted keystore (custody) signs what the coordinator checks."""
    from bridge.cli.main import build_parser
    from bridge.coordinator.requests import check_instruction, validate_request
    from bridge.keys.keystore import write_keystore_v3
    from bridge.rpc.convert import instruction_from_pb

    net_file = network_file(tmp_path)
    write_keystore_v3(
        tmp_path / "broker.json", bytes([7]) * 32, b"pass", kdf="pbkdf2", iterations=2
    )
    (tmp_path / "broker.pass").write_text("pass")
    (tmp_path / "broker.pass").chmod(0o600)
    (tmp_path / "key.toml").write_text(
        '[key]\nkeystore = "broker.json"\npassphrase_file = "broker.pass"\n'
    )
    args = build_parser().parse_args(
        ["transfer", "submit", "--security", ISIN, "--from", "a", "--to", "b",
         "--sender", "0x" + "51" * 20, "--recipient", "0x" + "52" * 20, "--amount", "5",
         "--idempotency-key", "cli-1", "--instruction-key-config", str(tmp_path / "key.toml"),
         "--network", str(net_file), "--journal", str(tmp_path / "journal.json")]
    )  # fmt: skip
    stub = CapturingStub(net_file)
    args.run(stub, args)
    [sent] = stub.requests
    network = load_network(net_file)
    req = validate_request(
        network, idempotency_key="cli-1", security=ISIN, source_ledger="a", target_ledger="b",
        sender="0x" + "51" * 20, recipient="0x" + "52" * 20, amount="5",
    )  # fmt: skip
    t = check_instruction(network, req, instruction_from_pb(sent), now=time.time(), ttl=60)
    assert t.instructor == bytes(12) + BROKER.address
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["transfer", "submit", "--security", ISIN, "--from", "a", "--to", "b",
             "--sender", "x", "--recipient", "y", "--amount", "5", "--network", str(net_file)]
        )  # fmt: skip
    assert "--instruction-key" in capsys.readouterr().err

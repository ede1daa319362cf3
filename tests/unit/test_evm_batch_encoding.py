"""The EVM batch encoding helpers (bridge/ledgers/evm/batch.py), without a ledger."""

from __future__ import annotations

import pytest
from web3 import Web3

from bridge.core import batch as core
from bridge.core.reasons import ErrorReason, ProtocolError
from bridge.core.words import evm_network_word, ledger_word
from bridge.domain.claims import ClaimDomain, ClaimKind
from bridge.domain.ids import SecurityId
from bridge.domain.terms import TransferTerms
from bridge.ledgers.evm import batch as evm_batch
from bridge.ledgers.evm.artifacts import load_abi

pytestmark = [pytest.mark.unit, pytest.mark.batch]

DOMAIN = ClaimDomain(
    ledger=ledger_word("evm-b"),
    contract=bytes(12) + b"\xcc" * 20,
    epoch=4,
    network=evm_network_word(31337),
)


def terms(i: int) -> TransferTerms:
    return TransferTerms(
        nonce=bytes([i]) * 32,
        security=SecurityId("US0378331005").word,
        amount=1 + i,
        src_ledger=ledger_word("evm-a"),
        src_bridge=bytes(12) + b"\xaa" * 20,
        dst_ledger=DOMAIN.ledger,
        dst_bridge=DOMAIN.contract,
        sender=bytes(12) + b"\x51" * 20,
        recipient=bytes(12) + b"\x52" * 20,
        instructor=bytes(12) + b"\x53" * 20,
        deadline=1_700_000_000,
    )


def test_items_prove_into_the_batch_built_for_the_endpoint_domain() -> None:
    ts = [terms(i) for i in range(5)]
    b = evm_batch.endpoint_batch(DOMAIN, ClaimKind.COMMIT, ts)
    assert (b.network, b.ledger, b.bridge, b.epoch, b.kind, b.count) == (
        DOMAIN.network, DOMAIN.ledger, DOMAIN.contract, 4, 2, 5,
    )  # fmt: skip
    cert = core.BatchCertificate(b.epoch, b.kind, b.root, b.count, ())
    items = evm_batch.batch_items(b, DOMAIN, ts[3:] + ts[:1])
    assert [i.terms for i in items] == [ts[3], ts[4], ts[0]]
    for item in items:
        core.check_batch_item(
            cert, DOMAIN.network, DOMAIN.ledger, DOMAIN.contract,
            item.terms.transfer_id, item.terms.terms_hash, item.proof,
        )  # fmt: skip
    with pytest.raises(ProtocolError) as info:
        evm_batch.endpoint_batch(DOMAIN, ClaimKind.COMMIT, [ts[0], ts[0]])
    assert info.value.reason is ErrorReason.DUPLICATE_BATCH_ITEM


def test_calls_encode_against_the_endpoint_abi() -> None:
    ts = [terms(i) for i in range(3)]
    endpoint = Web3().eth.contract(
        address=Web3.to_checksum_address("0x" + "cc" * 20), abi=load_abi("BridgeEndpoint")
    )
    b = evm_batch.endpoint_batch(DOMAIN, ClaimKind.ABORT, ts)
    cert = core.BatchCertificate(b.epoch, b.kind, b.root, b.count, (b"\x01" * 65, b"\x02" * 65))
    assert evm_batch.certificate_tuple(cert) == (4, 3, b.root, 3, b"\x01" * 65 + b"\x02" * 65)
    for step in evm_batch.BatchStep:
        call = evm_batch.step_call(endpoint, step, evm_batch.batch_items(b, DOMAIN, ts), cert)
        assert call.fn_name == step.function
        assert len(call._encode_transaction_data()) > 4 + 32 * 3
    assert evm_batch.BatchStep.PREPARE.kind is ClaimKind.LOCKED
    lock = evm_batch.lock_call(endpoint, ts, [b""] * 3)
    assert lock.fn_name == "lockBatch"
    with pytest.raises(ValueError, match="one instruction per item"):
        evm_batch.lock_call(endpoint, ts, [b""])

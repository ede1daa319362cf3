"""Transfer ids, terms hashes and claim digests: determinism, sensitivity, domain separation.

The expected digests are recomputed here independently of ``bridge.domain.hashing`` with
eth_abi and pycryptodome's Keccak, so the byte-level encoding (which the Solidity
contracts must reproduce) is pinned.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from Crypto.Hash import keccak as pc_keccak
from eth_abi import encode

from bridge.domain.claims import CLAIM_TAG, Claim, ClaimDomain, ClaimKind, claim_digest
from bridge.domain.errors import InvalidInput
from bridge.domain.hashing import abi_encode, keccak256, tag
from bridge.domain.terms import TERMS_TAG, TRANSFER_TAG, TransferTerms, transfer_id

pytestmark = pytest.mark.unit


def kk(data: bytes) -> bytes:
    """Keccak-256 from an independent implementation (pycryptodome)."""
    return pc_keccak.new(digest_bits=256, data=data).digest()


def w(byte: int) -> bytes:
    return bytes([byte]) * 32


@pytest.mark.parametrize("seed", range(4))
def test_keccak256_is_pycryptodomes_keccak(seed: int) -> None:
    """The core's Keccak-256 (safe-pysha3, C) equals pycryptodome's for every length up to
    three sponge blocks (the 136-byte rate boundaries included), on random bytes and on
    bytearray; anything else is a TypeError; and it is Keccak, not NIST SHA3-256."""
    import hashlib
    import random

    rng = random.Random(seed)
    for n in range(3 * 136 + 2):
        data = rng.randbytes(n)
        assert keccak256(data) == kk(data), n
        assert type(keccak256(data)) is bytes
    data = rng.randbytes(200)
    assert keccak256(bytearray(data)) == kk(data)
    for other in (None, "", "ab", 0, [], memoryview(data)):
        with pytest.raises(TypeError):
            keccak256(other)  # type: ignore[arg-type]
    assert keccak256(b"").hex() == (
        "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )
    assert keccak256(b"") != hashlib.sha3_256(b"").digest()


def make_terms(**overrides: object) -> TransferTerms:
    fields: dict[str, object] = {
        "nonce": w(0x01),
        "security": b"KR7005930003".ljust(32, b"\0"),
        "amount": 1_000,
        "src_ledger": w(0x0A),
        "src_bridge": w(0x0B),
        "dst_ledger": w(0x0C),
        "dst_bridge": w(0x0D),
        "sender": b"\0" * 12 + b"\x51" * 20,
        "recipient": b"\0" * 12 + b"\x52" * 20,
        "instructor": b"\0" * 12 + b"\x53" * 20,
        "deadline": 1_700_000_000,
    }
    fields.update(overrides)
    return TransferTerms(**fields)  # type: ignore[arg-type]


# -- primitives ----------------------------------------------------------------------------


def test_keccak256_is_ethereum_keccak_not_sha3() -> None:
    assert (
        keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    )
    assert keccak256(b"abc") == kk(b"abc")


def test_tags_are_keccak_of_their_names() -> None:
    assert kk(b"KSTB/transfer-id/v2") == TRANSFER_TAG
    assert kk(b"KSTB/terms/v2") == TERMS_TAG
    assert kk(b"KSTB/claim/v2") == CLAIM_TAG
    assert tag("x") == kk(b"x")
    assert len({TRANSFER_TAG, TERMS_TAG, CLAIM_TAG}) == 3


def test_abi_encode_matches_solidity_layout() -> None:
    out = abi_encode(["uint16", "bytes32", "uint64"], [1, w(0xAA), 2**64 - 1])
    assert out == ((1).to_bytes(32, "big") + w(0xAA) + (2**64 - 1).to_bytes(32, "big"))


# -- transfer id / terms hash --------------------------------------------------------------


def test_transfer_id_by_hand() -> None:
    t = make_terms()
    sender, instructor = b"\0" * 12 + b"\x51" * 20, b"\0" * 12 + b"\x53" * 20
    expected = kk(TRANSFER_TAG + w(0x0A) + w(0x0B) + sender + instructor + w(0x01))
    assert t.transfer_id == expected
    assert transfer_id(w(0x0A), w(0x0B), sender, instructor, w(0x01)) == expected


def test_terms_hash_by_hand() -> None:
    t = make_terms()
    sender, instructor = b"\0" * 12 + b"\x51" * 20, b"\0" * 12 + b"\x53" * 20
    tid = kk(TRANSFER_TAG + w(0x0A) + w(0x0B) + sender + instructor + w(0x01))
    # Every field is a static 32-byte slot: abi.encode is the plain concatenation.
    manual = (
        kk(b"KSTB/terms/v2")
        + tid
        + b"KR7005930003".ljust(32, b"\0")
        + (1000).to_bytes(32, "big")
        + w(0x0A)
        + w(0x0B)
        + w(0x0C)
        + w(0x0D)
        + (b"\0" * 12 + b"\x51" * 20)
        + (b"\0" * 12 + b"\x52" * 20)
        + instructor
        + (1_700_000_000).to_bytes(32, "big")
    )
    assert t.terms_hash == kk(manual)


def test_terms_hash_and_transfer_id_are_deterministic() -> None:
    a, b = make_terms(), make_terms()
    assert a is not b
    assert a.terms_hash == b.terms_hash
    assert a.transfer_id == b.transfer_id
    assert len(a.terms_hash) == 32


def test_words_given_as_bytearrays_are_kept_as_bytes_with_the_same_digests() -> None:
    """Terms are hashable values (their digests are kept per value): a word given as a
    bytearray is stored as bytes, the terms equal and hash as the bytes-built ones."""
    t = make_terms()
    u = dataclasses.replace(t, nonce=bytearray(t.nonce), sender=bytearray(t.sender))
    assert type(u.nonce) is bytes and type(u.sender) is bytes
    assert u == t and hash(u) == hash(t)
    assert (u.transfer_id, u.terms_hash) == (t.transfer_id, t.terms_hash)
    # a kept digest never answers for other terms (every term is compared)
    v = dataclasses.replace(t, amount=t.amount + 1)
    assert v.transfer_id == t.transfer_id and v.terms_hash != t.terms_hash


SENSITIVE_CHANGES: dict[str, object] = {
    "nonce": w(0x02),
    "security": b"US0378331005".ljust(32, b"\0"),
    "amount": 1_001,
    "src_ledger": w(0x1A),
    "src_bridge": w(0x1B),
    "dst_ledger": w(0x1C),
    "dst_bridge": w(0x1D),
    "sender": b"\0" * 12 + b"\x61" * 20,
    "recipient": b"\0" * 12 + b"\x62" * 20,
    "instructor": b"\0" * 12 + b"\x63" * 20,
    "deadline": 1_700_000_001,
}
ID_FIELDS = {"nonce", "src_ledger", "src_bridge", "sender", "instructor"}


def test_every_field_is_covered_by_the_sensitivity_table() -> None:
    assert set(SENSITIVE_CHANGES) == {f.name for f in dataclasses.fields(TransferTerms)}


@pytest.mark.parametrize("field", sorted(SENSITIVE_CHANGES))
def test_changing_any_single_field_changes_terms_hash(field: str) -> None:
    base = make_terms()
    changed = dataclasses.replace(base, **{field: SENSITIVE_CHANGES[field]})
    assert changed.terms_hash != base.terms_hash


@pytest.mark.parametrize("field", sorted(SENSITIVE_CHANGES))
def test_transfer_id_depends_only_on_source_sender_instructor_and_nonce(field: str) -> None:
    base = make_terms()
    changed = dataclasses.replace(base, **{field: SENSITIVE_CHANGES[field]})
    if field in ID_FIELDS:
        assert changed.transfer_id != base.transfer_id
    else:
        assert changed.transfer_id == base.transfer_id


def test_swapping_sender_and_recipient_changes_terms_hash() -> None:
    base = make_terms()
    swapped = dataclasses.replace(base, sender=base.recipient, recipient=base.sender)
    assert swapped.terms_hash != base.terms_hash


def test_as_abi_tuple_is_in_solidity_declaration_order() -> None:
    t = make_terms()
    assert t.as_abi_tuple() == (
        w(0x01),
        b"KR7005930003".ljust(32, b"\0"),
        1000,
        w(0x0A),
        w(0x0B),
        w(0x0C),
        w(0x0D),
        b"\0" * 12 + b"\x51" * 20,
        b"\0" * 12 + b"\x52" * 20,
        b"\0" * 12 + b"\x53" * 20,
        1_700_000_000,
    )


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, -1, 2**256])
def test_amount_out_of_range_is_rejected(amount: int) -> None:
    with pytest.raises(InvalidInput, match=r"amount must be between 1 and 2\*\*256-1"):
        make_terms(amount=amount)


@pytest.mark.parametrize("amount", [1, 2**256 - 1])
def test_amount_bounds_are_accepted(amount: int) -> None:
    assert make_terms(amount=amount).amount == amount


def test_same_source_and_target_ledger_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="source and target ledger must differ"):
        make_terms(dst_ledger=w(0x0A))


@pytest.mark.parametrize("deadline", [-1, 2**64])
def test_deadline_must_fit_uint64(deadline: int) -> None:
    with pytest.raises(InvalidInput, match="deadline must fit in uint64"):
        make_terms(deadline=deadline)


def test_deadline_bounds_are_accepted() -> None:
    assert make_terms(deadline=0).deadline == 0
    assert make_terms(deadline=2**64 - 1).deadline == 2**64 - 1


@pytest.mark.parametrize(
    "field",
    ["nonce", "security", "src_ledger", "src_bridge", "dst_ledger", "dst_bridge", "sender",
     "recipient", "instructor"],
)  # fmt: skip
@pytest.mark.parametrize("bad", [b"\x01" * 31, b"\x01" * 33, b"", "0" * 32])
def test_non_32_byte_words_are_rejected(field: str, bad: object) -> None:
    with pytest.raises(InvalidInput, match=f"{field} must be 32 bytes"):
        make_terms(**{field: bad})


# -- claim digests -------------------------------------------------------------------------

DOMAIN = ClaimDomain(
    ledger=w(0xA1), contract=b"\0" * 12 + b"\xc0" * 20, epoch=3, network=(31337).to_bytes(32, "big")
)


def test_claim_digest_by_hand_with_eth_abi() -> None:
    t = make_terms()
    claim = Claim(ClaimKind.COMMIT, t.transfer_id, t.terms_hash)
    expected = kk(
        encode(
            [
                "bytes32",
                "uint16",
                "bytes32",
                "bytes32",
                "bytes32",
                "uint64",
                "uint8",
                "bytes32",
                "bytes32",
            ],
            [
                kk(b"KSTB/claim/v2"),
                2,
                (31337).to_bytes(32, "big"),
                w(0xA1),
                b"\0" * 12 + b"\xc0" * 20,
                3,
                2,
                t.transfer_id,
                t.terms_hash,
            ],
        )
    )
    assert claim_digest(DOMAIN, claim) == expected


def test_claim_digest_by_hand_raw_words() -> None:
    tid, th = w(0x77), w(0x88)
    raw = (
        kk(b"KSTB/claim/v2")
        + (2).to_bytes(32, "big")
        + (31337).to_bytes(32, "big")
        + w(0xA1)
        + b"\0" * 12
        + b"\xc0" * 20
        + (3).to_bytes(32, "big")
        + (3).to_bytes(32, "big")  # ABORT = 3
        + tid
        + th
    )
    assert claim_digest(DOMAIN, Claim(ClaimKind.ABORT, tid, th)) == kk(raw)


def test_claim_kind_values_are_shared_with_the_contracts() -> None:
    assert [int(k) for k in (ClaimKind.LOCKED, ClaimKind.COMMIT, ClaimKind.ABORT)] == [1, 2, 3]


def test_claim_digest_separates_every_domain_and_claim_component() -> None:
    ledgers = [w(0xA1), w(0xA2)]
    contracts = [b"\0" * 12 + b"\xc0" * 20, b"\0" * 12 + b"\xc1" * 20]
    epochs = [1, 2]
    networks = [w(0x01), w(0x02)]
    kinds = list(ClaimKind)
    tids = [w(0x10), w(0x11)]
    hashes = [w(0x20), w(0x21)]
    digests = {
        claim_digest(ClaimDomain(lg, ct, ep, nw), Claim(kd, ti, th))
        for lg, ct, ep, nw, kd, ti, th in itertools.product(
            ledgers, contracts, epochs, networks, kinds, tids, hashes
        )
    }
    assert len(digests) == 2 * 2 * 2 * 2 * 3 * 2 * 2


@pytest.mark.parametrize(
    "changed",
    [
        dataclasses.replace(DOMAIN, ledger=w(0xA2)),
        dataclasses.replace(DOMAIN, contract=b"\0" * 12 + b"\xc1" * 20),
        dataclasses.replace(DOMAIN, epoch=DOMAIN.epoch + 1),
        dataclasses.replace(DOMAIN, network=(1).to_bytes(32, "big")),
    ],
    ids=["ledger", "contract", "epoch", "network (a staging deployment)"],
)
def test_claim_digest_differs_when_one_domain_field_changes(changed: ClaimDomain) -> None:
    claim = Claim(ClaimKind.COMMIT, w(0x10), w(0x20))
    assert claim_digest(changed, claim) != claim_digest(DOMAIN, claim)


def test_commit_and_abort_digests_differ_for_the_same_transfer() -> None:
    t = make_terms()
    commit = claim_digest(DOMAIN, Claim(ClaimKind.COMMIT, t.transfer_id, t.terms_hash))
    abort = claim_digest(DOMAIN, Claim(ClaimKind.ABORT, t.transfer_id, t.terms_hash))
    locked = claim_digest(DOMAIN, Claim(ClaimKind.LOCKED, t.transfer_id, t.terms_hash))
    assert len({commit, abort, locked}) == 3

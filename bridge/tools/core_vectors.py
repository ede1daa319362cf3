"""Golden cases of the protocol core: ``bridge/core/vectors.json``.

``python -m bridge.tools.core_vectors`` rewrites the file from the core; ``--check`` exits 1
when the committed file differs from what the core computes now (a digest or rule changed
without regenerating: every ledger implementation must then be checked again). The Python
core, the chaincode's vendored copy (unit tests) and Solidity (an integration test against
anvil) are each checked against the committed file, independently of this generator.

Keys are derived from fixed seeds (never use them for anything else); signatures are
RFC 6979 deterministic, so the file is reproducible byte for byte.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from coincurve import PrivateKey

from bridge.core import batch, digests, words
from bridge.core.hashing import keccak256
from bridge.core.reasons import ProtocolError
from bridge.core.signatures import (
    SECP256K1_N,
    address_of_public_key,
    check_certificate,
    check_instruction,
    check_order,
)

VECTORS = Path(__file__).resolve().parents[1] / "core" / "vectors.json"


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def vector_key(i: int) -> PrivateKey:
    """The i-th fixed test key (keccak256 of a public seed): for golden vectors only."""
    return PrivateKey(keccak256(f"KSTB/vector-key/{i}".encode()))


def _address(key: PrivateKey) -> bytes:
    return address_of_public_key(key.public_key.format(compressed=False))


def _sign(key: PrivateKey, digest: bytes) -> bytes:
    sig = key.sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes([sig[64] + 27])


def _terms_cases() -> list[digests.Terms]:
    def w(byte: int) -> bytes:
        return bytes([byte]) * 32

    def padded(byte: int) -> bytes:
        return bytes(12) + bytes([byte]) * 20

    base: dict[str, Any] = {
        "nonce": w(0x01),
        "security": words.security_word("KR7005930003"),
        "amount": 1000,
        "src_ledger": words.ledger_word("evm-a"),
        "src_bridge": padded(0xB1),
        "dst_ledger": words.ledger_word("fabric-b"),
        "dst_bridge": words.fabric_bridge_word("bridge", "kstb"),
        "sender": padded(0x51),
        "recipient": padded(0x52),
        "instructor": bytes(12) + _address(vector_key(10)),
        "deadline": 1_700_000_000,
    }
    return [
        digests.Terms(**base),
        digests.Terms(**{**base, "nonce": w(0x02)}),
        digests.Terms(**{**base, "amount": 2**256 - 1, "deadline": 2**64 - 1}),
        digests.Terms(**{**base, "amount": 1, "deadline": 0, "sender": padded(0x61)}),
        digests.Terms(**{**base, "instructor": base["sender"]}),  # holder-direct (EVM)
    ]


def _terms_json(t: digests.Terms) -> dict[str, Any]:
    obj: dict[str, Any] = {name: _hex(getattr(t, name)) for name in digests.WORD_FIELDS}
    obj["amount"] = str(t.amount)
    obj["deadline"] = t.deadline
    return obj


def _cert_case(
    name: str, digest: bytes, epoch: int, sigs: list[bytes] | None, expect: str | None
) -> dict[str, Any]:
    return {
        "name": name,
        "digest": _hex(digest),
        "epoch": epoch,
        "signatures": None if sigs is None else [_hex(s) for s in sigs],
        "expect": expect,
    }


def build() -> dict[str, Any]:
    """Compute every golden case from the core."""
    out: dict[str, Any] = {"protocol_version": digests.PROTOCOL_VERSION}
    out["tags"] = {
        "transfer": _hex(digests.TRANSFER_TAG),
        "terms": _hex(digests.TERMS_TAG),
        "claim": _hex(digests.CLAIM_TAG),
        "instruction": _hex(digests.INSTRUCTION_TAG),
        "rotation": _hex(digests.ROTATION_TAG),
        "order": _hex(digests.ORDER_TAG),
    }
    out["ledger_words"] = {n: _hex(words.ledger_word(n)) for n in ("evm-a", "fabric-b", "x")}
    out["security_words"] = {
        i: _hex(words.security_word(i)) for i in ("KR7005930003", "US0378331005")
    }
    out["invalid_isins"] = ["KR7005930004", "kr7005930003", "KR700593000", ""]
    out["fabric_bridge_words"] = [
        {
            "channel": "bridge",
            "chaincode": "kstb",
            "word": _hex(words.fabric_bridge_word("bridge", "kstb")),
        }
    ]
    out["evm_network_words"] = {str(c): _hex(words.evm_network_word(c)) for c in (1, 31337, 8217)}
    out["terms"] = [
        {
            "terms": _terms_json(t),
            "transfer_id": _hex(t.transfer_id),
            "terms_hash": _hex(t.terms_hash),
        }
        for t in _terms_cases()
    ]
    claims = []
    for i, t in enumerate(_terms_cases()[:2]):
        for kind in (digests.CLAIM_LOCKED, digests.CLAIM_COMMIT, digests.CLAIM_ABORT):
            ledger = words.ledger_word("evm-a")
            bridge = bytes(12) + bytes([0xC0 + i]) * 20
            epoch = 1 + i
            network = words.evm_network_word(31337 + i)
            claims.append(
                {
                    "network": _hex(network),
                    "ledger": _hex(ledger),
                    "bridge": _hex(bridge),
                    "epoch": epoch,
                    "kind": kind,
                    "transfer_id": _hex(t.transfer_id),
                    "terms_hash": _hex(t.terms_hash),
                    "digest": _hex(
                        digests.claim_digest(
                            network, ledger, bridge, epoch, kind, t.transfer_id, t.terms_hash
                        )
                    ),
                }
            )
    out["claims"] = claims
    out["instructions"] = _instructions()
    out["certificates"] = _certificates()
    out["rotations"] = _rotations()
    out["orders"] = _orders()
    out["batches"] = _batches()
    return out


# ---- batched certificates (ADR 0025)


def _batches() -> dict[str, Any]:
    """Leaf, node, trees of 1, 2, 3 and 5 claims with every proof and root digest, and the
    batch acceptance rule (committee = the certificate vectors' members, threshold 3)."""
    network = words.evm_network_word(31337)
    ledger = words.ledger_word("evm-a")
    bridge = bytes(12) + bytes([0xC0]) * 20
    epoch, kind = 3, digests.CLAIM_COMMIT
    terms = _terms_cases()

    def claim(t: digests.Terms, k: int = kind) -> batch.BatchClaim:
        return batch.BatchClaim(network, ledger, bridge, epoch, k, t.transfer_id, t.terms_hash)

    trees = []
    for n in (1, 2, 3, 5):
        b = batch.build_batch([claim(t) for t in terms[:n]])
        trees.append(
            {
                "count": n,
                "root": _hex(b.root),
                "root_digest": _hex(b.digest),
                "items": [
                    {
                        "transfer_id": _hex(t.transfer_id),
                        "terms_hash": _hex(t.terms_hash),
                        "claim_digest": _hex(claim(t).digest),
                        "leaf": _hex(claim(t).leaf),
                        "proof": [_hex(p) for p in b.proof(claim(t))],
                    }
                    for t in terms[:n]
                ],
            }
        )
    a, b2 = claim(terms[0]).leaf, claim(terms[1]).leaf
    keys = sorted((vector_key(i) for i in range(5)), key=_address)
    members, outsider = keys[:4], keys[4]
    three = batch.build_batch([claim(t) for t in terms[:3]])
    abort = batch.build_batch([claim(t, digests.CLAIM_ABORT) for t in terms[:3]])
    single = digests.claim_digest(
        network, ledger, bridge, epoch, kind, terms[0].transfer_id, terms[0].terms_hash
    )

    def sigs(digest: bytes, signers: list[PrivateKey]) -> list[bytes]:
        return [_sign(k, digest) for k in sorted(signers, key=_address)]

    cases: list[tuple[str, batch.Batch | None, int, list[bytes], int, int, str | None]] = [
        ("commit root", three, kind, sigs(three.digest, members[:3]), 0, 3, None),
        ("abort root", abort, digests.CLAIM_ABORT, sigs(abort.digest, members[1:]), 0, 3, None),
        ("commit root used to abort", three, digests.CLAIM_ABORT,
         sigs(three.digest, members[:3]), 0, 3, "WrongBatchKind"),
        ("too few", three, kind, sigs(three.digest, members[:2]), 0, 3, "TooFewSignatures"),
        ("non-member", three, kind, sigs(three.digest, [*members[:2], outsider]), 0, 3,
         "NotCommitteeMember"),
        ("single-claim signatures as a root", three, kind, sigs(single, members[:3]), 0, 3,
         "NotCommitteeMember"),
        ("more items than the root covers", three, kind, sigs(three.digest, members[:3]), 0, 4,
         "InvalidBatch"),
        ("no item", three, kind, sigs(three.digest, members[:3]), 0, 0, "InvalidBatch"),
        ("another epoch", three, kind, sigs(three.digest, members[:3]), 1, 3, "WrongEpoch"),
    ]  # fmt: skip
    member_addresses = [_address(k) for k in members]
    rule = []
    for name, bt, need, signatures, epoch_delta, items, expect in cases:
        assert bt is not None
        cert = batch.BatchCertificate(
            bt.epoch + epoch_delta, bt.kind, bt.root, bt.count, tuple(signatures)
        )
        try:
            batch.check_batch_certificate(
                cert, need, items, network, ledger, bridge, epoch, 3, member_addresses
            )
            got = None
        except ProtocolError as exc:
            got = exc.reason.value
        assert got == expect, (name, got)
        rule.append(
            {
                "name": name,
                "epoch": cert.epoch,
                "kind": cert.kind,
                "root": _hex(cert.root),
                "count": cert.count,
                "signatures": [_hex(x) for x in signatures],
                "needed_kind": need,
                "items": items,
                "expect": expect,
            }
        )
    # Items against the 3-leaf commit root: a proof from another tree, another ledger's
    # claim, another epoch's claim and another transfer's terms all fail to prove.
    cert3 = batch.BatchCertificate(epoch, kind, three.root, 3, ())
    five = batch.build_batch([claim(t) for t in terms[:5]])
    t0 = terms[0]
    item_cases = [
        ("member", t0.transfer_id, t0.terms_hash, three.proof(claim(t0)), ledger, None),
        ("proof for another root", t0.transfer_id, t0.terms_hash, five.proof(claim(t0)), ledger,
         "InvalidBatchProof"),
        ("another ledger", t0.transfer_id, t0.terms_hash, three.proof(claim(t0)),
         words.ledger_word("fabric-b"), "InvalidBatchProof"),
        ("other terms", t0.transfer_id, terms[1].terms_hash, three.proof(claim(t0)), ledger,
         "InvalidBatchProof"),
        ("not in the batch", terms[4].transfer_id, terms[4].terms_hash, three.proof(claim(t0)),
         ledger, "InvalidBatchProof"),
    ]  # fmt: skip
    items_out = []
    for name, tid, thash, proof, on_ledger, expect in item_cases:
        try:
            batch.check_batch_item(cert3, network, on_ledger, bridge, tid, thash, proof)
            got = None
        except ProtocolError as exc:
            got = exc.reason.value
        assert got == expect, (name, got)
        items_out.append(
            {
                "name": name,
                "ledger": _hex(on_ledger),
                "transfer_id": _hex(tid),
                "terms_hash": _hex(thash),
                "proof": [_hex(p) for p in proof],
                "expect": expect,
            }
        )
    other_epoch = batch.batch_root_digest(network, ledger, bridge, epoch + 1, kind, three.root, 3)
    assert other_epoch != three.digest
    return {
        "tags": {
            "leaf": _hex(batch.BATCH_LEAF_TAG),
            "node": _hex(batch.BATCH_NODE_TAG),
            "root": _hex(batch.BATCH_ROOT_TAG),
        },
        "leaf": {"claim_digest": _hex(single), "leaf": _hex(batch.batch_leaf(single))},
        "node": {
            "a": _hex(max(a, b2)),
            "b": _hex(min(a, b2)),
            "node": _hex(batch.batch_node(a, b2)),
        },
        "network": _hex(network),
        "ledger": _hex(ledger),
        "bridge": _hex(bridge),
        "epoch": epoch,
        "kind": kind,
        "trees": trees,
        "certificate_rule": {
            "current_epoch": epoch,
            "threshold": 3,
            "members": [_hex(m) for m in member_addresses],
            "cases": rule,
        },
        "items": {"root": _hex(three.root), "cases": items_out},
    }


# ---- committee rotation


def _rotations() -> list[dict[str, Any]]:
    members = sorted(_address(vector_key(i)) for i in range(4))
    base: dict[str, Any] = {
        "network": words.evm_network_word(31337),
        "ledger": words.ledger_word("evm-a"),
        "bridge": bytes(12) + bytes([0xC0]) * 20,
        "epoch": 1,
        "next_epoch": 2,
        "threshold": 3,
        "members": members,
        "activation": 1_700_000_000,
        "overlap": 3600,
    }
    cases = [
        base,
        {**base, "network": words.evm_network_word(1)},
        {**base, "ledger": words.ledger_word("fabric-b"),
         "bridge": words.fabric_bridge_word("bridge", "kstb")},
        {**base, "epoch": 7, "next_epoch": 8, "threshold": 2, "members": members[:3]},
        {**base, "members": members[1:] + members[:1]},  # order is bound (endpoints refuse it)
        {**base, "activation": 0, "overlap": 2**64 - 1, "threshold": 255},
    ]  # fmt: skip
    return [
        {
            **{k: _hex(v) for k, v in c.items() if isinstance(v, bytes)},
            "epoch": c["epoch"],
            "next_epoch": c["next_epoch"],
            "threshold": c["threshold"],
            "members": [_hex(m) for m in c["members"]],
            "activation": c["activation"],
            "overlap": c["overlap"],
            "members_hash": _hex(digests.members_hash(c["members"])),
            "digest": _hex(digests.rotation_digest(**c)),
        }
        for c in cases
    ]


# ---- depository halt


def _order_json(o: digests.Order) -> dict[str, Any]:
    return {
        "network": _hex(o.network),
        "ledger": _hex(o.ledger),
        "security": _hex(o.security),
        "action": o.action,
        "sequence": o.sequence,
        "expiry": o.expiry,
        "key": _hex(o.key),
    }


def _orders() -> dict[str, Any]:
    """Order digests and the order acceptance rule (depository = vector key 20)."""
    depository, stranger = vector_key(20), vector_key(21)
    network = words.evm_network_word(31337)
    ledger = words.ledger_word("evm-a")
    sec = words.security_word("KR7005930003")
    zero = bytes(32)
    base = digests.Order(network, ledger, sec, digests.ORDER_HALT, 7, 1_700_000_600, zero)

    def with_(**kw: Any) -> digests.Order:
        return dataclasses.replace(base, **kw)

    new_key = bytes(12) + _address(stranger)
    signed = [
        ("halt one security", base, depository, None),
        ("release", with_(action=digests.ORDER_RELEASE), depository, None),
        ("whole ledger", with_(security=zero), depository, None),
        ("every ledger", with_(ledger=zero), depository, None),
        (
            "new depository key",
            with_(action=digests.ORDER_SET_DEPOSITORY, security=zero, key=new_key),
            depository,
            None,
        ),
        ("signed by a stranger", base, stranger, "NotDepository"),
        ("unknown action", with_(action=4), depository, "InvalidOrder"),
        ("key on a halt", with_(key=new_key), depository, "InvalidOrder"),
        (
            "key change without key",
            with_(action=digests.ORDER_SET_DEPOSITORY),
            depository,
            "InvalidOrder",
        ),
        ("another network", with_(network=words.evm_network_word(1)), depository, "WrongLedger"),
        ("another ledger", with_(ledger=words.ledger_word("fabric-b")), depository, "WrongLedger"),
        ("expired", with_(expiry=1_700_000_000), depository, "OrderExpired"),
        ("replayed sequence", with_(sequence=5), depository, "StaleOrder"),
        ("lower sequence", with_(sequence=4), depository, "StaleOrder"),
    ]
    cases = []
    for name, order, key, expect in signed:
        sig = _sign(key, order.digest)
        cases.append((name, order, sig, expect))
    good = _sign(depository, base.digest)
    s_int = int.from_bytes(good[32:64], "big")
    high_s = good[:32] + (SECP256K1_N - s_int).to_bytes(32, "big") + bytes([55 - good[64]])
    cases += [
        ("high s twin", base, high_s, "InvalidSignature"),
        ("truncated", base, good[:64], "InvalidSignature"),
        ("signed for other terms", with_(sequence=8), good, "NotDepository"),
    ]
    out = []
    for name, order, sig, expect in cases:
        try:
            check_order(order, sig, _address(depository), network, ledger, 5, 1_700_000_000)
            got = None
        except ProtocolError as exc:
            got = exc.reason.value
        assert got == expect, (name, got)
        out.append(
            {
                "name": name,
                "order": _order_json(order),
                "digest": _hex(order.digest),
                "signature": _hex(sig),
                "expect": expect,
            }
        )
    return {
        "depository": _hex(_address(depository)),
        "network": _hex(network),
        "ledger": _hex(ledger),
        "last_sequence": 5,
        "now": 1_700_000_000,
        "cases": out,
    }


def _instructions() -> list[dict[str, Any]]:
    brokerage, stranger = vector_key(10), vector_key(11)
    network = words.evm_network_word(31337)
    other_network = words.evm_network_word(1)
    t, other = _terms_cases()[0], _terms_cases()[1]
    digest = digests.instruction_digest(network, t.terms_hash)
    good = _sign(brokerage, digest)
    s_int = int.from_bytes(good[32:64], "big")
    high_s = good[:32] + (SECP256K1_N - s_int).to_bytes(32, "big") + bytes([55 - good[64]])
    cases = [
        ("signed by the instructor", good, None),
        ("no instruction", b"", "MissingInstruction"),
        ("signed by a stranger", _sign(stranger, digest), "InvalidInstruction"),
        (
            "signed for other terms",
            _sign(brokerage, digests.instruction_digest(network, other.terms_hash)),
            "InvalidInstruction",
        ),
        (
            "signed for another network",
            _sign(brokerage, digests.instruction_digest(other_network, t.terms_hash)),
            "InvalidInstruction",
        ),
        ("high s twin", high_s, "InvalidInstruction"),
        ("bad v", good[:64] + b"\x00", "InvalidInstruction"),
        ("truncated", good[:64], "InvalidInstruction"),
        (
            "eip-191 prefixed",
            _sign(brokerage, keccak256(b"\x19Ethereum Signed Message:\n32" + digest)),
            "InvalidInstruction",
        ),
    ]
    out = []
    for name, sig, expect in cases:
        try:
            check_instruction(digest, t.instructor, sig)
            got = None
        except ProtocolError as exc:
            got = exc.reason.value
        assert got == expect, (name, got)
        out.append(
            {
                "name": name,
                "network": _hex(network),
                "terms_hash": _hex(t.terms_hash),
                "instructor": _hex(t.instructor),
                "digest": _hex(digest),
                "instruction": _hex(sig),
                "expect": expect,
            }
        )
    return out


def _certificates() -> dict[str, Any]:
    keys = sorted((vector_key(i) for i in range(5)), key=_address)
    members, outsider = keys[:4], keys[4]
    digest = keccak256(b"KSTB/vector-digest")
    sig = {k.secret: _sign(k, digest) for k in keys}
    a, b, c, d = (sig[k.secret] for k in members)
    s_int = int.from_bytes(a[32:64], "big")
    high_s = a[:32] + (SECP256K1_N - s_int).to_bytes(32, "big") + bytes([55 - a[64]])
    bad_v = a[:64] + bytes([a[64] - 27])
    other = _sign(members[0], keccak256(b"another digest"))
    cases = [
        _cert_case("threshold, ascending", digest, 3, [a, b, c], None),
        _cert_case("all four", digest, 3, [a, b, c, d], None),
        _cert_case("wrong epoch", digest, 2, [a, b, c], "WrongEpoch"),
        _cert_case("malformed", digest, 3, None, "MalformedSignatures"),
        _cert_case("too few", digest, 3, [a, b], "TooFewSignatures"),
        _cert_case("duplicate signer", digest, 3, [a, a, b], "SignersNotAscending"),
        _cert_case("descending", digest, 3, [c, b, a], "SignersNotAscending"),
        _cert_case("outsider", digest, 3, [a, b, sig[outsider.secret]], "NotCommitteeMember"),
        _cert_case("high s twin", digest, 3, [high_s, b, c], "InvalidSignature"),
        _cert_case("bad v", digest, 3, [bad_v, b, c], "InvalidSignature"),
        _cert_case("short signature", digest, 3, [a[:64], b, c], "InvalidSignature"),
        _cert_case("other digest", digest, 3, [a, b, other], None),
    ]
    # "other digest" recovers a stranger: whatever the rule says is the golden answer.
    for case in cases:
        case["expect"] = _expected(case, [_address(k) for k in members])
    return {
        "epoch": 3,
        "threshold": 3,
        "members": [_hex(_address(k)) for k in members],
        "cases": cases,
    }


def _expected(case: dict[str, Any], members: list[bytes]) -> str | None:
    sigs = case["signatures"]
    try:
        check_certificate(
            bytes.fromhex(case["digest"][2:]),
            case["epoch"],
            3,
            3,
            members,
            None if sigs is None else [bytes.fromhex(s[2:]) for s in sigs],
        )
    except ProtocolError as exc:
        return exc.reason.value
    return None


def render() -> str:
    """The file's exact text."""
    return json.dumps(build(), indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if vectors.json drifted")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not VECTORS.exists() or VECTORS.read_text(encoding="utf-8") != text:
            print("bridge/core/vectors.json drifted from the core", file=sys.stderr)
            return 1
        print("vectors match the core")
        return 0
    VECTORS.write_text(text, encoding="utf-8")
    print(f"wrote {VECTORS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

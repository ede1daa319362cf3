"""The protocol core and its vendored chaincode copy against the golden vectors.

``bridge/core/vectors.json`` is committed; every implementation is checked against it
(Solidity in tests/integration/test_core_vectors_evm.py). The vendored copy must also be
exactly what ``python -m bridge.tools.vendor_core`` generates.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bridge.devnet.processes import REPO_ROOT

pytestmark = [pytest.mark.unit, pytest.mark.security]

sys.path.insert(0, str(REPO_ROOT / "contracts" / "fabric"))

VECTORS: dict[str, Any] = json.loads((REPO_ROOT / "bridge/core/vectors.json").read_text())
CORES = ["bridge.core", "kstb_chaincode.core"]


def b(text: str) -> bytes:
    assert text.startswith("0x")
    return bytes.fromhex(text[2:])


def core(package: str, module: str) -> ModuleType:
    return importlib.import_module(f"{package}.{module}")


@pytest.mark.parametrize("package", CORES)
def test_tags_and_words(package: str) -> None:
    digests, words = core(package, "digests"), core(package, "words")
    assert VECTORS["protocol_version"] == digests.PROTOCOL_VERSION
    assert b(VECTORS["tags"]["transfer"]) == digests.TRANSFER_TAG
    assert b(VECTORS["tags"]["terms"]) == digests.TERMS_TAG
    assert b(VECTORS["tags"]["claim"]) == digests.CLAIM_TAG
    assert b(VECTORS["tags"]["instruction"]) == digests.INSTRUCTION_TAG
    for name, word in VECTORS["ledger_words"].items():
        assert words.ledger_word(name) == b(word)
    for isin, word in VECTORS["security_words"].items():
        assert words.security_word(isin) == b(word)
    for bad in VECTORS["invalid_isins"]:
        with pytest.raises(ValueError, match="not a valid ISIN"):
            words.security_word(bad)
    for case in VECTORS["fabric_bridge_words"]:
        assert words.fabric_bridge_word(case["channel"], case["chaincode"]) == b(case["word"])
    for chain_id, word in VECTORS["evm_network_words"].items():
        assert words.evm_network_word(int(chain_id)) == b(word)


def _terms(digests: ModuleType, obj: dict[str, Any]) -> Any:
    fields = {name: b(obj[name]) for name in digests.WORD_FIELDS}
    return digests.Terms(amount=int(obj["amount"]), deadline=obj["deadline"], **fields)


@pytest.mark.parametrize("package", CORES)
def test_transfer_ids_and_terms_hashes(package: str) -> None:
    digests = core(package, "digests")
    assert VECTORS["terms"]
    for case in VECTORS["terms"]:
        t = _terms(digests, case["terms"])
        assert t.transfer_id == b(case["transfer_id"])
        assert t.terms_hash == b(case["terms_hash"])


@pytest.mark.parametrize("package", CORES)
def test_claim_digests(package: str) -> None:
    digests = core(package, "digests")
    assert VECTORS["claims"]
    for c in VECTORS["claims"]:
        got = digests.claim_digest(
            b(c["network"]),
            b(c["ledger"]),
            b(c["bridge"]),
            c["epoch"],
            c["kind"],
            b(c["transfer_id"]),
            b(c["terms_hash"]),
        )
        assert got == b(c["digest"])


@pytest.mark.parametrize("package", CORES)
def test_instruction_digests_and_rule(package: str) -> None:
    digests, signatures = core(package, "digests"), core(package, "signatures")
    reasons = core(package, "reasons")
    refused = 0
    for case in VECTORS["instructions"]:
        digest = digests.instruction_digest(b(case["network"]), b(case["terms_hash"]))
        assert digest == b(case["digest"])
        args = (digest, b(case["instructor"]), b(case["instruction"]))
        if case["expect"] is None:
            signatures.check_instruction(*args)
            continue
        refused += 1
        with pytest.raises(reasons.ProtocolError) as info:
            signatures.check_instruction(*args)
        assert info.value.reason.value == case["expect"], case["name"]
    assert refused >= 7


@pytest.mark.parametrize("package", CORES)
def test_certificate_rule(package: str) -> None:
    signatures, reasons = core(package, "signatures"), core(package, "reasons")
    cert = VECTORS["certificates"]
    members = [b(m) for m in cert["members"]]
    refused = 0
    for case in cert["cases"]:
        sigs = case["signatures"]
        args = (
            b(case["digest"]),
            case["epoch"],
            cert["epoch"],
            cert["threshold"],
            members,
            None if sigs is None else [b(s) for s in sigs],
        )
        if case["expect"] is None:
            signatures.check_certificate(*args)
            continue
        refused += 1
        with pytest.raises(reasons.ProtocolError) as info:
            signatures.check_certificate(*args)
        assert info.value.reason.value == case["expect"], case["name"]
    assert refused >= 8


def test_chaincode_parses_the_vector_terms_to_the_same_digests() -> None:
    from kstb_chaincode import protocol as p

    for case in VECTORS["terms"]:
        t = p.parse_terms(json.dumps(case["terms"]))
        assert t.transfer_id == b(case["transfer_id"])
        assert t.terms_hash == b(case["terms_hash"])
        assert p.terms_to_json(t) == case["terms"]


def test_error_reasons_are_the_contract_error_names() -> None:
    from bridge.core.reasons import ErrorReason

    sol = "\n".join(p.read_text() for p in (REPO_ROOT / "contracts/evm/src").glob("*.sol"))
    import re

    declared = set(re.findall(r"\berror (\w+)\(", sol))
    assert declared <= {r.value for r in ErrorReason}, declared - {r.value for r in ErrorReason}
    chaincode = (REPO_ROOT / "contracts/fabric/kstb_chaincode/protocol.py").read_text()
    used = set(re.findall(r'ChaincodeError\(\s*"(\w+)"', chaincode))
    assert used <= {r.value for r in ErrorReason}, used - {r.value for r in ErrorReason}
    assert ErrorReason.parse("TermsMismatch") is ErrorReason.TERMS_MISMATCH
    assert ErrorReason.parse("SomethingElse") is None


@pytest.mark.parametrize("tool", ["bridge.tools.vendor_core", "bridge.tools.core_vectors"])
def test_generated_files_have_not_drifted(tool: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", tool, "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_vendor_drift_is_detected(tmp_path: Path) -> None:
    from bridge.tools.vendor_core import drifted, rendered, write

    expected = rendered()
    write(expected, tmp_path)
    assert drifted(expected, tmp_path) == []
    (tmp_path / "digests.py").write_text("# edited\n")
    (tmp_path / "extra.py").write_text("")
    (tmp_path / "words.py").unlink()
    assert drifted(expected, tmp_path) == ["digests.py", "extra.py", "words.py"]
    assert all(t.startswith("# Generated by") for t in expected.values())


def test_the_core_imports_nothing_else_from_the_repository() -> None:
    for path in (REPO_ROOT / "bridge/core").glob("*.py"):
        text = path.read_text()
        assert "from bridge" not in text and "import bridge" not in text, path
        assert "web3" not in text and "grpc" not in text and "eth_abi" not in text, path


# ---- committee rotation


@pytest.mark.governance
@pytest.mark.parametrize("package", CORES)
def test_rotation_digests(package: str) -> None:
    digests = core(package, "digests")
    assert b(VECTORS["tags"]["rotation"]) == digests.ROTATION_TAG
    assert len(VECTORS["rotations"]) >= 5
    seen = set()
    for c in VECTORS["rotations"]:
        members = [b(m) for m in c["members"]]
        assert digests.members_hash(members) == b(c["members_hash"])
        got = digests.rotation_digest(
            b(c["network"]),
            b(c["ledger"]),
            b(c["bridge"]),
            c["epoch"],
            c["next_epoch"],
            c["threshold"],
            members,
            c["activation"],
            c["overlap"],
        )
        assert got == b(c["digest"])
        seen.add(got)
    assert len(seen) == len(VECTORS["rotations"])  # every field is bound


# ---- depository halt


@pytest.mark.governance
@pytest.mark.parametrize("package", CORES)
def test_order_digests_and_rule(package: str) -> None:
    """Depository orders: digest, and the acceptance rule with its precise refusals."""
    digests, signatures = core(package, "digests"), core(package, "signatures")
    reasons = core(package, "reasons")
    assert b(VECTORS["tags"]["order"]) == digests.ORDER_TAG
    spec = VECTORS["orders"]
    refused = set()
    for case in spec["cases"]:
        o = case["order"]
        order = digests.Order(
            network=b(o["network"]),
            ledger=b(o["ledger"]),
            security=b(o["security"]),
            action=o["action"],
            sequence=o["sequence"],
            expiry=o["expiry"],
            key=b(o["key"]),
        )
        assert order.digest == b(case["digest"]), case["name"]
        args = (
            order,
            b(case["signature"]),
            b(spec["depository"]),
            b(spec["network"]),
            b(spec["ledger"]),
            spec["last_sequence"],
            spec["now"],
        )
        if case["expect"] is None:
            signatures.check_order(*args)
            continue
        refused.add(case["expect"])
        with pytest.raises(reasons.ProtocolError) as info:
            signatures.check_order(*args)
        assert info.value.reason.value == case["expect"], case["name"]
    assert refused >= {
        "NotDepository",
        "InvalidOrder",
        "WrongLedger",
        "OrderExpired",
        "StaleOrder",
        "InvalidSignature",
    }
    with pytest.raises(reasons.ProtocolError) as info:
        signatures.check_order(order, b"", None, bytes(32), bytes(32), 0, None)
    assert info.value.reason.value == "NoDepository"


# ---- batched certificates (ADR 0025)


@pytest.mark.batch
@pytest.mark.parametrize("package", CORES)
def test_batch_leaves_nodes_trees_and_root_digests(package: str) -> None:
    """Every tree's root, root digest and every item's leaf and proof, from both cores."""
    batch, digests = core(package, "batch"), core(package, "digests")
    spec = VECTORS["batches"]
    assert b(spec["tags"]["leaf"]) == batch.BATCH_LEAF_TAG
    assert b(spec["tags"]["node"]) == batch.BATCH_NODE_TAG
    assert b(spec["tags"]["root"]) == batch.BATCH_ROOT_TAG
    assert batch.batch_leaf(b(spec["leaf"]["claim_digest"])) == b(spec["leaf"]["leaf"])
    node = spec["node"]
    assert batch.batch_node(b(node["a"]), b(node["b"])) == b(node["node"])
    assert batch.batch_node(b(node["b"]), b(node["a"])) == b(node["node"])
    words = (b(spec["network"]), b(spec["ledger"]), b(spec["bridge"]))
    assert [t["count"] for t in spec["trees"]] == [1, 2, 3, 5]
    for tree in spec["trees"]:
        claims = [
            batch.BatchClaim(
                *words, spec["epoch"], spec["kind"], b(i["transfer_id"]), b(i["terms_hash"])
            )
            for i in tree["items"]
        ]
        built = batch.build_batch(claims)
        assert built.root == b(tree["root"])
        assert built.digest == b(tree["root_digest"])
        assert built.digest == batch.batch_root_digest(
            *words, spec["epoch"], spec["kind"], b(tree["root"]), tree["count"]
        )
        for c, item in zip(claims, tree["items"], strict=True):
            assert c.digest == b(item["claim_digest"])
            assert c.digest == digests.claim_digest(
                *words, spec["epoch"], spec["kind"], c.transfer_id, c.terms_hash
            )
            assert c.leaf == b(item["leaf"])
            proof = [b(p) for p in item["proof"]]
            assert list(built.proof(c)) == proof
            assert batch.verify_proof(c.leaf, proof, built.root)
            # Domain separation: a leaf, the root digest and the single-claim digest differ.
            assert c.leaf != c.digest and built.digest not in (c.digest, built.root)
    single = spec["trees"][0]
    assert single["items"][0]["proof"] == [] and single["root"] == single["items"][0]["leaf"]


@pytest.mark.batch
@pytest.mark.parametrize("package", CORES)
def test_batch_certificate_and_item_rules(package: str) -> None:
    batch, reasons = core(package, "batch"), core(package, "reasons")
    spec = VECTORS["batches"]
    rule = spec["certificate_rule"]
    words = (b(spec["network"]), b(spec["ledger"]), b(spec["bridge"]))
    members = [b(m) for m in rule["members"]]
    refused = set()
    for case in rule["cases"]:
        cert = batch.BatchCertificate(
            case["epoch"],
            case["kind"],
            b(case["root"]),
            case["count"],
            tuple(b(s) for s in case["signatures"]),
        )
        args = (cert, case["needed_kind"], case["items"], *words, rule["current_epoch"])
        if case["expect"] is None:
            batch.check_batch_certificate(*args, rule["threshold"], members)
            continue
        refused.add(case["expect"])
        with pytest.raises(reasons.ProtocolError) as info:
            batch.check_batch_certificate(*args, rule["threshold"], members)
        assert info.value.reason.value == case["expect"], case["name"]
    assert refused >= {
        "WrongBatchKind",
        "TooFewSignatures",
        "NotCommitteeMember",
        "InvalidBatch",
        "WrongEpoch",
    }
    cert = batch.BatchCertificate(spec["epoch"], spec["kind"], b(spec["items"]["root"]), 3, ())
    for case in spec["items"]["cases"]:
        args = (
            cert,
            words[0],
            b(case["ledger"]),
            words[2],
            b(case["transfer_id"]),
            b(case["terms_hash"]),
            [b(p) for p in case["proof"]],
        )
        if case["expect"] is None:
            batch.check_batch_item(*args)
            continue
        with pytest.raises(reasons.ProtocolError) as info:
            batch.check_batch_item(*args)
        assert info.value.reason.value == case["expect"], case["name"]


@pytest.mark.batch
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16, 33, 100])
def test_every_proof_of_every_tree_size_verifies_and_only_there(n: int) -> None:
    from bridge.core import batch
    from bridge.core.hashing import keccak256

    leaves = [keccak256(i.to_bytes(4, "big")) for i in range(n)]
    tree = batch.build_tree(leaves)
    assert tree.leaves == tuple(sorted(leaves)) and tree.count == n
    other = batch.build_tree([*leaves, keccak256(b"x")])
    for leaf in leaves:
        proof = tree.proof(leaf)
        assert len(proof) <= max(1, (n - 1).bit_length())
        assert batch.verify_proof(leaf, proof, tree.root)
        assert not batch.verify_proof(leaf, proof, other.root)
        assert not batch.verify_proof(keccak256(leaf), proof, tree.root)
    # An internal node is never accepted as a leaf: the verifier hashes the claim into a leaf.
    if n >= 2:
        node = tree.levels[1][0]
        assert batch.batch_leaf(node) not in tree.leaves


@pytest.mark.batch
def test_building_refuses_duplicates_mixed_claims_and_empty_batches() -> None:
    from bridge.core import batch, digests
    from bridge.core.reasons import ErrorReason, ProtocolError

    w = bytes(32)

    def claim(**kw: Any) -> Any:
        base: dict[str, Any] = {
            "network": w, "ledger": w, "bridge": w, "epoch": 1,
            "kind": digests.CLAIM_COMMIT, "transfer_id": b"\x01" * 32, "terms_hash": w,
        }  # fmt: skip
        return batch.BatchClaim(**{**base, **kw})

    expect = [
        ([], ErrorReason.INVALID_BATCH),
        ([claim(), claim()], ErrorReason.DUPLICATE_BATCH_ITEM),
        ([claim(), claim(transfer_id=w, ledger=b"\x02" * 32)], ErrorReason.WRONG_LEDGER),
        ([claim(), claim(transfer_id=w, epoch=2)], ErrorReason.WRONG_EPOCH),
        ([claim(), claim(transfer_id=w, kind=digests.CLAIM_ABORT)], ErrorReason.WRONG_BATCH_KIND),
        ([claim(kind=9)], ErrorReason.INVALID_BATCH),
    ]
    for claims, reason in expect:
        with pytest.raises(ProtocolError) as info:
            batch.build_batch(claims)
        assert info.value.reason is reason
    with pytest.raises(ProtocolError) as info:
        batch.build_tree([w]).proof(b"\x01" * 32)
    assert info.value.reason is ErrorReason.INVALID_BATCH_PROOF
    with pytest.raises(ProtocolError) as info:
        batch.check_distinct([w, b"\x01" * 32, w])
    assert info.value.reason is ErrorReason.DUPLICATE_BATCH_ITEM
    assert not batch.verify_proof(w, [w] * (batch.MAX_PROOF_LENGTH + 1), w)

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

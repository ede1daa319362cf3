"""The committed EVM artifacts are exactly what the pinned compiler makes of the sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bridge.domain.hashing import keccak256
from bridge.ledgers.evm.artifacts import CONTRACT_NAMES, load_artifact
from bridge.tools.build_contracts import ARTIFACTS_DIR, EVM_DIR, compile_into, diff_artifacts

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fresh_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifacts compiled from the current ``contracts/evm/src`` (the `--check` path)."""
    out = tmp_path_factory.mktemp("fresh-artifacts")
    compile_into(out)
    return out


def test_committed_artifacts_match_a_fresh_compile(fresh_dir: Path) -> None:
    problems = diff_artifacts(fresh_dir, ARTIFACTS_DIR)
    assert problems == [], (
        "contract artifacts are out of date; run `python -m bridge.tools.build_contracts`:\n"
        + "\n".join(problems)
    )


def test_the_check_detects_an_edited_or_missing_artifact(fresh_dir: Path, tmp_path: Path) -> None:
    committed = tmp_path / "committed"
    shutil.copytree(fresh_dir, committed)
    assert diff_artifacts(fresh_dir, committed) == []
    target = committed / "BridgeEndpoint.json"
    target.write_text(target.read_text().replace('"bytecode": "0x', '"bytecode": "0x00', 1))
    (committed / "SecurityToken.json").unlink()
    problems = diff_artifacts(fresh_dir, committed)
    assert len(problems) == 2
    assert any("BridgeEndpoint.json: differs" in p for p in problems)
    assert any("SecurityToken.json: missing" in p for p in problems)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_artifact_shape(name: str) -> None:
    text = (ARTIFACTS_DIR / f"{name}.json").read_text()
    assert text.endswith("}\n")
    art = load_artifact(name)
    assert art.contract_name == name
    assert art.bytecode
    assert art.compiler["version"].startswith("0.8.30+")
    assert any(item["type"] == "error" for item in art.abi)


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_artifact_records_the_current_sources(name: str) -> None:
    """Fast (no compiler): every source file the artifact was built from is unchanged."""
    sources = json.loads((ARTIFACTS_DIR / f"{name}.json").read_text())["sources"]
    assert f"src/{name}.sol" in sources
    for unit, digest in sources.items():
        current = "0x" + keccak256((EVM_DIR / unit).read_bytes()).hex()
        assert current == digest, f"{unit} changed since the artifacts were built"

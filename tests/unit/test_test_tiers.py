"""The suite's tiers (tests/conftest.py): ``make test`` runs the tool-free tier while the
tools build, so a test there must not need a built tool, and the tiers must stay complements.

The guard is a scan for the ways this suite reaches a built tool (the ``.cache`` folder, the
devnet starters of Fabric, geth and CometBFT, the tool modules and binaries); a file of the
tool-free tier that matches one must be listed in ``NEEDS_TOOLS``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import NEEDS_TOOLS, TOOL_FREE, tool_free

pytestmark = [pytest.mark.unit, pytest.mark.ops]

ROOT = Path(__file__).resolve().parents[2]
TOOL_USE = re.compile(
    r"""["']\.cache["']|FabricNetwork|GethNetwork|CometChain|geth_binary|cometbft_binary"""
    r"""|bridge\.tools import buf|systemd-analyze|kubeconform|["']helm["']"""
)
"""How a test reaches something ``make tools`` builds."""


def test_every_listed_path_exists() -> None:
    for prefix in (*TOOL_FREE, *NEEDS_TOOLS):
        assert (ROOT / prefix).exists(), f"{prefix} in tests/conftest.py names nothing"


def test_no_tool_free_file_reaches_a_built_tool() -> None:
    offenders = []
    for prefix in TOOL_FREE:
        for path in sorted((ROOT / prefix).rglob("*.py")):
            nodeid = path.relative_to(ROOT).as_posix()
            if path.name == Path(__file__).name or not tool_free(nodeid + "::t"):
                continue
            if TOOL_USE.search(path.read_text(encoding="utf-8")):
                offenders.append(nodeid)
    assert not offenders, f"list these in NEEDS_TOOLS (tests/conftest.py): {offenders}"


@pytest.mark.parametrize(
    ("nodeid", "free"),
    [
        ("tests/unit/test_config.py::test_x", True),
        ("tests/integration/test_evm_adapter.py::test_x[a]", True),
        ("tests/unit/test_buf.py::test_x", False),
        ("tests/integration/fabric/test_fabric_adapter.py::test_x", False),
        ("tests/integration/cometbft/test_chain.py::test_x", False),
        ("tests/conformance/test_rotation.py::test_x[evm]", False),
        ("tests/e2e/test_transfers.py::test_x", False),
    ],
)
def test_each_test_is_in_exactly_one_tier(nodeid: str, free: bool) -> None:
    assert tool_free(nodeid) is free

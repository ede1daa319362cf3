"""The suite's two tiers, so ``make test`` can run the tool-free one while the tools build.

``pytest --tier=tool-free`` keeps the tests that need nothing ``make tools`` builds (anvil
comes with ``npm install``, SoftHSM2 and PostgreSQL with ``make setup``): the unit and the
anvil integration tests, less the files listed in :data:`NEEDS_TOOLS`. ``--tier=needs-tools``
keeps every other test. The two are complements by construction (one predicate), so the two
runs together are exactly a plain ``pytest``; without ``--tier`` nothing is deselected.

A unit or anvil-integration test that needs a built tool (Fabric, geth, CometBFT, buf,
Helm, kubeconform, systemd-analyze) must have its file (or folder) listed in
:data:`NEEDS_TOOLS`; otherwise it runs while the tools build, and in CI (where a missing tool
fails rather than skips) it fails.
"""

from __future__ import annotations

import os

import pytest

# Every value the chaincode protocol takes from a leg record instead of reading it is read
# and compared too, in this process (the protocol's unit tests) and in every chaincode
# server the tests start (which inherit the environment): protocol.CHECK_ASSUMED.
os.environ["KSTB_CHAINCODE_CHECK_ASSUMED"] = "1"

TIERS = ("tool-free", "needs-tools")
TOOL_FREE = ("tests/unit/", "tests/integration/")
"""Node id prefixes of the tool-free tier (less :data:`NEEDS_TOOLS`)."""
NEEDS_TOOLS = (
    "tests/unit/test_buf.py",  # buf and the Go protoc plugins
    "tests/unit/test_packaging.py",  # systemd-analyze, Helm, kubeconform
    "tests/unit/test_cometbft_app.py",  # the CometBFT module's protos in .cache/cometbft
    "tests/integration/fabric/",
    "tests/integration/cometbft/",
)
"""Node id prefixes under :data:`TOOL_FREE` that need a tool ``make tools`` builds."""


def tool_free(nodeid: str) -> bool:
    """True when the test ``nodeid`` (relative to the repository root) needs no built tool."""
    return nodeid.startswith(TOOL_FREE) and not nodeid.startswith(NEEDS_TOOLS)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tier",
        choices=TIERS,
        default=None,
        help="run only the tests that need no tool `make tools` builds (tool-free) or only "
        "the others (needs-tools); the two are complements",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the other tier's tests when ``--tier`` is given."""
    tier = config.getoption("--tier")
    if tier is None:
        return
    keep_free = tier == "tool-free"
    selected = [item for item in items if tool_free(item.nodeid) == keep_free]
    deselected = [item for item in items if tool_free(item.nodeid) != keep_free]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected

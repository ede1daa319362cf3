"""SECURITY (review s23): importing web3 imports py_ecc, which raises the interpreter's
recursion limit to 100,000; with it a deeply nested JSON answer from any node or peer
overflows the C stack and kills the process. The EVM adapter restores Python's default, so
every daemon that reads an EVM ledger (and any other) refuses such input with a
RecursionError it handles. Checked in fresh interpreters, so no other test's imports count."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.security]

NESTED = """
import json, sys
try:
    json.loads("[" * 200_000)
except RecursionError:
    print("refused", sys.getrecursionlimit())
"""


def _run(prelude: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", prelude + NESTED],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_evm_adapter_restores_the_default_recursion_limit() -> None:
    done = _run("import bridge.ledgers.evm.adapter\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["refused", "1000"]


def test_every_daemon_entry_keeps_it_after_opening_an_evm_ledger() -> None:
    """The relayer and committee member entry points, then the EVM kind's adapter as
    ``open`` imports it: the limit stays the default."""
    done = _run(
        "import relayers.__main__, verifiers.__main__, bridge.coordinator.__main__\n"
        "from bridge.ledgers.kinds import get_kind\n"
        "import importlib; importlib.import_module(type(get_kind('evm')).__module__)\n"
        "import bridge.ledgers.evm.adapter, web3, eth_account\n"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["refused", "1000"]

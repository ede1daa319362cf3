"""The Go example's answer check (review F8): ``go test`` of examples/go-client/verify.go.

The client recomputes the transfer id from the terms it signed (``Terms.TransferID``,
itself checked against bridge/core/vectors.json by tests/unit/test_buf.py) and refuses an
answer whose id, key, security, ledgers, sender, recipient or amount differ. The devnet
control (a lying coordinator, exit 4) is in tests/e2e/test_go_client.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge.tools.gen_go_client import CLIENT_DIR

pytestmark = [pytest.mark.unit, pytest.mark.batch, pytest.mark.security]


def test_the_go_client_refuses_an_answer_that_is_not_the_signed_transfer() -> None:
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        if os.environ.get("CI"):
            pytest.fail("the Go toolchain is missing in CI")
        pytest.skip("the Go toolchain is not installed")
    env = dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false", GOTOOLCHAIN="local")
    result = subprocess.run(
        [go, "test", "-count=1", "-run", "^TestCheck", "-v", "."],
        cwd=CLIENT_DIR, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--- PASS: TestCheckRefusesAnotherTransfer" in result.stdout
    assert "--- PASS: TestCheckAcceptsTheSignedTransfer" in result.stdout

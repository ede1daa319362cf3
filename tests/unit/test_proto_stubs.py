"""The committed gRPC stubs are exactly what proto/ generates."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge.devnet.processes import REPO_ROOT

pytestmark = pytest.mark.unit


def test_committed_stubs_match_the_proto_sources() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge.tools.gen_proto", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_drift_is_detected(tmp_path) -> None:
    from bridge.tools.gen_proto import drifted, generate

    out = generate(tmp_path)
    committed = REPO_ROOT / "bridge" / "v1"
    assert drifted(out, committed) == []
    (out / "transfer_pb2.py").write_text("# edited\n")
    assert drifted(out, committed) == ["transfer_pb2.py"]

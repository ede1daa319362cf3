"""Plaintext gRPC is refused unless the loudly named development flag is set."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import NetworkConfig
from bridge.domain.committee import Committee
from bridge.rpc.channels import internal_channel, sync_channel
from bridge.rpc.security import server_security
from bridge.rpc.tls import INSECURE_ENV, PlaintextRefused, require_tls

pytestmark = [pytest.mark.unit, pytest.mark.security]

NETWORK = NetworkConfig(committee=Committee(1, 1, (b"\x01" * 20,)), ledgers={}, securities={})


def test_daemons_and_clients_refuse_plaintext_without_the_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(INSECURE_ENV, raising=False)
    with pytest.raises(
        PlaintextRefused, match=f"plaintext gRPC is refused unless {INSECURE_ENV}=1"
    ):
        require_tls(None, "coordinator")
    with pytest.raises(PlaintextRefused):
        server_security("relayer", NETWORK, None, tmp_path / "audit.jsonl")
    with pytest.raises(PlaintextRefused, match=r"refusing a plaintext channel to 127\.0\.0\.1:1"):
        sync_channel("127.0.0.1:1")
    with pytest.raises(PlaintextRefused):
        internal_channel("127.0.0.1:1")
    monkeypatch.setenv(INSECURE_ENV, "yes")  # only exactly "1" counts
    with pytest.raises(PlaintextRefused):
        require_tls(None, "coordinator")


def test_the_flag_allows_plaintext_and_warns(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv(INSECURE_ENV, "1")
    assert require_tls(None, "coordinator") is None
    security, audit = server_security("verifier", NETWORK, None, tmp_path / "audit.jsonl")
    assert security.credentials is None
    audit.close()
    sync_channel("127.0.0.1:1").close()
    out = capsys.readouterr()
    assert "INSECURE: plaintext gRPC" in out.out + out.err

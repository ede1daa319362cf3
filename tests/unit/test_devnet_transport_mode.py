"""LocalSystem's transport-security switch (used only by bench/security_overhead.py): the
default stays secure, and switching it off is explicit and complete."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.devnet.system import LocalSystem
from bridge.rpc.tls import INSECURE_ENV

pytestmark = [pytest.mark.unit, pytest.mark.security]


def test_the_devnet_is_secure_by_default(tmp_path: Path) -> None:
    system = LocalSystem(tmp_path, ledger_names=())
    assert system.transport_security is True
    entry = system._tls_entry("coordinator")
    assert set(entry) == {"tls"}
    assert Path(entry["tls"]["cert_file"]).is_file()
    assert Path(entry["tls"]["key_file"]).is_file()
    proc = system._process("coordinator", "bridge.coordinator", "coordinator.toml")
    assert proc.env is not None and INSECURE_ENV not in proc.env


def test_plaintext_mode_drops_every_tls_table_and_sets_the_development_flag(
    tmp_path: Path,
) -> None:
    system = LocalSystem(tmp_path, ledger_names=(), transport_security=False)
    assert system._tls_entry("coordinator") == {}
    assert system._client_identity("depository", "coordinator", None) is None
    proc = system._process("coordinator", "bridge.coordinator", "coordinator.toml")
    assert proc.env is not None and proc.env[INSECURE_ENV] == "1"

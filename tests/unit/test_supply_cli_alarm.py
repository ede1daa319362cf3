"""``bridge supply get --max-age``: leaving a security out must not silence its alarm."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bridge.cli import supply as supply_cli
from bridge.cli.main import main
from bridge.config import dump_toml
from bridge.domain.signer import LocalKeySigner
from bridge.domain.supply import Attestation
from tests.unit.test_config import network_data
from tests.unit.test_supply_alarm import signed

pytestmark = [pytest.mark.unit, pytest.mark.security, pytest.mark.supply]

SEEN, LEFT_OUT = "KR7005930003", "US0378331005"  # both in the network file


class OneSecurityFeed:
    """A coordinator's feed that serves a fresh record of SEEN only."""

    attestations: ClassVar[list[Attestation]] = []

    def __init__(self, *args: Any) -> None:
        pass

    async def latest(self, security: str = "") -> list[Attestation]:
        return [x for x in self.attestations if security in ("", x.signed.record.security)]

    async def close(self) -> None:
        pass


@pytest.fixture
def network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    signers = [LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)]
    data = network_data(epoch=1, members=["0x" + s.address.hex() for s in signers])
    path = tmp_path / "network.toml"
    path.write_text(dump_toml(data))
    now = time.time()
    OneSecurityFeed.attestations = [Attestation(1, signed(signers, SEEN, now), (), False, "", now)]
    monkeypatch.setattr(supply_cli, "SupplyFeed", OneSecurityFeed)
    return path


def test_a_security_the_feed_leaves_out_is_stale_by_default(
    network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["supply", "get", "--network", str(network), "--max-age", "30"])
    out = capsys.readouterr().out
    assert code == supply_cli.EXIT_STALE
    assert f"STALE: {LEFT_OUT}: no record received" in out
    assert f"STALE: {SEEN}" not in out


def test_expect_narrows_the_list_explicitly(
    network: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["supply", "get", "--network", str(network), "--max-age", "30", "--expect", SEEN]
    assert main(argv) == supply_cli.EXIT_OK
    argv[-1] = LEFT_OUT
    assert main(argv) == supply_cli.EXIT_STALE
    assert f"STALE: {LEFT_OUT}" in capsys.readouterr().out


def test_expected_securities(network: Path) -> None:
    assert supply_cli.expected_securities(network, "", []) == (SEEN, LEFT_OUT)
    assert supply_cli.expected_securities(network, "", [LEFT_OUT, LEFT_OUT]) == (LEFT_OUT,)
    assert supply_cli.expected_securities(network, SEEN, [LEFT_OUT]) == (SEEN, LEFT_OUT)
    assert supply_cli.expected_securities(network, SEEN, []) == (SEEN,)

"""Configuration for committee rotation (ADR 0009): ``[[committee.later]]`` in the network
file and ``[rotation]`` bounds in verifier.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_coordinator, load_network, load_verifier
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import parse_evm_address
from bridge.domain.rotation import RotationBounds
from tests.unit.test_config import MEMBERS, network_data, write

pytestmark = [pytest.mark.unit, pytest.mark.governance]

LATER = "0x00000000000000000000000000000000000000e1"


def test_later_members_with_endpoints(tmp_path: Path) -> None:
    data = network_data(later=[{"member": LATER, "endpoint": "127.0.0.1:7109"}])
    network = load_network(write(tmp_path / "network.toml", data))
    assert dict(network.later_members) == {parse_evm_address(LATER): "127.0.0.1:7109"}
    assert parse_evm_address(LATER) not in network.committee.members  # genesis unchanged
    # A later member may serve a coordinator's verifiers entry.
    coord = load_coordinator(
        write(
            tmp_path / "coordinator.toml",
            {
                "network": "network.toml",
                "listen": "127.0.0.1:7000",
                "database": "c.sqlite",
                "verifiers": [{"endpoint": "127.0.0.1:7109", "member": LATER}],
                "relayers": {"brokerage-a": "127.0.0.1:7201", "brokerage-b": "127.0.0.1:7202"},
            },
        )
    )
    assert coord.verifier_members == (LATER,)


@pytest.mark.parametrize(
    ("later", "match"),
    [
        ([{"member": MEMBERS[0]}], "twice"),  # a genesis member
        ([{"member": LATER}, {"member": LATER}], "twice"),
        ([{"member": "0x" + "00" * 20}], "zero"),
        ([{"member": LATER, "port": 1}], r"committee\.later\[0\]\.port: unknown key"),
        ([{"endpoint": "x:1"}], "member"),
        ({"member": LATER}, "array"),
    ],
)
def test_later_members_are_validated(tmp_path: Path, later: Any, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        load_network(write(tmp_path / "network.toml", network_data(later=later)))


def verifier(tmp_path: Path, **extra: Any) -> Path:
    write(tmp_path / "network.toml", network_data())
    return write(
        tmp_path / "verifier.toml",
        {"network": "network.toml", "listen": "x:1", "key_file": "k", "vote_db": "v.sqlite"}
        | extra,
    )


def test_rotation_bounds(tmp_path: Path) -> None:
    assert load_verifier(verifier(tmp_path)).rotation == RotationBounds()
    cfg = load_verifier(verifier(tmp_path, rotation={"min_overlap": 60, "max_overlap": 600}))
    assert (cfg.rotation.min_overlap, cfg.rotation.max_overlap) == (60, 600)


@pytest.mark.parametrize(
    "table",
    [
        {"min_overlap": -1},
        {"min_overlap": 0},
        {"min_overlap": 700, "max_overlap": 600},
        {"max_overlap": "1h"},
        {"overlap": 5},
    ],
)
def test_rotation_bounds_are_validated(tmp_path: Path, table: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="rotation"):
        load_verifier(verifier(tmp_path, rotation=table))

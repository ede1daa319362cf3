"""The brokerage guide's permission table names every TransferService method (review F14).

Integrators read docs/brokerage-integration.md §1 to learn what ``brokerage:<L>`` may call;
a method with an authorisation rule in bridge/rpc/rules.py but missing from the table is a
contract nobody was told about (SubmitTransfers and WatchBatch were).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bridge.rpc.rules import RULES
from bridge.v1 import transfer_pb2

pytestmark = [pytest.mark.unit, pytest.mark.batch]

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "brokerage-integration.md"
SERVICE = "/bridge.v1.TransferService/"


def _table_methods() -> set[str]:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index("What `brokerage:<L>` may do")
    rows = []
    for line in text[start:].splitlines()[1:]:
        if rows and not line.startswith("|"):
            break
        if line.startswith("|"):
            rows.append(line)
    first_cells = [row.split("|")[1] for row in rows[2:]]  # after the header and rule
    return {m for cell in first_cells for m in re.findall(r"`(\w+)`", cell)}


def test_every_transfer_service_method_is_in_the_guides_permission_table() -> None:
    ruled = {name.removeprefix(SERVICE) for name in RULES if name.startswith(SERVICE)}
    declared = set(transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].methods_by_name)
    assert ruled == declared
    assert _table_methods() == declared

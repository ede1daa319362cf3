"""The verifier's SignSupply handler refuses an oversized anchor before any other work."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest

from bridge.domain.committee import Committee
from bridge.domain.signer import LocalKeySigner
from bridge.domain.supply import SupplyReading, make_record
from bridge.rpc.supply_convert import record_to_pb
from bridge.v1 import verifier_pb2
from verifiers import supply_log as supply_log_module
from verifiers.service import VerifierServicer
from verifiers.supply_log import SupplyAnchorInvalid, SupplyLog
from verifiers.votes import VoteLog

pytestmark = [pytest.mark.unit, pytest.mark.security]

ISIN = "KR5701ES0016"


@pytest.mark.security
def test_sign_supply_refuses_more_signatures_than_members_before_reading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signers = [LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)]
    committee = Committee(1, 3, tuple(s.address for s in signers))
    log = SupplyLog(tmp_path / "supply.sqlite")
    servicer = VerifierServicer(
        signers[0], committee, {}, VoteLog(tmp_path / "votes.sqlite"), supply_log=log
    )
    recovered: list[bytes] = []

    def counting(*args: Any) -> None:
        recovered.append(args[2])
        raise AssertionError("no signature may be recovered")

    monkeypatch.setattr(supply_log_module, "verify_vote", counting)
    reading = SupplyReading("a", 10, b"\x01" * 32, 1000, 0, 0, 0, 0)
    previous = make_record(ISIN, 6, secrets.token_bytes(32), 1, 0, [reading], {"a": 1000})
    record = make_record(ISIN, 7, previous.digest, 1, 0, [reading], {"a": 1000})
    request = verifier_pb2.SignSupplyRequest(
        record=record_to_pb(record),
        previous=record_to_pb(previous),
        previous_signatures=[signers[1].sign_digest(previous.digest)] * 60_000,
    )
    handler = VerifierServicer.SignSupply.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(
        SupplyAnchorInvalid, match=r"^the anchor carries 60000 signatures, the committee has 4"
    ):
        asyncio.run(handler(servicer, request, None))
    assert recovered == []
    assert log.last(ISIN) is None, "nothing was recorded"
    log.close()

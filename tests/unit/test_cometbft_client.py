"""The CometBFT client and adapter against a scripted (possibly hostile) node: the nonce
under concurrency, and no outcome taken from a node's word for another transaction or for
a rotation it never installed (attacker review s17, items 4 and 8)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from bridge.core.reasons import ErrorReason
from bridge.domain.committee import Committee, CommitteeRotation
from bridge.domain.errors import LedgerRejected, Unavailable
from bridge.domain.ids import LedgerId
from bridge.domain.legs import SignatureSet
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.cometbft.adapter import CometAdapter
from bridge.ledgers.cometbft.envelope import EnvelopeCode, reason_code
from bridge.ledgers.cometbft.rpc import VALID_BLOCKS, CometClient, tx_hash_of

pytestmark = [pytest.mark.unit, pytest.mark.cometbft, pytest.mark.security]

CHAIN = "kstb-unit-1"
KEY = LocalKeySigner(bytes([0x11]) * 32)
MEMBERS = tuple(sorted(LocalKeySigner(bytes([i]) * 32).address for i in range(1, 4)))


class ScriptedNode(CometClient):
    """A client whose node is a script: ``answers[method](params)`` or a coroutine."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:1", CHAIN, KEY, ledger="unit-cmt")
        self.sent: list[bytes] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.tx_answer: dict[str, Any] | None = None
        self.committees: list[Committee] = [Committee(1, 2, MEMBERS)]
        self.lie_hash = False

    async def next_nonce(self) -> int:
        return 7

    async def rpc(self, method: str, **params: str) -> Any:
        if method == "broadcast_tx_sync":
            raw = bytes.fromhex(params["tx"][2:])
            self.sent.append(raw)
            self.entered.set()
            if self.gate is not None:
                await self.gate.wait()
            return {"code": 0, "hash": "00" * 32 if self.lie_hash else tx_hash_of(raw)}
        if method == "tx":
            return self.tx_answer
        if method == "abci_info":
            return {"response": {"last_block_height": "5"}}
        if method == "abci_query":
            body = {
                "committees": [
                    {
                        "epoch": c.epoch,
                        "threshold": c.threshold,
                        "members": ["0x" + m.hex() for m in c.members],
                        "active_from": 0,
                        "active_until": None,
                    }
                    for c in self.committees
                ]
            }
            value = base64.b64encode(json.dumps(body).encode()).decode()
            return {"response": {"code": 0, "value": value, "height": "5"}}
        raise AssertionError(method)


def _committed(raw: bytes, code: int, log: str = "") -> dict[str, Any]:
    return {
        "hash": tx_hash_of(raw),
        "height": "5",
        "tx": base64.b64encode(raw).decode(),
        "tx_result": {"code": code, "log": log},
    }


def test_a_nonce_reset_during_a_broadcast_does_not_break_the_send() -> None:
    """Before: committed() set _nonce = None while send awaited the broadcast, and send's
    ``self._nonce += 1`` raised TypeError after a SUCCESSFUL broadcast."""

    async def run() -> None:
        node = ScriptedNode()
        node.gate = asyncio.Event()
        sending = asyncio.create_task(node.send("RegisterSecurity", ["KR7005930003"]))
        await node.entered.wait()
        stale = b"stale-bytes"
        node.tx_answer = _committed(stale, int(EnvelopeCode.BAD_NONCE))
        resetting = asyncio.create_task(node.committed(tx_hash_of(stale)))
        await asyncio.sleep(0.01)
        node.gate.set()
        tx_hash = await sending
        assert tx_hash == tx_hash_of(node.sent[0])
        assert (await resetting).code == EnvelopeCode.BAD_NONCE
        assert json.loads(node.sent[0])["body"]["nonce"] == 7
        assert json.loads(node.sent[0])["body"]["valid_until"] == 5 + VALID_BLOCKS
        assert node._nonce is None  # reset after the send, re-read before the next

    asyncio.run(run())


def test_a_node_naming_another_tx_hash_at_broadcast_is_unavailable() -> None:
    async def run() -> None:
        node = ScriptedNode()
        node.lie_hash = True
        with pytest.raises(Unavailable, match="another tx hash"):
            await node.send("RegisterSecurity", ["KR7005930003"])
        assert node._nonce is None

    asyncio.run(run())


def test_a_node_answering_another_transaction_is_not_believed() -> None:
    async def run() -> None:
        node = ScriptedNode()
        mine = await node.send("RegisterSecurity", ["KR7005930003"])
        other = b'{"body":"someone else"}'
        node.tx_answer = _committed(other, 0)  # a success, but of other bytes
        with pytest.raises(Unavailable, match="another tx"):
            await node.committed(mine)
        forged = _committed(node.sent[0], 0)
        forged["hash"] = tx_hash_of(other)  # right bytes, wrong hash claimed
        node.tx_answer = forged
        with pytest.raises(Unavailable, match="another tx"):
            await node.committed(mine)
        node.tx_answer = _committed(node.sent[0], 0)
        assert (await node.committed(mine)).code == 0

    asyncio.run(run())


def _adapter(node: ScriptedNode) -> CometAdapter:
    adapter = CometAdapter.__new__(CometAdapter)
    adapter._ledger = LedgerId("unit-cmt")
    adapter._client = node
    return adapter


def _rotation() -> CommitteeRotation:
    return CommitteeRotation(1, Committee(2, 2, MEMBERS), activation=0, overlap=60)


class _Answering(ScriptedNode):
    async def committed(self, tx_hash: str) -> Any:  # every tx: RotationAlreadyInstalled
        self.tx_answer = _committed(
            self.sent[-1], reason_code(ErrorReason.ROTATION_ALREADY_INSTALLED), "{}"
        )
        return await super().committed(tx_hash)


def test_a_forged_rotation_already_installed_code_is_not_recorded_installed() -> None:
    async def run() -> None:
        node = _Answering()
        with pytest.raises(LedgerRejected) as err:
            await _adapter(node).install_committee(_rotation(), SignatureSet(1, ()))
        assert err.value.reason is ErrorReason.MALFORMED_ANSWER

    asyncio.run(run())


def test_rotation_already_installed_confirmed_from_state_is_already_applied() -> None:
    async def run() -> None:
        node = _Answering()
        node.committees.append(_rotation().next)
        out = await _adapter(node).install_committee(_rotation(), SignatureSet(1, ()))
        assert out.already_applied and out.height == 5

    asyncio.run(run())

"""The devnet's geth block authority after a restart (attacker review s17, item 10): the
first forkchoice it announces finalizes the block ``finality_depth`` below the head, as
before the restart, not the head itself."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.devnet import geth_authority
from bridge.devnet.geth_authority import Authority, EngineNode

pytestmark = [pytest.mark.unit, pytest.mark.geth, pytest.mark.security]


def _hash(n: int) -> str:
    return "0x" + f"{n:064x}"


def _chain(head: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_rpc(url: str, method: str, params: list[Any]) -> Any:
        assert method == "eth_getBlockByNumber"
        n = head if params[0] == "latest" else int(params[0], 16)
        assert 0 <= n <= head
        return {"hash": _hash(n), "number": hex(n), "timestamp": hex(1_800_000_000 + n)}

    monkeypatch.setattr(geth_authority, "rpc", fake_rpc)


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_a_restarted_authority_finalizes_depth_below_the_head(
    monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    _chain(10, monkeypatch)
    authority = Authority([EngineNode("http://127.0.0.1:1", b"k")], "x", "0x" + "00" * 20, depth, 1)
    choice = authority._forkchoice()
    assert choice["headBlockHash"] == _hash(10)
    assert choice["finalizedBlockHash"] == _hash(10 - depth)
    assert choice["safeBlockHash"] == _hash(10 - depth)


def test_a_young_chain_finalizes_genesis(monkeypatch: pytest.MonkeyPatch) -> None:
    _chain(1, monkeypatch)
    authority = Authority([EngineNode("http://127.0.0.1:1", b"k")], "x", "0x" + "00" * 20, 3, 1)
    assert authority._forkchoice()["finalizedBlockHash"] == _hash(0)
    assert authority._forkchoice()["headBlockHash"] == _hash(1)


def test_genesis_carries_the_block_gas_limit() -> None:
    from bridge.devnet.geth import DEFAULT_GAS_LIMIT, genesis

    assert int(genesis(1337, {})["gasLimit"], 16) == DEFAULT_GAS_LIMIT
    assert int(genesis(1337, {}, 300_000_000)["gasLimit"], 16) == 300_000_000

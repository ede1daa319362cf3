"""The devnet's geth block authority: after a restart (attacker review s17, item 10) the
first forkchoice it announces finalizes the block ``finality_depth`` below the head, as
before the restart, not the head itself; under a deep pool (issue 14) it publishes only
blocks with transactions, however long the leader's builder takes (up to the bound)."""

from __future__ import annotations

import hashlib
import json
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


def test_the_fill_time_doubles_after_an_empty_build_and_shrinks_back() -> None:
    from bridge.devnet.geth_authority import FILL_MAX_S, FILL_S, next_fill

    assert next_fill(FILL_S, 0) == 2 * FILL_S
    assert next_fill(FILL_MAX_S, 0) == FILL_MAX_S, "bounded"
    assert next_fill(1.0, 40) == 0.8
    assert next_fill(FILL_S, 3) == FILL_S, "never below the first wait"


class _SlowBuilder:
    """A leader whose builder finishes its first pass ``pass_s`` after a build starts:
    asked sooner, it answers the empty block and stops (geth's behaviour). The payload id
    comes from the attributes, as geth's does: the same attributes again answer the stored
    (stopped) payload. Every node accepts every block."""

    def __init__(self, clock: list[float], pass_s: float) -> None:
        self.clock = clock
        self.pass_s = pass_s
        self.builds: dict[str, float] = {}
        self.taken: dict[str, list[str]] = {}
        self.blocks: list[int] = []
        self.published: list[int] = []
        self.url = "fake"

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "engine_forkchoiceUpdatedV3":
            if params[1] is None:
                return {"payloadStatus": {"status": "VALID"}, "payloadId": None}
            pid = "0x" + hashlib.sha256(json.dumps(params[1], sort_keys=True).encode()).hexdigest()
            self.builds.setdefault(pid, self.clock[0])
            return {"payloadStatus": {"status": "VALID"}, "payloadId": pid}
        if method == "engine_getPayloadV3":
            pid = params[0]
            if pid not in self.taken:
                done = self.clock[0] - self.builds[pid] >= self.pass_s
                self.taken[pid] = ["0xaa"] * 5 if done else []
            txs = self.taken[pid]
            self.blocks.append(len(txs))
            n = len(self.blocks)
            return {"executionPayload": {"blockHash": _hash(100 + n), "transactions": txs}}
        assert method == "engine_newPayloadV3"
        self.published.append(len(params[0]["transactions"]))
        return {"status": "VALID"}


def test_a_slow_builder_gets_blocks_with_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    """A builder needing 0.5 s a pass: the authority took its block after 0.15 s each time
    (empty blocks forever while the pool grew); now an empty build is thrown away and
    asked for again with a longer wait, so every published block holds transactions."""
    _chain(1, monkeypatch)
    clock = [0.0]
    monkeypatch.setattr("time.sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    leader = _SlowBuilder(clock, pass_s=0.5)
    authority = Authority([leader], "x", "0x" + "00" * 20, 2, 1)  # type: ignore[list-item]
    published = [authority.produce(with_transactions=True) for _ in range(8)]
    assert leader.blocks[:3] == [0, 0, 5], "0.15 s and 0.3 s were too short, 0.6 s was not"
    assert len(published) == 8 and leader.published == [5] * 8, leader.published
    assert authority._fill < 0.6, "filled builds shorten the wait again"


def test_a_pool_no_block_can_include_does_not_stop_the_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Builds stay empty (a fee cap below the base fee): after the longest wait the empty
    block is published, and the next build starts again from the shortest wait."""
    from bridge.devnet.geth_authority import FILL_MAX_S, FILL_S

    _chain(1, monkeypatch)
    clock = [0.0]
    monkeypatch.setattr("time.sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    leader = _SlowBuilder(clock, pass_s=float("inf"))
    authority = Authority([leader], "x", "0x" + "00" * 20, 2, 1)  # type: ignore[list-item]
    began = clock[0]
    authority.produce(with_transactions=True)
    assert leader.published == [0], "an empty block after the longest wait"
    assert FILL_MAX_S <= clock[0] - began < 3 * FILL_MAX_S, "the doubling waits, bounded"
    assert authority._fill == FILL_S

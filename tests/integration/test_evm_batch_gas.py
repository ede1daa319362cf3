"""Gas of the EVM endpoint's batched steps per batch and per item (issue 14, ADR 0025), for
N = 1, 10, 50, 100 and ``MAX_EVM_BATCH_ITEMS``, on anvil with the endpoints of
``test_evm_batch``: the figures behind ``MAX_EVM_BATCH_ITEMS`` and ADR 0025's table.

The test prints the table (``-s``) and fails when a batch of ``MAX_EVM_BATCH_ITEMS`` items
needs more than half the block gas limit, or when batching stops paying (an item of a
100-item batch must cost less than the single step it replaces)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.devnet.anvil import AnvilNode
from bridge.ledgers.evm.adapter import MAX_EVM_BATCH_ITEMS
from bridge.ledgers.evm.batch import BatchStep
from bridge.ledgers.evm.deploy import issue
from tests.integration.test_evm_batch import batch_of, lock_all, run
from tests.integration.test_evm_contracts import CHAIN_ID, Env, _setup

pytestmark = [pytest.mark.integration, pytest.mark.batch]

SIZES = sorted({1, 10, 50, 100, MAX_EVM_BATCH_ITEMS})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    node = AnvilNode(
        name="batch-gas",
        chain_id=CHAIN_ID,
        block_time=0,
        workdir=Path(tmp_path_factory.mktemp("anvil")),
        extra_args=("--gas-limit", "60000000"),
    ).start()
    try:
        e = _setup(node)
        issue(e.w3, e.admin.private_key, e.a.token, e.alice.address, 10_000_000)
        yield e
    finally:
        node.stop()


def test_gas_per_item_and_per_batch(env: Env) -> None:
    rows: dict[str, dict[int, int]] = {}

    def record(step: str, n: int, gas: int) -> None:
        rows.setdefault(step, {})[n] = gas

    for n in SIZES:
        ts = batch_of(env, n, amount=2)
        record("lockBatch", n, int(lock_all(env, ts)["gasUsed"]))
        record("prepareBatch (B)", n, int(run(env, env.b, BatchStep.PREPARE, ts)["gasUsed"]))
        record("commitBatch (B, mint)", n, int(run(env, env.b, BatchStep.COMMIT, ts)["gasUsed"]))
        record("commitBatch (A, burn)", n, int(run(env, env.a, BatchStep.COMMIT, ts)["gasUsed"]))
        aborted = batch_of(env, n, amount=2)
        lock_all(env, aborted)
        record(
            "abortBatch (A, release)", n, int(run(env, env.a, BatchStep.ABORT, aborted)["gasUsed"])
        )
    limit = int(env.w3.eth.get_block("latest")["gasLimit"])
    print(f"\nblock gas limit {limit}")
    print("| step | " + " | ".join(f"N={n}: batch / per item" for n in SIZES) + " |")
    for step, by_n in rows.items():
        cells = [f"{by_n[n]:,} / {by_n[n] // n:,}" for n in SIZES]
        print(f"| {step} | " + " | ".join(cells) + " |")
    for step, by_n in rows.items():
        # SECURITY of liveness: the largest batch fits well inside the 30M mainnet-style
        # block (anvil here allows 60M so the measurement itself never fails for size).
        assert by_n[MAX_EVM_BATCH_ITEMS] <= 15_000_000, step
        # A batch's fixed cost (transaction, certificate) is shared: per-item cost falls.
        assert by_n[100] // 100 < by_n[1], step

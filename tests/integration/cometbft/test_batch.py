"""Batched steps through a real CometBFT node (issue 14 items 2-4, ADR 0025).

The ABCI application runs the chaincode's protocol module, so ``LockBatch``,
``CommitBatch``, ``AbortBatch`` and ``Legs`` are the same code as on Fabric; this checks
that they are reachable through the node's transactions and queries, that one transaction's
``LegStatesChanged`` event becomes one LedgerEvent per leg, and that refusals come back as
typed result codes with the refused item.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator, Sequence
from typing import cast

import pytest

from bridge.core import batch as core_batch
from bridge.core.digests import claim_digest
from bridge.core.reasons import ErrorReason
from bridge.devnet.anvil import DevAccount, write_key_file
from bridge.devnet.cometbft import CometChain
from bridge.domain.claims import ClaimKind
from bridge.domain.errors import LedgerRejected
from bridge.domain.ids import LedgerId
from bridge.domain.instructions import instruction_digest
from bridge.domain.legs import Action, Leg, LegState
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.ledgers.cometbft.adapter import CometAdapter
from bridge.ledgers.cometbft.envelope import account_id
from bridge.ledgers.fabric import batch
from tests.conformance.harness import BROKER, ISIN, OTHER, SECURITY, new_committee
from tests.conformance.kind_cometbft import CometHarness, require_cometbft

pytestmark = [pytest.mark.integration, pytest.mark.cometbft, pytest.mark.batch]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CometHarness]:
    require_cometbft()
    workdir = tmp_path_factory.mktemp("batch-cmt")
    signers, committee = new_committee()
    chain = CometChain("batch-cmt", workdir, committee).start()
    try:
        relayer = DevAccount.generate()
        key = workdir / "relayer.key"
        write_key_file(key, relayer)
        h = CometHarness(chain, key, signers, committee, ledger=LedgerId("batch-cmt"))
        identity = f"key:{account_id(LocalKeySigner(relayer.private_key).address)}"

        async def setup() -> None:
            await h._admin("SetRelayer", identity, "true")
            await h._admin("SetInstructor", "0x" + BROKER.address.hex(), "true")
            await h._admin("RegisterSecurity", ISIN)

        asyncio.run(setup())
        yield h
    finally:
        chain.stop()


def outbound(h: CometHarness, sender: bytes, amount: int) -> TransferTerms:
    return TransferTerms(
        nonce=secrets.token_bytes(32), security=SECURITY.word, amount=amount,
        src_ledger=h.ledger.word, src_bridge=h.bridge_word, dst_ledger=OTHER.word,
        dst_bridge=secrets.token_bytes(32), sender=sender,
        recipient=bytes(12) + secrets.token_bytes(20), instructor=bytes(12) + BROKER.address,
        deadline=2_000_000_000,
    )  # fmt: skip


def certified(
    h: CometHarness,
    kind: ClaimKind,
    items: Sequence[TransferTerms],
    tree_of: Sequence[TransferTerms] | None = None,
) -> tuple[list[batch.BatchItem], core_batch.BatchCertificate]:
    def leaf(t: TransferTerms) -> bytes:
        return core_batch.batch_leaf(
            claim_digest(
                h.network_word, h.ledger.word, h.bridge_word, 1, int(kind), t.transfer_id,
                t.terms_hash,
            )
        )  # fmt: skip

    tree = core_batch.build_tree(leaf(t) for t in (tree_of if tree_of is not None else items))
    digest = core_batch.batch_root_digest(
        h.network_word, h.ledger.word, h.bridge_word, 1, int(kind), tree.root, tree.count
    )
    cert = core_batch.BatchCertificate(
        1, int(kind), tree.root, tree.count, tuple(s.sign_digest(digest) for s in h.signers[:3])
    )
    return [
        batch.BatchItem(t, proof=tree.proof(leaf(t)) if leaf(t) in tree.leaves else ())
        for t in items
    ], cert


def test_batches_through_a_cometbft_node(harness: CometHarness) -> None:
    async def run() -> None:
        adapter = cast(CometAdapter, harness.relayer())
        try:
            sender = await harness.holder(100)
            start = await adapter.finalized_height()
            terms = [outbound(harness, sender, a) for a in (5, 6, 7)]
            locks = [
                batch.BatchItem(t, BROKER.sign_digest(instruction_digest(harness.network_word, t)))
                for t in terms
            ]
            locked = await adapter.submit_batch(Action.LOCK, locks)
            assert locked.applied == 3
            assert (await adapter.holder_status(SECURITY, sender)).balance == 82
            events = await adapter.events(None, await adapter.finalized_height())
            mine = [e for e in events if e.position.height > start]
            assert [e.transfer_id for e in mine] == [t.transfer_id for t in terms]
            assert len({e.position for e in mine}) == 3
            # an item proven into another root refuses the whole transaction, typed
            bad, bad_cert = certified(
                harness, ClaimKind.COMMIT, terms[:2], tree_of=[terms[0], terms[2]]
            )
            with pytest.raises(LedgerRejected) as info:
                await adapter.submit_batch(Action.COMMIT, bad, bad_cert)
            assert info.value.reason is ErrorReason.INVALID_BATCH_PROOF
            assert batch.refused_item(info.value) == 1
            legs = await adapter.get_legs([t.transfer_id for t in terms], Leg.OUTBOUND)
            assert [s.state for s in legs] == [LegState.LOCKED] * 3
            items, cert = certified(harness, ClaimKind.COMMIT, terms[:2])
            done = await adapter.submit_batch(Action.COMMIT, items, cert)
            assert done.applied == 2
            replay = await adapter.submit_batch(Action.COMMIT, items, cert)
            assert replay.applied == 0 and all(i.skipped for i in replay.items)
            a_items, a_cert = certified(harness, ClaimKind.ABORT, terms[2:])
            await adapter.submit_batch(Action.ABORT, a_items, a_cert)
            legs = await adapter.get_legs([t.transfer_id for t in terms], Leg.OUTBOUND)
            assert [s.state for s in legs] == [
                LegState.BURNED, LegState.BURNED, LegState.RELEASED,
            ]  # fmt: skip
            assert (await adapter.holder_status(SECURITY, sender)).balance == 89
            # many holders in one query (HolderStatuses), each as HolderStatus answers it
            stranger = bytes(12) + bytes(range(1, 21))
            asked = [sender, stranger, bytes(32), sender]
            many = await adapter.holder_statuses(SECURITY, asked)
            assert many == [await adapter.holder_status(SECURITY, h) for h in asked]
            assert [(h.balance, h.receive_status) for h in many] == [
                (89, 0), (0, 2), (0, 5), (89, 0),
            ]  # fmt: skip
            supply = await adapter.supply(SECURITY)
            assert (supply.total_supply, supply.escrowed, supply.burned_out) == (89, 0, 11)
        finally:
            await adapter.close()

    asyncio.run(run())


def test_batch_size_on_cometbft(harness: CometHarness) -> None:
    """A transaction holds at most 64 KiB (the envelope's MAX_TX_BYTES): 48 commits with
    6-hash proofs fit (about 1.25 kB an item); 200 locks are refused before anything is
    sent."""

    async def run() -> None:
        adapter = cast(CometAdapter, harness.relayer())
        try:
            n = 48
            sender = await harness.holder(n)
            terms = [outbound(harness, sender, 1) for _ in range(n)]

            def locks(ts: Sequence[TransferTerms]) -> list[batch.BatchItem]:
                return [
                    batch.BatchItem(
                        t, BROKER.sign_digest(instruction_digest(harness.network_word, t))
                    )
                    for t in ts
                ]

            too_many = [outbound(harness, sender, 1) for _ in range(batch.MAX_BATCH_ITEMS)]
            with pytest.raises(ValueError, match="transaction limit"):
                await adapter.submit_batch(Action.LOCK, locks(too_many))
            assert (await adapter.submit_batch(Action.LOCK, locks(terms))).applied == n
            items, cert = certified(harness, ClaimKind.COMMIT, terms)
            assert (await adapter.submit_batch(Action.COMMIT, items, cert)).applied == n
            legs = await adapter.get_legs([t.transfer_id for t in terms], Leg.OUTBOUND)
            assert {s.state for s in legs} == {LegState.BURNED}
            assert (await adapter.holder_status(SECURITY, sender)).balance == 0
        finally:
            await adapter.close()

    asyncio.run(run())

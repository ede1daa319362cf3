"""The whole bridge as processes: two anvil ledgers, 4 verifiers, 2 relayers, coordinator."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import uuid
from collections.abc import Iterator

import pytest

from bridge.devnet.client import RoutedTransferStub
from bridge.devnet.system import DEMO_ISIN, POSTGRES_ENV, STORE_ENV, LocalSystem
from bridge.domain.ids import LedgerId, SecurityId, evm_address_word
from bridge.domain.supply import Attestation
from bridge.domain.terms import TransferTerms
from bridge.ledgers.evm import deploy
from bridge.supply_client import SupplyFeed
from bridge.v1 import transfer_pb2
from tests.postgres import start_cluster

BLOCK_TIME = 0.5

E2E_STORE_ENV = "KSTB_E2E_STORE"
"""``postgres``: every LocalSystem of the session runs its coordinator on PostgreSQL."""


def _on_postgres() -> bool:
    return os.environ.get(E2E_STORE_ENV, "sqlite") == "postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In the PostgreSQL pass, every e2e test also carries the ``postgres`` marker."""
    if _on_postgres():
        for item in items:
            if "/tests/e2e/" in str(item.path):
                item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session", autouse=True)
def coordinator_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The coordinator engine of this session's systems. With KSTB_E2E_STORE=postgres a
    real cluster is started here (initdb + pg_ctl under the basetemp) and each LocalSystem
    creates its own database on it (ADR 0013)."""
    if not _on_postgres():
        yield "sqlite"
        return
    cluster = start_cluster(tmp_path_factory.mktemp("postgres"))
    os.environ[STORE_ENV] = "postgres"
    os.environ[POSTGRES_ENV] = cluster.url("postgres")
    try:
        yield "postgres"
    finally:
        os.environ.pop(STORE_ENV, None)
        os.environ.pop(POSTGRES_ENV, None)
        cluster.stop()


@pytest.fixture(scope="package")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """A running system shared by the e2e tests (each test uses fresh holders)."""
    with LocalSystem(tmp_path_factory.mktemp("e2e"), block_time=BLOCK_TIME, transfer_ttl=60) as s:
        yield s


@pytest.fixture
def stub(system: LocalSystem) -> Iterator[RoutedTransferStub]:
    """A TransferService client: submits as the source ledger's brokerage (mTLS), each
    request instructed by that brokerage's devnet key (protocol v2); reads as the depository."""
    routed = RoutedTransferStub(
        system, fallback_ledger=next(iter(system.ledgers)), instruct=system.brokerage.instruct
    )
    yield routed
    routed.close()


def eligible_everywhere(system: LocalSystem, address: str) -> None:
    """Make ``address`` an eligible holder on every ledger."""
    for h in system.ledgers.values():
        deploy.set_eligible(h.w3, h.admin.private_key, h.tokens[DEMO_ISIN], address, True)


def demo_request(
    sender: str,
    recipient: str,
    amount: str,
    source: str = "brokerage-a",
    target: str = "brokerage-b",
) -> transfer_pb2.SubmitTransferRequest:
    """A request (fresh idempotency key, not yet instructed) to move DEMO_ISIN units."""
    return transfer_pb2.SubmitTransferRequest(
        idempotency_key=str(uuid.uuid4()),
        security_id=DEMO_ISIN,
        source_ledger=source,
        target_ledger=target,
        sender=sender,
        recipient=recipient,
        amount=amount,
    )


def latest_attestation(system: LocalSystem, isin: str = DEMO_ISIN) -> Attestation:
    """The supply feed's latest attestation of ``isin``, read as the depository."""

    async def get() -> Attestation:
        feed = SupplyFeed(system.coordinator_target, identity=system.identity("depository"))
        try:
            return (await feed.latest(isin))[0]
        finally:
            await feed.close()

    return asyncio.run(get())


def demo_terms(
    system: LocalSystem,
    sender: str,
    recipient: str,
    amount: int,
    *,
    instructor: bytes | None = None,
    ttl: int = 120,
) -> TransferTerms:
    """Terms moving ``amount`` DEMO_ISIN units from brokerage-a to brokerage-b with a fresh
    nonce and a deadline ``ttl`` seconds away. ``instructor`` defaults to the sender's word
    (holder-direct: the holder instructs itself)."""
    a, b = system.ledgers["brokerage-a"], system.ledgers["brokerage-b"]
    return TransferTerms(
        nonce=secrets.token_bytes(32),
        security=SecurityId(DEMO_ISIN).word,
        amount=amount,
        src_ledger=LedgerId("brokerage-a").word,
        src_bridge=evm_address_word(a.endpoint.address),
        dst_ledger=LedgerId("brokerage-b").word,
        dst_bridge=evm_address_word(b.endpoint.address),
        sender=evm_address_word(sender),
        recipient=evm_address_word(recipient),
        instructor=evm_address_word(sender) if instructor is None else instructor,
        deadline=int(time.time()) + ttl,
    )

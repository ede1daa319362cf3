"""A relayer process killed with SIGKILL mid-stream misses no event on restart.

The relayer delivers to a real gRPC LedgerEventSink served by this test, which records
every delivery. Holders lock directly on-chain while the relayer runs, while it is dead
and after it restarts; afterwards the deduplicated deliveries must equal the ledger's
events exactly, in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from bridge.config import dump_toml
from bridge.devnet.anvil import DevAccount, write_key_file
from bridge.devnet.pki import DevPki
from bridge.devnet.processes import ManagedProcess, free_port
from bridge.domain.legs import EventPosition
from bridge.ledgers.evm import deploy
from bridge.ledgers.evm.adapter import EvmAdapter
from bridge.v1 import events_pb2, events_pb2_grpc
from tests.integration.conftest import TwoLedgers, address_word
from tests.support import eventually

pytestmark = pytest.mark.integration


class RecordingSink(events_pb2_grpc.LedgerEventSinkServicer):
    """Records every delivered event; acknowledges slowly so a kill lands mid-stream."""

    def __init__(self) -> None:
        self.deliveries: list[EventPosition] = []

    async def DeliverEvents(self, request, context):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.05)
        self.deliveries += [EventPosition(e.height, e.index) for e in request.events]
        return events_pb2.DeliverEventsResponse(accepted=len(request.events))


@pytest.fixture
def pki(two_ledgers: TwoLedgers, tmp_path: Path) -> DevPki:
    """The coordinator's organisation and the relayer's, with their certificates."""
    pki = DevPki(tmp_path / "pki")
    pki.organisation("bridge-operator", ["coordinator"])
    pki.issue("bridge-operator", "coordinator", "coordinator")
    name = two_ledgers.a.name
    pki.organisation(name, [f"relayer:{name}"])
    pki.issue(name, f"relayer:{name}", f"relayer-{name}")
    return pki


@pytest.fixture
async def sink(pki: DevPki) -> AsyncIterator[tuple[RecordingSink, int]]:
    """The sink, served over mTLS with the coordinator's certificate."""
    server = grpc.aio.server()
    servicer = RecordingSink()
    events_pb2_grpc.add_LedgerEventSinkServicer_to_server(servicer, server)
    cert = pki.cert_for("coordinator")
    creds = grpc.ssl_server_credentials(
        [(cert.key_file.read_bytes(), cert.cert_file.read_bytes())],
        root_certificates=b"".join(ca.ca_file.read_bytes() for ca in pki.cas.values()),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    yield servicer, port
    await server.stop(0)


def _relayer(env: TwoLedgers, workdir: Path, sink_port: int, pki: DevPki) -> ManagedProcess:
    (workdir / "network.toml").write_text(
        dump_toml(
            {
                "committee": {
                    "epoch": 1,
                    "threshold": 3,
                    "members": ["0x" + m.hex() for m in env.committee.members],
                },
                "ledgers": [
                    {
                        "id": env.a.name,
                        "kind": "evm",
                        "rpc_url": env.node.rpc_url,
                        "bridge": env.a.endpoint.address,
                        "chain_id": env.node.chain_id,
                        "finality_depth": 0,
                    }
                ],
                "organisations": pki.network_entries(workdir),
            }
        )
    )
    write_key_file(workdir / "relayer.key", env.a.relayer)
    (workdir / "relayer.toml").write_text(
        dump_toml(
            {
                "network": "network.toml",
                "ledger": env.a.name,
                "listen": f"127.0.0.1:{free_port()}",
                "coordinator": f"127.0.0.1:{sink_port}",
                "key_file": "relayer.key",
                "state_db": "relayer.sqlite",
                "poll_interval": 0.05,
                "tls": {
                    "cert_file": str(pki.cert_for(f"relayer:{env.a.name}").cert_file),
                    "key_file": str(pki.cert_for(f"relayer:{env.a.name}").key_file),
                },
            }
        )
    )
    return ManagedProcess(
        "relayer",
        [sys.executable, "-m", "relayers", "--config", str(workdir / "relayer.toml")],
        workdir / "relayer.log",
    )


def _direct_locks(env: TwoLedgers, count: int) -> None:
    """Holders lock their own units on-chain (no relayer involved)."""
    bob = DevAccount.generate()
    for _ in range(count):
        holder = env.a.holder(1)
        env.node.fund(holder.address)
        # Holder-direct: the holder is the instructor, its own transaction the instruction.
        t = dataclasses.replace(env.terms(holder, bob, 1), instructor=address_word(holder.address))
        deploy.send_tx(
            env.a.w3, holder.private_key, env.a.endpoint.functions.lock(t.as_abi_tuple(), b"")
        )


async def test_sigkill_mid_stream_loses_nothing(
    two_ledgers: TwoLedgers, sink: tuple[RecordingSink, int], tmp_path: Path, pki: DevPki
) -> None:
    env = two_ledgers
    recorder, port = sink
    relayer = _relayer(env, tmp_path, port, pki).start()
    try:
        await asyncio.to_thread(_direct_locks, env, 12)
        await eventually(lambda: _count(recorder, 6), 30, "first deliveries")
        relayer.kill9()
        await asyncio.to_thread(_direct_locks, env, 8)  # while the relayer is down
        relayer.start()
        await asyncio.to_thread(_direct_locks, env, 5)
        reader = EvmAdapter(env.a.config())
        final = await reader.finalized_height()
        on_chain = [e.position for e in await reader.events(None, final)]
        await reader.close()
        assert len(on_chain) >= 25
        await eventually(
            lambda: _covers(recorder, on_chain), 60, "every on-chain event delivered after restart"
        )
    finally:
        relayer.stop()
    unique = sorted(set(recorder.deliveries))
    assert unique == sorted(on_chain), "missed or invented events"
    # Delivery is at-least-once: a re-delivered batch is allowed, never a gap or reordering
    # within the re-delivery; the coordinator deduplicates by position.
    first_seen: dict[EventPosition, int] = {}
    for i, pos in enumerate(recorder.deliveries):
        first_seen.setdefault(pos, i)
    assert [p for p, _ in sorted(first_seen.items(), key=lambda kv: kv[1])] == unique


async def _count(recorder: RecordingSink, n: int) -> bool:
    return len(set(recorder.deliveries)) >= n


async def _covers(recorder: RecordingSink, positions: list[EventPosition]) -> bool:
    return set(positions) <= set(recorder.deliveries)

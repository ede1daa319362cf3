"""``bridge-relayer --config relayer.toml``: run one ledger's relayer until SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import grpc

from bridge.config import load_relayer
from bridge.daemon import run_daemon
from bridge.doctor.fingerprint import network_fingerprint
from bridge.doctor.model import ComponentStatus
from bridge.doctor.status import SERVICE_NAME as STATUS_SERVICE
from bridge.doctor.status import Describe, StatusServicer, base_status, read_view
from bridge.doctor.status import add_to_server as add_status
from bridge.domain.legs import LedgerEvent
from bridge.ledgers.adapter import LedgerAdapter
from bridge.ledgers.factory import open_adapter
from bridge.ledgers.startup import check_reached
from bridge.logfields import LEDGER, configure
from bridge.obs.daemon import DaemonObservability
from bridge.rpc.channels import ReloadingStub
from bridge.rpc.convert import event_to_pb
from bridge.rpc.failover import TargetRing, parse_targets, should_fail_over
from bridge.rpc.roles import COORDINATOR, Role
from bridge.rpc.security import client_identity, server_security
from bridge.rpc.server import BridgeServer, install_stop_signals
from bridge.rpc.tls import ClientIdentity
from bridge.standby import StateLock
from bridge.v1 import events_pb2, events_pb2_grpc, relayer_pb2, relayer_pb2_grpc
from relayers.checkpoint import CheckpointStore
from relayers.metrics import GasReporter, RelayerMetrics
from relayers.service import RelayerServicer
from relayers.watcher import EventWatcher


class CoordinatorSink:
    """Delivers events to the coordinator's LedgerEventSink over gRPC.

    With several coordinator addresses (active/passive, ADR 0017), a failed delivery moves
    to the next one (or the leader a standby named, when listed); the watcher retries the
    same batch, which the coordinator deduplicates, so nothing is lost or applied twice."""

    def __init__(
        self, target: str, timeout: float = 10.0, identity: ClientIdentity | None = None
    ) -> None:
        self._ring = TargetRing(parse_targets(target))
        self._conns: dict[str, ReloadingStub[events_pb2_grpc.LedgerEventSinkAsyncStub]] = {
            t: ReloadingStub(t, identity, events_pb2_grpc.LedgerEventSinkStub)
            for t in self._ring.targets
        }
        self._timeout = timeout

    async def deliver(
        self, ledger: str, events: Sequence[LedgerEvent], scanned_height: int
    ) -> None:
        """Returns only once the coordinator has durably accepted the batch."""
        try:
            await (
                self._conns[self._ring.current]
                .get()
                .DeliverEvents(
                    events_pb2.DeliverEventsRequest(
                        ledger_id=ledger,
                        events=[event_to_pb(e) for e in events],
                        scanned_height=scanned_height,
                    ),
                    timeout=self._timeout,
                )
            )
        except grpc.aio.AioRpcError as exc:
            if should_fail_over(exc):
                self._ring.after_failure(exc)
            raise

    async def close(self) -> None:
        """Close the channels."""
        for conn in self._conns.values():
            await conn.close()


# ---- doctor (issue 12)
def relayer_status(
    ledger: str, adapter: LedgerAdapter, checkpoints: CheckpointStore, fingerprint: bytes
) -> Describe:
    """The relayer's ``GetStatus``: its ledger's view with scanned height and gas, and its
    network file's fingerprint."""

    def scanned() -> int | None:
        position = checkpoints.load()
        return None if position is None else position.height

    async def describe() -> ComponentStatus:
        gas = adapter.gas_balance if isinstance(adapter, GasReporter) else None
        view = await read_view(
            ledger, adapter, scanned_height=scanned, operator=adapter.operator, gas_balance=gas
        )
        return base_status("relayer", ledgers=(view,), network_fingerprint=fingerprint)

    return describe


# ----
async def run(config_path: Path) -> None:
    """Run the relayer described by ``config_path`` until SIGTERM/SIGINT."""
    cfg = load_relayer(config_path)
    log = configure("relayer").bind(**{LEDGER: cfg.ledger})
    # ---- active/passive (ADR 0017): one relayer per checkpoint store; a standby waits here
    # and then resumes from the checkpoint the dead one left.
    await StateLock(cfg.state_db).acquire(cfg.standby)
    obs = DaemonObservability("relayer", cfg.observability)  # ---- observability
    security, audit = server_security(f"relayer-{cfg.ledger}", cfg.network, cfg.tls, cfg.audit_log)
    ledger_cfg = cfg.network.ledger(cfg.ledger)
    adapter = open_adapter(ledger_cfg, cfg.credentials, auth=cfg.ledger_auth)
    try:
        # SECURITY: never relay for a node that is not the configured ledger, nor for a
        # ledger whose committee contradicts the network file.
        reached = await check_reached(ledger_cfg, adapter, network=cfg.network)
    except BaseException:
        await adapter.close()
        raise
    log.info("ledger reached", kind=reached.kind, detail=reached.detail)
    checkpoints = CheckpointStore(cfg.state_db, cfg.ledger)
    server = BridgeServer(
        cfg.listen,
        [relayer_pb2.DESCRIPTOR.services_by_name["RelayerService"].full_name, STATUS_SERVICE],
        [
            lambda s: relayer_pb2_grpc.add_RelayerServiceServicer_to_server(
                RelayerServicer(adapter), s
            ),
            add_status(
                StatusServicer(
                    relayer_status(
                        cfg.ledger, adapter, checkpoints, network_fingerprint(cfg.network)
                    )
                )
            ),
        ],
        security,
        observers=obs.interceptors,
    )
    sink = CoordinatorSink(
        cfg.coordinator, identity=client_identity(cfg.network, cfg.tls, Role(COORDINATOR))
    )
    watcher = EventWatcher(adapter, sink, checkpoints, cfg.poll_interval)
    stop = asyncio.Event()
    install_stop_signals(stop)
    await server.start(serving=False)
    metrics = RelayerMetrics(obs.metrics, cfg.ledger, adapter, checkpoints, watcher)
    await obs.start(server, metrics.probes(), stop)
    log.info("relayer started", listen=cfg.listen, operator=adapter.operator, port=server.port)
    try:
        await watcher.run(stop)
    finally:
        await obs.close()
        await server.stop()
        await sink.close()
        await adapter.close()
        checkpoints.close()
        audit.close()
        log.info("relayer stopped")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    run_daemon("bridge-relayer", "relayer", __doc__, run, argv)


if __name__ == "__main__":
    main()

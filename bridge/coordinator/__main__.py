"""``bridge-coordinator --config coordinator.toml``: run the coordinator until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bridge.collector import tune_collector
from bridge.config import CoordinatorConfig, HaConfig, load_coordinator
from bridge.config_errors import ConfigError
from bridge.coordinator import schema
from bridge.coordinator.batch_retention import prune_batches
from bridge.coordinator.batches import BatchQuota, SqlBatchStore
from bridge.coordinator.clients import CommitteeClient, RelayerGateway
from bridge.coordinator.db import (
    Database,
    DatabaseInUse,
    coordinator_session_name,
    open_database,
)
from bridge.coordinator.depository_service import DepositoryServicer
from bridge.coordinator.engine import Coordinator
from bridge.coordinator.epochs import EpochTracker
from bridge.coordinator.ha import LeaseMetrics, StandbyGate, cluster_status, cluster_status_to_pb
from bridge.coordinator.halts import HaltBook, SqlHaltStore
from bridge.coordinator.lease import LeaderLost, Lease, LeaseKeeper, LeaseTiming
from bridge.coordinator.metrics import CoordinatorMetrics, coordinator_probes
from bridge.coordinator.metrics import install as install_coordinator_metrics
from bridge.coordinator.operator_service import OperatorServicer
from bridge.coordinator.publisher import SupplyPublisher
from bridge.coordinator.rotation import RotationManager
from bridge.coordinator.rotation_store import SqlRotationStore
from bridge.coordinator.service import EventSinkServicer, TransferServicer
from bridge.coordinator.store import SqlTransferStore
from bridge.coordinator.supply_service import SupplyServicer
from bridge.coordinator.supply_store import SqlSupplyStore
from bridge.daemon import refuse_config
from bridge.doctor.fingerprint import network_fingerprint
from bridge.doctor.model import ComponentStatus, FeedAge
from bridge.doctor.status import SERVICE_NAME as STATUS_SERVICE
from bridge.doctor.status import Describe, StatusServicer, base_status
from bridge.doctor.status import add_to_server as add_status
from bridge.domain.errors import NotLeader
from bridge.keys.files import refuse_exposed
from bridge.logfields import configure
from bridge.obs.daemon import DaemonObservability
from bridge.obs.native_stderr import route_native_stderr
from bridge.obs.readiness import Probe
from bridge.rpc.audit import AuditLog
from bridge.rpc.roles import MEMBER, RELAYER, Role
from bridge.rpc.security import client_identity, server_security
from bridge.rpc.server import BridgeServer, install_stop_signals
from bridge.storage.migrations import StoreTooNew, applied_version
from bridge.v1 import (
    depository_pb2,
    depository_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    supply_pb2,
    supply_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)
from bridge.version import add_version_argument


def batch_store_of(db: Database, cfg: CoordinatorConfig) -> SqlBatchStore:
    """The batch API's store (ADR 0023), held to the configured quota per source ledger
    (``max_batch_items_per_day``, ``max_refused_batch_items_per_day``)."""
    quota = BatchQuota(cfg.max_batch_items_per_day, cfg.max_refused_batch_items_per_day)
    return SqlBatchStore(db, quota)


# ---- doctor (issue 12)
def coordinator_status(
    endpoints: Mapping[str, str],
    securities: Sequence[str],
    supply: SqlSupplyStore,
    fingerprint: bytes,
) -> Describe:
    """The coordinator's ``GetStatus``: the endpoints it dials, each feed's age and its
    network file's fingerprint."""

    async def describe() -> ComponentStatus:
        now = time.time()
        feeds = []
        for security in securities:
            latest = await supply.latest(security)
            age = None if latest is None else max(0.0, now - latest.published_at)
            feeds.append(FeedAge(security, age))
        return base_status(
            "coordinator",
            endpoints=tuple(sorted(endpoints.items())),
            feeds=tuple(feeds),
            network_fingerprint=fingerprint,
        )

    return describe


# ----
async def run(config_path: Path) -> None:
    """Run the coordinator described by ``config_path`` until SIGTERM/SIGINT."""
    cfg = load_coordinator(config_path)
    log = configure("coordinator")
    obs = DaemonObservability("coordinator", cfg.observability)  # ---- observability
    metrics = CoordinatorMetrics(obs.metrics, cfg.transfer_ttl)
    install_coordinator_metrics(metrics)
    # One database (SQLite file or PostgreSQL) shared by every store, its I/O in one worker
    # thread off the event loop, migrated to the latest schema before anything runs.
    # SECURITY: a SQLite store is locked before it is connected to or migrated (store review
    # finding 6); claim_exclusive then takes PostgreSQL's advisory lock, or with [ha]
    # claim_shared takes it in shared mode: several HA coordinators share the database
    # under the fenced lease (ADR 0017), never beside a coordinator without [ha].
    password = _database_password(cfg.database_password_file)
    # Every PostgreSQL session of this process is named after its lease instance, so a
    # standby can end them should this process freeze holding the lease row (ADR 0017).
    instance = secrets.token_hex(8)
    db = open_database(
        cfg.database, password, exclusive=True, session_name=coordinator_session_name(instance)
    )
    try:
        if cfg.ha is None:
            db.claim_exclusive()  # SECURITY: one coordinator per database (review 2 finding 4)
        else:
            # SECURITY (HA review finding 1): HA coordinators share the database with each
            # other only, never with an unfenced coordinator without [ha] (exit 4).
            db.claim_shared()
    except DatabaseInUse:
        db.close()
        raise
    log.info("database open", engine=db.dialect.value, database=db.label)
    # ---- active/passive coordinators (ADR 0017): the lease on a connection of its own
    # (renewals never queue behind store calls or status reads, and a store write never
    # holds a lock a renewal waits for: HA review findings 2, 7); standbys refuse calls
    # with NOT_LEADER.
    ha = _HaParts(cfg.ha, cfg.database, password, obs, db, instance) if cfg.ha is not None else None
    store = SqlTransferStore(db)

    async def transfer_ledgers(tid: bytes) -> tuple[str, str] | None:
        record = await store.get(tid)
        if record is None:
            return None
        return record.request.source_ledger, record.request.target_ledger

    security, audit = server_security(
        "coordinator", cfg.network, cfg.tls, cfg.audit_log, transfer_ledgers
    )
    if cfg.tls is not None and not all(cfg.verifier_members):
        raise SystemExit("with [tls], every verifiers entry must name its member")
    relayers = {
        name: RelayerGateway(
            name,
            target,
            cfg.rpc_timeout,
            client_identity(cfg.network, cfg.tls, Role(RELAYER, name)),
        )
        for name, target in cfg.relayers.items()
    }
    # Committee rotation (ADR 0009): members of later epochs (network file, by address)
    # are asked too; each signature counts only for an epoch its ledger accepts.
    endpoints, members = list(cfg.verifiers), list(cfg.verifier_members)
    for address, endpoint in cfg.network.later_members.items():
        if endpoint and "0x" + address.hex() not in members:
            endpoints.append(endpoint)
            members.append("0x" + address.hex())
    committee = CommitteeClient(
        cfg.network.committee,
        endpoints,
        cfg.rpc_timeout,
        store.record_misbehaviour,
        identities=[
            client_identity(cfg.network, cfg.tls, Role(MEMBER, m)) if m else None for m in members
        ],
        members=[bytes.fromhex(m[2:]) if m else None for m in members],
    )
    epochs = EpochTracker(cfg.network.committee, relayers)
    supply_store = SqlSupplyStore(db)
    publisher = SupplyPublisher(
        cfg.network,
        supply_store,
        relayers,
        committee,
        cfg.supply_heartbeat,
        cfg.instruction_max_age,
        epochs=epochs,
    )
    coordinator = Coordinator(
        cfg.network,
        store,
        relayers,
        committee,
        cfg.transfer_ttl,
        supply=publisher,
        epochs=epochs,
        batching=cfg.batching,
        max_unfinished_per_ledger=cfg.max_unfinished_per_ledger,
        rpc_timeout=cfg.rpc_timeout,
    )
    rotation_store = SqlRotationStore(db)
    rotations = RotationManager(
        rotation_store,
        store,
        relayers,
        epochs,
        coordinator.domains,
        # Checked only when every endpoint names its member (always so with mTLS).
        reachable={bytes.fromhex(m[2:]) for m in members} if all(members) else None,
    )
    # ---- depository halt
    halt_store = SqlHaltStore(db)
    halts = HaltBook(
        halt_store,
        relayers,
        coordinator.domains,
        on_change=coordinator.wake_all,
        # ---- HA: orders kept only while the lease is surely held (ADR 0017)
        leading=ha.keeper.holds_now if ha is not None else lambda: True,
    )
    coordinator.set_halts(halts)
    depository = DepositoryServicer(halts, list(relayers))
    batch_store = batch_store_of(db, cfg)  # ---- batch API (ADR 0023)
    transfers = TransferServicer(
        cfg.network,
        coordinator,
        store,
        batch_store,
        max_batch_items=cfg.max_batch_items,
        max_batch_watches=cfg.max_batch_watches,
        max_running_batches=cfg.max_running_batches,
        audit=audit,
        max_transfer_watches=cfg.max_transfer_watches,
        batch_admission_parallel=cfg.batch_admission_parallel,
    )
    sink = EventSinkServicer(coordinator)
    supply = SupplyServicer(publisher, rotations, halts=halts)
    operator = OperatorServicer(
        coordinator, store, rotations, cluster=ha.cluster_view if ha is not None else None
    )
    server = BridgeServer(
        cfg.listen,
        [
            transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name,
            events_pb2.DESCRIPTOR.services_by_name["LedgerEventSink"].full_name,
            supply_pb2.DESCRIPTOR.services_by_name["SupplyService"].full_name,
            operator_pb2.DESCRIPTOR.services_by_name["OperatorService"].full_name,
            depository_pb2.DESCRIPTOR.services_by_name["DepositoryService"].full_name,
            STATUS_SERVICE,  # ---- doctor (issue 12)
        ],
        [
            lambda s: transfer_pb2_grpc.add_TransferServiceServicer_to_server(transfers, s),
            lambda s: events_pb2_grpc.add_LedgerEventSinkServicer_to_server(sink, s),
            lambda s: supply_pb2_grpc.add_SupplyServiceServicer_to_server(supply, s),
            lambda s: operator_pb2_grpc.add_OperatorServiceServicer_to_server(operator, s),
            lambda s: depository_pb2_grpc.add_DepositoryServiceServicer_to_server(depository, s),
            add_status(  # ---- doctor (issue 12)
                StatusServicer(
                    coordinator_status(
                        {f"relayer:{n}": t for n, t in cfg.relayers.items()}
                        | {f"member:{m}": e for m, e in zip(members, endpoints, strict=True) if m},
                        list(cfg.network.securities),
                        supply_store,
                        network_fingerprint(cfg.network),
                    )
                )
            ),
        ],
        security,
        observers=obs.interceptors,
        gates=[ha.gate] if ha is not None else (),
    )
    stop = asyncio.Event()
    install_stop_signals(stop)
    await server.start(serving=False)
    probes = coordinator_probes(store) + ([ha.probe()] if ha is not None else [])
    metrics_loop = metrics.run(
        stop,
        cfg.observability.metrics.probe_interval,
        store,
        coordinator,
        supply_store,
        halts,
        cfg.network.ledgers,
        cfg.network.securities,
    )
    if ha is not None:
        await obs.start(server, probes, stop)  # NOT_SERVING until elected
        log.info("coordinator standing by", name=ha.name, port=server.port)
        if await ha.keeper.elect(stop) is None:
            metrics_loop.close()
            await _shutdown_standby(obs, server, ha, db, audit, log)
            return
        # SECURITY (review helper-114 M2): a newer release may have migrated the database
        # while this process stood by (its transfers' rows may then be in a form this one
        # cannot read): read the version again before acting on anything as leader.
        have = await db.read(applied_version)
        if have > schema.LATEST:
            exc = StoreTooNew(schema.KIND, have, schema.LATEST)
            log.error("database upgraded by a newer release; stepping down", error=str(exc))
            await ha.keeper.release()
            metrics_loop.close()
            await _shutdown_standby(obs, server, ha, db, audit, log)
            raise SystemExit(EXIT_STORE_TOO_NEW) from None
        # SECURITY: from here every store write carries this term's fencing token.
        db.set_fence(ha.keeper.lease.check)
        # Renewals start now, not after the (possibly long) resumption below.
        ha.holding = asyncio.create_task(ha.keeper.hold(stop), name="lease-hold")
    resumed = await coordinator.start()
    await publisher.start()
    await halts.start()
    await rotations.start()
    # ---- batch API (ADR 0023): the batch ids' idempotency window, by the active one only
    # (through the runner: reservations older than the retention that no attempt here
    # runs, left by a crash or a lost lease and never replayed, are deleted too)
    pruning = prune_batches(transfers.batches or batch_store, cfg.batch_retention_days, stop)
    if ha is None:
        await obs.start(server, probes, stop, metrics_loop, pruning)
    else:
        obs.add_loop(metrics_loop)
        obs.add_loop(pruning)
        ha.active = True  # calls are served from here (the gate and readiness follow)
        await obs.recheck()  # SERVING now, not at the next probe round
    log.info("coordinator started", listen=cfg.listen, port=server.port, resumed=resumed)
    try:
        if ha is None:
            await stop.wait()
        else:
            assert ha.holding is not None
            lost = await ha.holding
            if lost is not LeaderLost.STOPPED:
                # Fail-stop (ADR 0017): this process may no longer lead; every store write
                # is already refused by the database. Stop serving and exit at once (no
                # clean-up that could block on a cut database); the supervisor restarts
                # it as a standby, which builds every in-memory state afresh.
                await server.set_serving(False)
                log.error("deposed: leadership lost, exiting", why=lost.value)
                os._exit(EXIT_DEPOSED)
    finally:
        await obs.close()
        install_coordinator_metrics(None)
        await server.stop()
        await coordinator.stop()
        await rotations.stop()
        await publisher.stop()
        await halts.stop()
        if ha is not None and ha.holding is not None and ha.holding.done():
            # HA review finding 5: released only now that every leader activity stopped,
            # so a standby never takes over while this process still drives transfers.
            await ha.keeper.release()
        for r in relayers.values():
            await r.close()
        await committee.close()
        store.close()
        supply_store.close()
        halt_store.close()
        batch_store.close()
        rotation_store.close()
        if ha is not None:
            ha.close()
        audit.close()
        log.info("coordinator stopped")


class _HaParts:
    """---- active/passive coordinators (ADR 0017): the lease keeper on its own database
    connection, the standby gate, the lease metrics and the cluster view."""

    def __init__(
        self,
        ha: HaConfig,
        database: Path | str,
        password: str | None,
        obs: DaemonObservability,
        status_db: Database,
        instance: str,
    ) -> None:
        self.name = ha.name
        self.db = open_database(database, password, session_name=coordinator_session_name(instance))
        self.status_db = status_db
        """Where GetClusterStatus reads (the stores' connection): never the lease's, so a
        monitoring poll cannot delay a renewal (HA review finding 7)."""
        metrics = LeaseMetrics(obs.metrics)
        timing = LeaseTiming(ha.lease_ttl, ha.renew_interval)
        lease = Lease(
            self.db,
            ha.name,
            ha.lease_ttl,
            ha.advertise,
            timeout=timing.renew_interval / 2,
            write_timeout=timing.hold_for,
            instance=instance,
        )
        self.keeper = LeaseKeeper(lease, timing, on_change=metrics.observe)
        self.active = False
        """True once elected AND every unfinished transfer and the feed are resumed."""
        self.holding: asyncio.Task[LeaderLost] | None = None
        self.gate = StandbyGate(lambda: self.serving, lambda: lease.leader_address)

    @property
    def serving(self) -> bool:
        """Leading and started: calls are served (else NOT_LEADER, health NOT_SERVING)."""
        return self.active and self.keeper.leading

    async def cluster_view(self) -> operator_pb2.GetClusterStatusResponse:
        """GetClusterStatus as this coordinator sees the shared database."""
        status = await cluster_status(self.status_db)
        return cluster_status_to_pb(status, self.name, self.serving)

    def probe(self) -> Probe:
        """Readiness: NOT_SERVING on gRPC health while this coordinator stands by."""

        async def leading() -> None:
            if not self.serving:
                raise NotLeader("standby", self.keeper.lease.leader_address)

        return Probe("leader", leading)

    def close(self) -> None:
        """Close the lease's connection."""
        self.db.close()


async def _shutdown_standby(
    obs: DaemonObservability,
    server: BridgeServer,
    ha: _HaParts,
    db: Database,
    audit: AuditLog,
    log: Any,
) -> None:
    """Stop a coordinator that was never elected (SIGTERM while standing by)."""
    await obs.close()
    install_coordinator_metrics(None)
    await server.stop()
    db.close()
    ha.close()
    audit.close()
    log.info("coordinator stopped (standby)")


EXIT_DEPOSED = 5
"""Exit status of a leader that lost its lease (fail-stop; restart it as a standby)."""


EXIT_DATABASE_IN_USE = 4
"""Exit status when another coordinator holds the database (review 2 finding 4)."""


EXIT_STORE_TOO_NEW = 6
"""Exit status when a newer release upgraded the database: at start, or as a standby
elected after the upgrade (it gives the lease up at once). Run the newer release."""


def _database_password(path: Path | None) -> str | None:
    """The PostgreSQL password from its file (trailing newline dropped), else None (then
    libpq's own sources apply: env BRIDGE_DATABASE_PASSWORD, PGPASSFILE, peer auth)."""
    if path is None:
        return None
    # SECURITY (review 2 finding 5): the same owner-only rule as every key file.
    refuse_exposed(path, path.stat().st_mode, "database_password_file")
    return path.read_text(encoding="utf-8").rstrip("\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="bridge-coordinator", description=__doc__)
    add_version_argument(parser)
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args(argv)
    route_native_stderr("coordinator")  # gRPC C-core's own lines as JSON (before configure)
    configure("coordinator")  # every line, even a configuration error, is one format
    tune_collector()  # ---- issue 14: the collector's share of a busy daemon's CPU
    try:
        asyncio.run(run(args.config))
    except ConfigError as exc:
        raise refuse_config("coordinator", exc) from None
    except DatabaseInUse as exc:
        configure("coordinator").error("database in use, refusing to start", error=str(exc))
        raise SystemExit(EXIT_DATABASE_IN_USE) from None
    except StoreTooNew as exc:
        # A newer release migrated the database: restarting this one cannot fix that.
        configure("coordinator").error("database of a newer release, refusing to start",
                                       error=str(exc))  # fmt: skip
        raise SystemExit(EXIT_STORE_TOO_NEW) from None


if __name__ == "__main__":
    main()

"""``bridge-verifier --config verifier.toml``: run one committee member until SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

from bridge.config import load_verifier
from bridge.daemon import run_daemon
from bridge.doctor.fingerprint import network_fingerprint
from bridge.doctor.model import ComponentStatus
from bridge.doctor.status import SERVICE_NAME as STATUS_SERVICE
from bridge.doctor.status import Describe, StatusServicer, base_status, read_view
from bridge.doctor.status import add_to_server as add_status
from bridge.keys.loader import open_signer
from bridge.ledgers.adapter import LedgerReader
from bridge.ledgers.factory import open_reader
from bridge.ledgers.startup import check_reached
from bridge.logfields import configure
from bridge.obs.daemon import DaemonObservability
from bridge.rpc.security import server_security
from bridge.rpc.server import BridgeServer, install_stop_signals
from bridge.standby import StateLock
from bridge.v1 import verifier_pb2, verifier_pb2_grpc
from verifiers.metrics import MemberMetrics, member_probes
from verifiers.metrics import install as install_member_metrics
from verifiers.rotation_log import RotationLog
from verifiers.service import VerifierServicer
from verifiers.supply_log import SupplyLog
from verifiers.votes import VoteLog


# ---- doctor (issue 12)
def member_status(
    member: bytes, readers: Mapping[str, LedgerReader], fingerprint: bytes
) -> Describe:
    """The member's ``GetStatus``: its address, its own view of every ledger and its network
    file's fingerprint."""

    async def describe() -> ComponentStatus:
        views = [await read_view(name, reader) for name, reader in readers.items()]
        return base_status(
            "verifier", member=member, ledgers=tuple(views), network_fingerprint=fingerprint
        )

    return describe


# ----
async def run(config_path: Path) -> None:
    """Run the member described by ``config_path`` until SIGTERM/SIGINT."""
    cfg = load_verifier(config_path)
    # ---- active/passive (ADR 0017), SECURITY: one process per vote log, so a member key
    # never signs from two logs; a standby (same log on shared storage) waits here.
    await StateLock(cfg.vote_db).acquire(cfg.standby)
    # SECURITY: the member key stays in its keystore or token; only the Signer is held here.
    signer = open_signer(cfg.member_key)
    log = configure("verifier").bind(signer="0x" + signer.address.hex())
    obs = DaemonObservability("verifier", cfg.observability)  # ---- observability
    member_metrics = MemberMetrics(obs.metrics)
    install_member_metrics(member_metrics)
    security, audit = server_security("verifier", cfg.network, cfg.tls, cfg.audit_log)
    readers = {
        lc.id.word: open_reader(
            lc,
            cfg.identities.get(name),
            cfg.rpc_overrides.get(name),
            auth=cfg.ledger_auth.get(name),
        )
        for name, lc in cfg.network.ledgers.items()
    }
    try:
        # SECURITY: a member certifies facts of the configured ledgers only; refuse to start
        # when any node it reads is another chain, channel or endpoint, or when a ledger's
        # committee contradicts the network file.
        for name, lc in cfg.network.ledgers.items():
            reached = await check_reached(lc, readers[lc.id.word], network=cfg.network)
            log.info("ledger reached", ledger=name, kind=reached.kind, detail=reached.detail)
    except BaseException:
        for reader in readers.values():
            await reader.close()
        raise
    votes = VoteLog(cfg.vote_db, signer.address)  # SECURITY: this member's store only
    quarantine = votes.quarantine()  # ---- stores (ADR 0022)
    if quarantine is not None:
        log.warning(
            "member store restored from a backup: quarantined until an operator lifts it"
            " (bridge store lift-quarantine)",
            restored_at=quarantine.restored_at,
            backup_taken_at=quarantine.backup_taken_at,
            acknowledgement=quarantine.acknowledgement,
        )
    supply_log = SupplyLog(cfg.vote_db)
    rotations = RotationLog(cfg.vote_db)
    servicer = VerifierServicer(
        signer,
        cfg.network.committee,
        readers,
        votes,
        supply_log,
        cfg.network.supply_operators,
        network_words={name: lc.network_word for name, lc in cfg.network.ledgers.items()},
        instruction_keys=cfg.network.instruction_keys,
        later_members=cfg.network.later_members,
        rotations=rotations,
        rotation_bounds=cfg.rotation,
        max_batch_claims=cfg.max_batch_claims,
    )
    by_name = {name: readers[lc.id.word] for name, lc in cfg.network.ledgers.items()}
    server = BridgeServer(
        cfg.listen,
        [verifier_pb2.DESCRIPTOR.services_by_name["VerifierService"].full_name, STATUS_SERVICE],
        [
            lambda s: verifier_pb2_grpc.add_VerifierServiceServicer_to_server(servicer, s),
            add_status(
                StatusServicer(
                    member_status(signer.address, by_name, network_fingerprint(cfg.network))
                )
            ),
        ],
        security,
        observers=obs.interceptors,
    )
    stop = asyncio.Event()
    install_stop_signals(stop)
    await server.start(serving=False)
    await obs.start(
        server,
        member_probes(
            member_metrics,
            cfg.vote_db,
            {name: readers[lc.id.word] for name, lc in cfg.network.ledgers.items()},
        ),
        stop,
    )
    log.info("verifier started", listen=cfg.listen, port=server.port)
    try:
        await stop.wait()
    finally:
        await obs.close()
        await server.stop()
        for reader in readers.values():
            await reader.close()
        votes.close()
        supply_log.close()
        rotations.close()
        audit.close()
        log.info("verifier stopped")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    run_daemon("bridge-verifier", "verifier", __doc__, run, argv)


if __name__ == "__main__":
    main()

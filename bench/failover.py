"""Takeover time of active/passive coordinators (ADR 0017) after the leader is SIGKILLed.

Starts its own PostgreSQL cluster and a LocalSystem (two anvil ledgers, 4 verifiers, a
relayer per ledger) with ``--coordinators`` coordinators sharing the database under the lease
(``--lease-ttl``, ``--renew-interval``), then ``--kills`` times: SIGKILL the leader, measure
the time until another coordinator reports SERVING on gRPC health (elected, every unfinished
transfer resumed, its stores fenced with the new token), and restart the killed one as a
standby. A transfer is submitted before each kill and must commit afterwards. Prints p50 and
max (and ``--json`` writes them), with the machine.

    .venv/bin/python bench/failover.py --kills 5 --json .run/failover/result.json

The floor is the lease: a standby may take over only once the dead leader's term has
expired by the database's clock (``lease_ttl`` after its last renewal), then polls every
``renew_interval``; so expect roughly ``lease_ttl - renew_interval`` to ``lease_ttl +
renew_interval`` plus the new leader's start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

from bridge.devnet.postgres import start_cluster
from bridge.devnet.processes import REPO_ROOT, exit_on_sigterm, wait_until
from bridge.devnet.system import DEMO_ISIN, LocalSystem, health_serving
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc

A, B = "brokerage-a", "brokerage-b"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    """Run the benchmark; returns the exit code."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--coordinators", type=int, default=3)
    p.add_argument("--lease-ttl", type=float, default=3.0)
    p.add_argument("--renew-interval", type=float, default=0.5)
    p.add_argument("--block-time", type=float, default=0.5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    exit_on_sigterm()
    workdir = REPO_ROOT / ".run" / "failover" / time.strftime("run-%Y%m%d-%H%M%S")
    cluster = start_cluster(workdir / "postgres")
    system = LocalSystem(
        workdir / "system",
        block_time=args.block_time,
        store="postgres",
        postgres_server=cluster.url("postgres"),
        coordinators=args.coordinators,
        lease_ttl=args.lease_ttl,
        renew_interval=args.renew_interval,
    )
    takeovers: list[float] = []
    try:
        print(f"starting {args.coordinators} coordinators under {workdir} ...", flush=True)
        system.start()
        holder = system.handle(A).make_holder(DEMO_ISIN, 10 * args.kills)
        system.handle(B).set_eligible(DEMO_ISIN, holder.address)
        identity = system.identity("bridge-operator")
        tids = []
        for k in range(args.kills):
            tids.append(
                system.submit(
                    S.SubmitTransferRequest(
                        idempotency_key=str(uuid.uuid4()), security_id=DEMO_ISIN,
                        source_ledger=A, target_ledger=B, sender=holder.address,
                        recipient=holder.address, amount="1",
                    )
                )
            )  # fmt: skip
            leader = system.leader()
            others = [
                (n, f"127.0.0.1:{system.ports[n]}") for n in system.coordinator_names if n != leader
            ]
            killed_at = time.monotonic()
            system.processes[leader].kill9()
            while not any(health_serving(t, identity) for _, t in others):
                time.sleep(0.05)
                if time.monotonic() - killed_at > 120:
                    raise TimeoutError("no coordinator took over")
            took = time.monotonic() - killed_at
            takeovers.append(took)
            print(f"kill {k + 1}: {leader} SIGKILLed, takeover in {took:.2f} s", flush=True)
            system.start_process(leader)
            time.sleep(args.renew_interval * 2)

        def committed() -> bool:
            with system.channel("depository") as channel:
                stub = transfer_pb2_grpc.TransferServiceStub(channel)
                return all(
                    stub.GetTransfer(S.GetTransferRequest(transfer_id=t), timeout=10).state
                    == S.TRANSFER_STATE_COMMITTED
                    for t in tids
                )

        wait_until(committed, 180, "every transfer committed after the failovers")
        result: dict[str, object] = {
            "kills": len(takeovers),
            "takeover_p50_s": round(statistics.median(takeovers), 3),
            "takeover_max_s": round(max(takeovers), 3),
            "takeovers_s": [round(t, 3) for t in takeovers],
            "lease_ttl_s": args.lease_ttl,
            "renew_interval_s": args.renew_interval,
            "coordinators": args.coordinators,
            "transfers_committed": len(tids),
            "machine": f"{os.cpu_count()} CPUs, {_cpu()}, {platform.system()}"
            f" {platform.release()}, load {os.getloadavg()[0]:.1f}",
        }
        print()
        for name, value in result.items():
            print(f"{name:<20} {value}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
        return 0
    finally:
        print(f"stopping (logs in {workdir / 'system' / 'logs'}) ...", flush=True)
        system.stop()
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())

"""``make demo``: five brokerage ledgers of four kinds (two anvil EVM chains, a Kaia-profile
EVM chain, a native Hyperledger Fabric network and a CometBFT chain running the KSTB
application), a 3-of-4 committee, one relayer per ledger and the coordinator as separate
processes; units move over each kind of lane through the gRPC API: A -> B (EVM to EVM),
B -> F (EVM to Fabric), F -> A (Fabric to EVM), F -> C (Fabric to CometBFT), C -> K
(CometBFT to Kaia), K -> A (Kaia to EVM). Then one governance
step: the depository halts the security on brokerage-b with its own key (the real
``bridge depository`` CLI), the ledger shows it halted, and a signed release lifts it.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
import uuid
from pathlib import Path

from bridge.cli.main import STATE_NAMES
from bridge.cli.main import main as cli_main
from bridge.cli.supply import describe
from bridge.devnet.anvil import DevAccount
from bridge.devnet.client import RoutedTransferStub
from bridge.devnet.processes import REPO_ROOT, exit_on_sigterm
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.supply_client import FeedVerifier, SupplyFeed
from bridge.v1 import depository_pb2, depository_pb2_grpc, transfer_pb2, transfer_pb2_grpc

EVM_A, EVM_B, FABRIC = "brokerage-a", "brokerage-b", "brokerage-f"
COMET = "brokerage-c"  # ---- cometbft: a CometBFT chain running the KSTB application
# (source, target, units): one lane of each kind.
LANES: tuple[tuple[str, str, int], ...] = (
    (EVM_A, EVM_B, 250),
    (EVM_B, FABRIC, 100),
    (FABRIC, EVM_A, 40),
)
KAIA = "brokerage-k"  # ---- kaia: an EVM chain run with Kaia's rules (chain id 1001, ADR 0019)
LANES += ((FABRIC, COMET, 30), (COMET, KAIA, 10), (KAIA, EVM_A, 5))  # ---- cometbft, kaia


def _say(text: str) -> None:
    print(text, flush=True)


def _balances(system: LocalSystem, holder: DevAccount, label: str) -> None:
    _say(f"  balances {label}:")
    total = 0
    for name in system.all_ledgers:
        h = system.handle(name)
        supply = h.total_supply(DEMO_ISIN)
        total += supply
        _say(
            f"    {name:<12} holder={h.balance(DEMO_ISIN, holder.address):>5}"
            f"  escrow={h.escrowed(DEMO_ISIN):>4}  total supply={supply:>5}"
        )
    _say(f"    all ledgers  total supply={total}")


def _transfer(
    system: LocalSystem,
    stub: transfer_pb2_grpc.TransferServiceStub,
    src: str,
    dst: str,
    holder: DevAccount,
    amount: int,
) -> str:
    _say(f"\n> transfer {amount} {DEMO_ISIN} {src} -> {dst} (instructed by {src}'s brokerage)")
    start = time.monotonic()
    request = system.brokerage.instruct(
        transfer_pb2.SubmitTransferRequest(
            idempotency_key=str(uuid.uuid4()),
            security_id=DEMO_ISIN,
            source_ledger=src,
            target_ledger=dst,
            sender=holder.address,
            recipient=holder.address,
            amount=str(amount),
        )
    )
    resp = stub.SubmitTransfer(request, timeout=30)
    tid = resp.transfer.transfer_id
    _say(f"  transfer id {tid}")
    final = 0
    for u in stub.WatchTransfer(transfer_pb2.WatchTransferRequest(transfer_id=tid), timeout=180):
        _say(f"  {time.monotonic() - start:6.2f}s  {STATE_NAMES[u.state]:<15} {u.detail}")
        final = u.state
    t = stub.GetTransfer(transfer_pb2.GetTransferRequest(transfer_id=tid), timeout=10)
    for step, tx in sorted(t.transactions.items()):
        _say(f"           {step:<8} tx {tx}")
    if final != transfer_pb2.TRANSFER_STATE_COMMITTED:
        raise SystemExit(f"transfer ended {STATE_NAMES.get(final)}: {t.reason}")
    return tid


def _halted_on(system: LocalSystem) -> set[str]:
    """The ledgers where DEMO_ISIN is halted, as the ledgers report it."""
    with system.channel("depository") as ch:
        status = depository_pb2_grpc.DepositoryServiceStub(ch).GetHaltStatus(
            depository_pb2.GetHaltStatusRequest(security_id=DEMO_ISIN), timeout=30
        )
    return {h.ledger_id for h in status.ledgers if h.security_halted}


def _halt_and_release(system: LocalSystem) -> None:
    """The depository halts DEMO_ISIN on brokerage-b and releases it, with the CLI (its
    certificate and its devnet key file), waiting each time until the ledger applied it."""
    base = ["--coordinator", system.coordinator_target, *system.cli_tls_args("depository")]
    scope = ["--security", DEMO_ISIN, "--ledger", EVM_B]
    keys = ["--network", str(system.workdir / "network.toml"),
            "--key-file", str(system.workdir / "keys" / "depository.key")]  # fmt: skip
    for action, halted in (("halt", {EVM_B}), ("release", set())):
        _say(f"\n> bridge depository {action} {' '.join(scope)}  (signed by the depository key)")
        if cli_main([*base, "depository", action, *scope, *keys]) != 0:
            raise SystemExit(f"depository {action} refused")
        give_up = time.monotonic() + 60
        while _halted_on(system) != halted:
            if time.monotonic() > give_up:
                raise SystemExit(f"the {action} was not applied on {EVM_B}")
            time.sleep(0.5)
        _say(f"  {EVM_B} applied it; `bridge depository status` reads the ledgers:")
        if cli_main([*base, "depository", "status", "--security", DEMO_ISIN]) != 0:
            raise SystemExit("depository status failed")


async def _verified_feed(system: LocalSystem) -> int:
    """Print every supply record, verified as the depository would; return the failures."""
    assert system.committee is not None
    verifier = FeedVerifier(system.committee)
    feed = SupplyFeed(system.coordinator_target, identity=system.identity("depository"))
    failures = 0
    try:
        end = max(a.feed_sequence for a in await feed.latest())
        async with asyncio.timeout(60):
            async for a in feed.stream("", 1):
                verdict = verifier.check(a)
                failures += not verdict.ok
                _say("  " + describe(verdict).replace("\n", "\n  "))
                if a.feed_sequence >= end:
                    break
    finally:
        await feed.close()
    return failures


def main() -> int:
    """Run the demo; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".run" / "demo")
    parser.add_argument("--block-time", type=float, default=1.0)
    args = parser.parse_args()
    exit_on_sigterm()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    system = LocalSystem(
        args.workdir,
        block_time=args.block_time,
        fabric_ledger_names=(FABRIC,),
        extra_ledgers=((COMET, "cometbft"), (KAIA, "kaia")),  # ---- cometbft, kaia
    )
    try:
        _say(
            "starting two anvil ledgers (1 s blocks), a Fabric network, a CometBFT chain and"
            " a Kaia-profile EVM chain"
        )
        system.start_ledgers()
        for name, h in system.dev_ledgers.items():
            first, *rest = h.describe()
            _say(f"  {name}: {first}")
            for line in rest:
                _say(f"    {line}")
        holder = system.handle(EVM_A).make_holder(DEMO_ISIN, units=1_000)
        for other in system.all_ledgers:
            if other != EVM_A:
                system.handle(other).set_eligible(DEMO_ISIN, holder.address)
        _say(f"  security {DEMO_ISIN} registered on all {len(system.all_ledgers)} ledgers")
        _say(f"  1000 units issued to {holder.address} on {EVM_A}")
        _say(
            f"starting 4 verifiers (t=3), {len(system.all_ledgers)} relayers and the"
            " coordinator as processes ..."
        )
        _say("  every gRPC port and client uses mutual TLS: one CA per organisation under")
        _say(f"  {args.workdir / 'pki'}; every authorisation decision in {args.workdir / 'audit'}")
        system.write_configs()
        system.start_bridge()
        _say(f"  coordinator on {system.coordinator_target}; logs in {args.workdir / 'logs'}")
        _balances(system, holder, "before")
        # mTLS: each transfer is submitted by its source ledger's brokerage certificate.
        routed = RoutedTransferStub(system, fallback_ledger=EVM_A)
        try:
            for src, dst, units in LANES:
                _transfer(system, routed, src, dst, holder, units)  # type: ignore[arg-type]
                _balances(system, holder, f"after {src} -> {dst}")
        finally:
            routed.close()
        expected = {EVM_A: 795, EVM_B: 150, FABRIC: 30, COMET: 20, KAIA: 5}
        for name, units in expected.items():
            got = system.handle(name).balance(DEMO_ISIN, holder.address)
            if got != units:
                raise SystemExit(f"{name}: holder has {got}, expected {units}")
        total = sum(system.handle(n).total_supply(DEMO_ISIN) for n in system.all_ledgers)
        if total != 1_000:
            raise SystemExit(f"total supply across ledgers is {total}, expected 1000")
        _halt_and_release(system)
        _say("\nsupply feed (every record verified against the committee, as the depository does):")
        if asyncio.run(_verified_feed(system)):
            raise SystemExit("a supply record failed verification")
        _say(f"\ndemo complete: 1000 units in total: {expected}")
        return 0
    except Exception as exc:
        _say(f"demo failed: {exc}")
        for proc in system.processes.values():
            if not proc.alive():
                _say(f"--- {proc.name} exited; last log lines:\n{proc.tail()}")
        return 1
    finally:
        _say("shutting down ...")
        system.stop()


if __name__ == "__main__":
    sys.exit(main())

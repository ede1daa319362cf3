"""What the protocol v2 instruction checks cost: CPU per transfer and gas per EVM lock.

Protocol v2 cannot run without instructions (``BridgeEndpoint.lock`` requires one from a
relayer), so this measures the checks themselves instead of a run without them:

- **CPU** (pure Python, ``time.process_time`` over ``--iterations`` calls each, best of
  ``--repeats``): the brokerage signing an instruction (``Brokerage.instruct``: validate,
  build the terms, sign), the coordinator's check (``instruction_from_pb`` +
  ``check_instruction``: registered instructor, deadline window, signature recovery), the
  signature check alone (``verify_instruction``, what the Fabric chaincode does in Python
  on a lock) and a verifier's instructed check (``is_instructed``, run on every LOCKED and
  COMMIT claim). Per transfer that is one signing, one coordinator check, one chaincode
  check on a Fabric source, and ``--claims`` (default 8: LOCKED and COMMIT at 4 members)
  verifier checks. With ``--bridge-cpu-ms`` (the measured CPU per transfer of the bridge's
  processes, e.g. from ``bench/security_overhead.py``) the sum is shown as a share of it.
- **Gas** (a real anvil, auto-mining): the same ``lock`` made by a relayer with a brokerage
  instruction and by the holder directly (no signature), ``--locks`` of each, alternating,
  after one warm-up of each. The difference is the on-chain cost of carrying and checking
  the instruction (65-byte signature in calldata, the relayer-role and instructor-registry
lookups, ecrecover).

Prints a table; ``--json PATH`` writes the numbers, with the machine noted.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from web3 import Web3

from bridge.config import dump_toml, load_network
from bridge.coordinator.requests import check_instruction, terms_for, validate_request
from bridge.core.words import evm_network_word
from bridge.devnet.anvil import AnvilNode, DevAccount
from bridge.domain.committee import Committee
from bridge.domain.ids import LedgerId, SecurityId, evm_address_word
from bridge.domain.instructions import (
    instruction_digest,
    is_instructed,
    verify_instruction,
)
from bridge.domain.signer import LocalKeySigner
from bridge.domain.terms import TransferTerms
from bridge.instructions import Brokerage
from bridge.ledgers.evm.deploy import (
    connect,
    deploy_endpoint,
    deploy_security_token,
    issue,
    register_security,
    send_tx,
    set_eligible,
    set_instructor,
    set_relayer,
)
from bridge.rpc.convert import instruction_from_pb
from bridge.v1 import transfer_pb2

ISIN = "US0378331005"
GAS_LIMIT = 1_000_000
CHAIN_ID = 31_377


@dataclass(frozen=True)
class CpuRow:
    """CPU of one operation: microseconds per call (best and median of the repeats)."""

    name: str
    per_transfer: int  # how many times one transfer runs it
    best_us: float
    median_us: float


def machine_note() -> dict[str, Any]:
    """CPU count, model and Python version (the same note as bench/transfers.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from transfers import machine_note as note  # a sibling script

    result: dict[str, Any] = note()
    return result


def _time(fn: Callable[[int], object], iterations: int, repeats: int) -> tuple[float, float]:
    """(best, median) CPU microseconds per call of ``fn(i)`` over ``iterations`` calls."""
    per_call = []
    for r in range(repeats):
        began = time.process_time()
        for i in range(iterations):
            fn(r * iterations + i)
        per_call.append((time.process_time() - began) / iterations * 1e6)
    return min(per_call), statistics.median(per_call)


def _network_file(directory: Path, broker: LocalKeySigner) -> Path:
    path = directory / "network.toml"
    path.write_text(
        dump_toml(
            {
                "committee": {"epoch": 1, "threshold": 1, "members": ["0x" + "22" * 20]},
                "securities": {"isins": [ISIN]},
                "ledgers": [
                    {
                        "id": "brokerage-a",
                        "kind": "evm",
                        "rpc_url": "http://127.0.0.1:1",
                        "bridge": "0x" + "aa" * 20,
                        "chain_id": 31001,
                        "finality_depth": 0,
                    },
                    {
                        "id": "brokerage-b",
                        "kind": "evm",
                        "rpc_url": "http://127.0.0.1:2",
                        "bridge": "0x" + "bb" * 20,
                        "chain_id": 31002,
                        "finality_depth": 0,
                    },
                ],
                "instruction_keys": {"brokerage-a": ["0x" + broker.address.hex()]},
            }
        )
    )
    return path


def measure_cpu(iterations: int, repeats: int, claims: int) -> list[CpuRow]:
    """Time each instruction step over ``iterations`` calls (best/median of ``repeats``)."""
    broker = LocalKeySigner(secrets.token_bytes(32))
    with tempfile.TemporaryDirectory() as tmp:
        network = load_network(_network_file(Path(tmp), broker))
    brokerage = Brokerage(network, {"brokerage-a": broker}, ttl=120)
    sender, recipient = "0x" + "51" * 20, "0x" + "52" * 20

    def request(i: int) -> transfer_pb2.SubmitTransferRequest:
        return transfer_pb2.SubmitTransferRequest(
            idempotency_key=f"bench-{i}",
            security_id=ISIN,
            source_ledger="brokerage-a",
            target_ledger="brokerage-b",
            sender=sender,
            recipient=recipient,
            amount="5",
        )

    total = iterations * repeats
    requests = [request(i) for i in range(total)]
    signed = [brokerage.instruct(r) for r in requests]  # also the inputs of the checks
    validated = [
        validate_request(
            network,
            idempotency_key=r.idempotency_key,
            security=r.security_id,
            source_ledger=r.source_ledger,
            target_ledger=r.target_ledger,
            sender=r.sender,
            recipient=r.recipient,
            amount=r.amount,
        )
        for r in requests
    ]
    now = time.time()
    word = network.ledgers["brokerage-a"].network_word
    terms = [
        terms_for(network, v, instruction_from_pb(s))
        for v, s in zip(validated, signed, strict=True)
    ]
    signatures = [s.instruction.signature for s in signed]
    keys = network.instruction_keys["brokerage-a"]
    sender_word = terms[0].sender
    fresh = Brokerage(network, {"brokerage-a": broker}, ttl=120)

    def check(i: int) -> None:
        check_instruction(network, validated[i], instruction_from_pb(signed[i]), now=now, ttl=120)

    steps: list[tuple[str, int, Callable[[int], object]]] = [
        ("brokerage signs (Brokerage.instruct)", 1, lambda i: fresh.instruct(requests[i])),
        ("coordinator check_instruction (+ decode)", 1, check),
        (
            "signature check alone (verify_instruction)",
            1,
            lambda i: verify_instruction(word, terms[i], signatures[i]),
        ),
        (
            "verifier is_instructed (per claim)",
            claims,
            lambda i: is_instructed(keys, True, sender_word, terms[i].instructor),
        ),
    ]
    rows = []
    for name, count, fn in steps:
        best, median = _time(fn, iterations, repeats)
        rows.append(CpuRow(name, count, best, median))
    return rows


@dataclass(frozen=True)
class GasResult:
    """Gas of ``lock`` with a relayer's instruction and holder-direct, per sample."""

    relayer_instructed: list[int]
    holder_direct: list[int]
    calldata_bytes_relayer: int
    calldata_bytes_holder: int


def measure_gas(locks: int, workdir: Path) -> GasResult:
    """Lock ``locks`` times each way on a fresh anvil (alternating, after a warm-up each)."""
    node = AnvilNode("gas", CHAIN_ID, 0, workdir).start()
    try:
        w3 = connect(node.rpc_url)
        admin, relayer, holder, bob = (DevAccount.generate() for _ in range(4))
        for account in (admin, relayer, holder, bob):
            node.fund(account.address)
        members = sorted(
            (LocalKeySigner(secrets.token_bytes(32)) for _ in range(4)), key=lambda s: s.address
        )
        committee = Committee(epoch=1, threshold=3, members=tuple(s.address for s in members))
        key = admin.private_key
        isin = SecurityId(ISIN)
        src = deploy_endpoint(w3, key, LedgerId("brokerage-a"), committee)
        dst = deploy_endpoint(w3, key, LedgerId("brokerage-b"), committee)
        token = deploy_security_token(w3, key, isin)
        register_security(w3, key, src, token)
        set_relayer(w3, key, src, relayer.address)
        set_eligible(w3, key, token, holder.address)
        issue(w3, key, token, holder.address, 1_000_000)
        broker = LocalKeySigner(secrets.token_bytes(32))
        set_instructor(w3, key, src, Web3.to_checksum_address(broker.address))
        network = evm_network_word(CHAIN_ID)

        def terms(instructor: bytes) -> TransferTerms:
            deadline = int(w3.eth.get_block("latest")["timestamp"]) + 3_600
            return TransferTerms(
                nonce=secrets.token_bytes(32),
                security=isin.word,
                amount=5,
                src_ledger=LedgerId("brokerage-a").word,
                src_bridge=evm_address_word(src.address),
                dst_ledger=LedgerId("brokerage-b").word,
                dst_bridge=evm_address_word(dst.address),
                sender=evm_address_word(holder.address),
                recipient=evm_address_word(bob.address),
                instructor=instructor,
                deadline=deadline,
            )

        sizes: dict[str, int] = {}

        def lock(kind: str) -> int:
            if kind == "relayer":
                t = terms(bytes(12) + broker.address)
                signature = broker.sign_digest(instruction_digest(network, t))
                fn, by = src.functions.lock(t.as_abi_tuple(), signature), relayer
            else:
                t = terms(evm_address_word(holder.address))
                fn, by = src.functions.lock(t.as_abi_tuple(), b""), holder
            receipt = send_tx(w3, by.private_key, fn, gas=GAS_LIMIT)
            if receipt["status"] != 1:
                raise RuntimeError(f"{kind} lock reverted")
            tx = w3.eth.get_transaction(receipt["transactionHash"])
            sizes[kind] = len(bytes(tx["input"]))
            return int(receipt["gasUsed"])

        lock("relayer"), lock("holder")  # warm-up: first escrow into the contract
        relayer_gas, holder_gas = [], []
        for _ in range(locks):
            relayer_gas.append(lock("relayer"))
            holder_gas.append(lock("holder"))
        return GasResult(relayer_gas, holder_gas, sizes["relayer"], sizes["holder"])
    finally:
        node.stop()


def report(
    machine: dict[str, Any],
    rows: Sequence[CpuRow],
    gas: GasResult | None,
    bridge_cpu_ms: float | None,
    fabric_source: bool,
) -> dict[str, Any]:
    """Print the tables; return the summary written as JSON."""
    print(f"machine: {machine['nproc']} cpus ({machine['cpu_model']}), python {machine['python']}")
    print()
    print(f"{'CPU per call':<46} {'best us':>9} {'median us':>10} {'x/transfer':>11}")
    for r in rows:
        print(f"{r.name:<46} {r.best_us:>9.1f} {r.median_us:>10.1f} {r.per_transfer:>11}")
    sign = rows[0].median_us
    coordinator = rows[1].median_us
    chaincode = rows[2].median_us if fabric_source else 0.0
    verifiers = rows[3].median_us * rows[3].per_transfer
    per_transfer_ms = (sign + coordinator + chaincode + verifiers) / 1000
    bridge_side_ms = (coordinator + chaincode + verifiers) / 1000
    print()
    print(
        f"instruction CPU per transfer: {per_transfer_ms:.3f} ms (brokerage signing"
        f" {sign / 1000:.3f} ms; bridge side {bridge_side_ms:.3f} ms: coordinator"
        f" {coordinator / 1000:.3f}, verifiers {verifiers / 1000:.4f}"
        + (f", Fabric chaincode {chaincode / 1000:.3f}" if fabric_source else "")
        + ")"
    )
    summary: dict[str, Any] = {
        "cpu_us": [asdict(r) for r in rows],
        "instruction_cpu_ms_per_transfer": per_transfer_ms,
        "instruction_bridge_cpu_ms_per_transfer": bridge_side_ms,
        "fabric_source": fabric_source,
    }
    if bridge_cpu_ms:
        share = bridge_side_ms / bridge_cpu_ms
        print(
            f"  vs the measured bridge CPU per transfer ({bridge_cpu_ms:.1f} ms):"
            f" bridge side {share:.4f} ({share * 100:.2f}%), with signing"
            f" {per_transfer_ms / bridge_cpu_ms * 100:.2f}%"
        )
        summary |= {
            "bridge_cpu_ms_per_transfer": bridge_cpu_ms,
            "ratio_bridge_side": share,
            "ratio_with_signing": per_transfer_ms / bridge_cpu_ms,
        }
    if gas is not None:
        rel, hold = statistics.median(gas.relayer_instructed), statistics.median(gas.holder_direct)
        print()
        print(
            f"{'EVM lock gas (median of ' + str(len(gas.holder_direct)) + ')':<46} {'gas':>9}"
            f" {'calldata B':>11}"
        )
        print(
            f"{'relayer + brokerage instruction':<46} {rel:>9.0f} {gas.calldata_bytes_relayer:>11}"
        )
        print(f"{'holder-direct (no signature)':<46} {hold:>9.0f} {gas.calldata_bytes_holder:>11}")
        print(
            f"{'difference (instruction on chain)':<46} {rel - hold:>9.0f}"
            f" {gas.calldata_bytes_relayer - gas.calldata_bytes_holder:>11}"
            f"   ratio {rel / hold:.3f}"
        )
        summary["gas"] = asdict(gas) | {
            "relayer_median": rel,
            "holder_median": hold,
            "difference": rel - hold,
            "ratio": rel / hold,
        }
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Run the microbenchmarks and the gas measurement; print and optionally write JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--iterations", type=int, default=2000, help="calls per repeat (2000)")
    p.add_argument("--repeats", type=int, default=5, help="repeats; best and median (5)")
    p.add_argument(
        "--claims",
        type=int,
        default=8,
        help="verifier checks per transfer (LOCKED+COMMIT x 4 members: 8)",
    )
    p.add_argument("--locks", type=int, default=5, help="EVM locks of each kind (5)")
    p.add_argument("--no-gas", action="store_true", help="skip the anvil gas measurement")
    p.add_argument(
        "--fabric-source",
        action="store_true",
        help="count the chaincode's signature check (Fabric source)",
    )
    p.add_argument(
        "--bridge-cpu-ms",
        type=float,
        default=None,
        help="measured bridge CPU-ms per transfer, for the ratio",
    )
    p.add_argument("--json", type=Path, default=None, metavar="PATH")
    a = p.parse_args(argv)
    if a.iterations < 1 or a.repeats < 1 or a.locks < 1:
        p.error("--iterations, --repeats and --locks must be >= 1")
    rows = measure_cpu(a.iterations, a.repeats, a.claims)
    gas = None
    if not a.no_gas:
        with tempfile.TemporaryDirectory(prefix="kstb-gas-") as tmp:
            gas = measure_gas(a.locks, Path(tmp))
    machine = machine_note()
    summary = report(machine, rows, gas, a.bridge_cpu_ms, a.fabric_source)
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine, "config": vars(a) | {"json": str(a.json)}, **summary}
        a.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"results written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

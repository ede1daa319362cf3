"""Active/passive relayers (ADR 0017): a standby relayer for the same ledger and key waits
on the checkpoint store's lock and, once the active relayer is SIGKILLed, takes over from
the checkpoint it left; a second relayer NOT declared a standby refuses to start (exit 4)
instead of running beside the active one. The same lock guards a member's vote log."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from bridge.devnet.processes import port_open, wait_until
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.standby import EXIT_STATE_IN_USE
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.ha]

A, B = "brokerage-a", "brokerage-b"


def _copy_config(system: LocalSystem, name: str, copy: str, standby: bool) -> str:
    """``<copy>.toml``: ``<name>.toml`` (same ledger, key, port and state), ``standby`` set."""
    text = (system.workdir / f"{name}.toml").read_text()
    (system.workdir / f"{copy}.toml").write_text(f"standby = {str(standby).lower()}\n" + text)
    return f"{copy}.toml"


def _submit(system: LocalSystem, holder: str, amount: int) -> str:
    return system.submit(
        S.SubmitTransferRequest(
            idempotency_key=str(uuid.uuid4()), security_id=DEMO_ISIN, source_ledger=A,
            target_ledger=B, sender=holder, recipient=holder, amount=str(amount),
        ),
        limit_s=60,
    )  # fmt: skip


def _committed(system: LocalSystem, tids: list[str]) -> bool:
    with system.channel("depository") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        return all(
            stub.GetTransfer(S.GetTransferRequest(transfer_id=t), timeout=10).state
            == S.TRANSFER_STATE_COMMITTED
            for t in tids
        )


def test_a_second_relayer_on_the_same_state_refuses_to_start(system: LocalSystem) -> None:
    name = f"relayer-{B}"
    config = _copy_config(system, name, f"{name}-twin", standby=False)
    twin = system._process(f"{name}-twin", "relayers", config)
    try:
        twin.start()
        wait_until(lambda: not twin.alive(), 30, "the twin relayer exits")
        assert twin.proc is not None and twin.proc.returncode == EXIT_STATE_IN_USE
        assert "state in use" in Path(twin.log_path).read_text()
        assert system.processes[name].alive(), "the active relayer is untouched"
    finally:
        twin.stop()
        system.processes.pop(f"{name}-twin", None)


def test_a_standby_relayer_takes_over_from_the_checkpoint(system: LocalSystem) -> None:
    name = f"relayer-{B}"
    port = system.ports[name]
    holder = system.handle(A).make_holder(DEMO_ISIN, 30)
    system.handle(B).set_eligible(DEMO_ISIN, holder.address)
    before = _submit(system, holder.address, 4)
    wait_until(lambda: _committed(system, [before]), 90, "a transfer through the active relayer")
    config = _copy_config(system, name, f"{name}-standby", standby=True)
    standby = system._process(f"{name}-standby", "relayers", config)
    try:
        standby.start()
        wait_until(
            lambda: "standing by" in Path(standby.log_path).read_text(), 30, "standby waiting"
        )
        time.sleep(1.0)
        assert standby.alive(), "a standby waits; it neither exits nor serves"
        system.processes[name].kill9()  # the active relayer dies; the kernel frees its lock
        wait_until(lambda: port_open(port), 30, "the standby serving on the relayer's address")
        assert "taking over" in Path(standby.log_path).read_text()
        after = [_submit(system, holder.address, 5), _submit(system, holder.address, 6)]
        wait_until(lambda: _committed(system, after), 120, "transfers through the standby")
        assert system.handle(B).balance(DEMO_ISIN, holder.address) == 15, "each minted once"
        assert system.handle(A).balance(DEMO_ISIN, holder.address) == 15
    finally:
        # Hand the role back to a process under the usual name for the tests that follow.
        standby.stop()
        system.processes.pop(f"{name}-standby", None)
        system.start_process(name)

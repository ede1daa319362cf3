"""End to end with keys in custody: every committee member's key and every EVM relayer
account is generated inside a SoftHSM2 token (``LocalSystem(key_custody="pkcs11")``); the
members' signatures make the certificates the ledgers accept and the relayers' transactions
come from the token accounts. No plaintext member or relayer key exists on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator

import pytest

from bridge.config import dump_toml
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.domain.ids import parse_evm_address
from bridge.v1 import transfer_pb2, transfer_pb2_grpc
from tests.e2e.conftest import demo_request, eligible_everywhere

pytestmark = [pytest.mark.e2e, pytest.mark.security, pytest.mark.hsm]

A, B = "brokerage-a", "brokerage-b"
S = transfer_pb2


@pytest.fixture(scope="module")
def hsm_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    workdir = tmp_path_factory.mktemp("e2e-hsm")
    with LocalSystem(workdir, block_time=0.5, transfer_ttl=60, key_custody="pkcs11") as s:
        yield s


def test_token_members_and_relayers_move_units(hsm_system: LocalSystem) -> None:
    system = hsm_system
    assert system.token is not None
    # The daemons' files name token keys; no member or relayer key file exists.
    for i in range(len(system.members)):
        cfg = tomllib.loads((system.workdir / f"verifier-{i}.toml").read_text())
        assert "key_file" not in cfg
        assert cfg["key"]["token_label"] == system.token.label
        assert cfg["key"]["key_label"] == system.members[i][1]
    for name in system.ledgers:
        cfg = tomllib.loads((system.workdir / f"relayer-{name}.toml").read_text())
        assert cfg["key"]["key_label"] == f"relayer-{name}" and "key_file" not in cfg
    keys_dir = system.workdir / "keys"
    # Bearer tokens for the ledger nodes (rpc-token-*) are not signing keys.
    on_disk = sorted(p.name for p in keys_dir.iterdir() if not p.name.startswith("rpc-token-"))
    # The devnet's clients (the supply operator, the depository's order key, the brokerages'
    # instruction keys) use files; no daemon does.
    clients = [
        "depository.key",
        "supply-operator.key",
        *(f"instruction-{n}.key" for n in system.all_ledgers),
    ]
    assert on_disk == sorted(clients), "only the devnet's clients use key files"

    a, b = system.ledgers[A], system.ledgers[B]
    holder = a.make_holder(DEMO_ISIN, 100)
    eligible_everywhere(system, holder.address)
    committee = system.committee  # exactly the token members: only their signatures count
    assert committee is not None
    assert list(committee.members) == [parse_evm_address(m) for m, _ in system.members]
    with system.channel(f"brokerage:{A}") as channel:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        resp = stub.SubmitTransfer(
            system.brokerage.instruct(demo_request(holder.address, holder.address, "60", A, B)),
            timeout=30,
        )
        states = [
            u.state
            for u in stub.WatchTransfer(
                S.WatchTransferRequest(transfer_id=resp.transfer.transfer_id), timeout=120
            )
        ]
        assert states[-1] == S.TRANSFER_STATE_COMMITTED, states
        got = stub.GetTransfer(
            S.GetTransferRequest(transfer_id=resp.transfer.transfer_id), timeout=10
        )
    assert (a.balance(DEMO_ISIN, holder.address), b.balance(DEMO_ISIN, holder.address)) == (40, 60)
    # The lock on A and the mint on B were sent from the relayers' token accounts.
    for ledger, step in ((a, "lock"), (b, "mint")):
        tx = ledger.w3.eth.get_transaction(got.transactions[step])
        token_account = tomllib.loads((system.workdir / f"relayer-{ledger.name}.toml").read_text())[
            "key"
        ]["key_label"]
        assert token_account == f"relayer-{ledger.name}"
        assert ledger.w3.eth.get_transaction_count(tx["from"]) >= 2
        # not the (unused) file account LocalSystem generated, nor the admin: the token's
        assert tx["from"] not in (ledger.relayer.address, ledger.admin.address)
    system.wait_processes_alive(timeout=1)


def test_member_with_a_wrong_pin_refuses_to_start(hsm_system: LocalSystem) -> None:
    system = hsm_system
    assert system.token is not None
    cfg = tomllib.loads((system.workdir / "verifier-0.toml").read_text())
    key = dict(cfg["key"])
    key.pop("pin_file")
    key["pin_env"] = "KSTB_WRONG_PIN"
    cfg["key"] = key
    cfg["listen"] = "127.0.0.1:0"
    # Its own vote log: on verifier-0's, the running member's state lock (ADR 0017) would
    # refuse this second process (exit 4) before it ever asked the token for the key.
    cfg["vote_db"] = str(system.workdir / "state" / "verifier-wrong-pin.sqlite")
    path = system.workdir / "verifier-wrong-pin.toml"
    path.write_text(dump_toml(cfg))
    run = subprocess.run(
        [sys.executable, "-m", "verifiers", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **system.token.env(), "KSTB_WRONG_PIN": "0000-not-it"},
    )
    assert run.returncode != 0
    assert "login failed (PinIncorrect)" in run.stderr
    assert "0000-not-it" not in run.stderr + run.stdout, "the PIN is never echoed"

"""The example Go client (examples/go-client), built from source and run against the devnet
(issue 12 item 7): it dials the coordinator with a brokerage's mTLS certificate, submits a
signed instruction with an idempotency key, watches the transfer to a terminal state, and
decodes the structured details of a refusal. Each negative case asserts the precise reason
and that nothing was recorded or moved.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.cli.answers import expected_of
from bridge.config import load_network
from bridge.devnet.anvil import DevAccount, write_key_file
from bridge.devnet.system import DEMO_ISIN, LocalSystem
from bridge.tools.gen_go_client import CLIENT_DIR
from bridge.v1 import transfer_pb2 as S
from bridge.v1 import transfer_pb2_grpc
from tests.e2e.conftest import eligible_everywhere

# pytest-timeout's 20-minute backstop (pyproject.toml) leaves too little room here: this module
# its fixture builds the Go client (up to 15 minutes on a cold module cache).
pytestmark = [pytest.mark.e2e, pytest.mark.ops, pytest.mark.timeout(3600)]

A, B = "brokerage-a", "brokerage-b"


def _go() -> str | None:
    found = shutil.which("go")
    if found:
        return found
    return "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client binary, built with the pinned go.mod/go.sum (-mod=readonly)."""
    go = _go()
    if go is None:
        if os.environ.get("CI"):
            pytest.fail("the Go toolchain is missing in CI")
        pytest.skip("the Go toolchain is not installed")
    out = tmp_path_factory.mktemp("go-client") / "go-client"
    env = dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false", GOTOOLCHAIN="local")
    env["CGO_ENABLED"] = "0"
    result = subprocess.run(
        [go, "build", "-trimpath", "-o", str(out), "."],
        cwd=CLIENT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@dataclass
class Run:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


def client_argv(
    binary: Path,
    system: LocalSystem,
    state: Path,
    *,
    key: str,
    sender: str,
    recipient: str,
    amount: int,
    principal: str = f"brokerage:{A}",
    instruction_key: Path | None = None,
) -> list[str]:
    """The client's command line: ``principal``'s certificate, ``A``'s instruction key."""
    cert = system.certificate(principal)
    if instruction_key is None:
        system.instruction_key(A)  # written 0600 under keys/
        instruction_key = system.workdir / "keys" / f"instruction-{A}.key"
    return [
        str(binary),
        "-network", str(system.workdir / "network.toml"),
        "-coordinator", system.coordinator_target,
        "-cert", str(cert.cert_file),
        "-key", str(cert.key_file),
        "-instruction-key", str(instruction_key),
        "-state", str(state),
        "-idempotency-key", key,
        "-security", DEMO_ISIN,
        "-from", A,
        "-to", B,
        "-sender", sender,
        "-recipient", recipient,
        "-amount", str(amount),
        "-ttl", f"{system.transfer_ttl - 10}s",
        "-timeout", "150s",
    ]  # fmt: skip


def parse_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def run_client(
    binary: Path,
    system: LocalSystem,
    state: Path,
    *,
    key: str,
    sender: str,
    recipient: str,
    amount: int,
    principal: str = f"brokerage:{A}",
    instruction_key: Path | None = None,
) -> Run:
    argv = client_argv(
        binary, system, state, key=key, sender=sender, recipient=recipient, amount=amount,
        principal=principal, instruction_key=instruction_key,
    )  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    return Run(result.returncode, parse_events(result.stdout), result.stderr)


def recorded(system: LocalSystem, key: str) -> int:
    rows = system.query_coordinator(
        "SELECT COUNT(*) FROM transfers WHERE idempotency_key = ?", (key,)
    )
    return int(rows[0][0])


def test_go_client_commits_and_a_retry_returns_the_same_transfer(
    system: LocalSystem, go_client: Path, tmp_path: Path
) -> None:
    a, b = system.ledgers[A], system.ledgers[B]
    holder = a.make_holder(DEMO_ISIN, 100)
    recipient = DevAccount.generate()
    eligible_everywhere(system, recipient.address)
    key = f"go-{uuid.uuid4()}"

    def go() -> Run:
        return run_client(
            go_client, system, tmp_path / "state", key=key, sender=holder.address,
            recipient=recipient.address, amount=40,
        )  # fmt: skip

    first = go()
    assert first.returncode == 0, first.events or first.stderr
    (submitted,) = first.of("submitted")
    assert submitted["created"] is True
    updates = first.of("update")
    assert [u["sequence"] for u in updates] == list(range(1, len(updates) + 1))
    assert updates[0]["state"] == "TRANSFER_STATE_SUBMITTED"
    (end,) = first.of("terminal")
    assert end["state"] == "TRANSFER_STATE_COMMITTED"
    assert end["transfer_id"] == submitted["transfer_id"]
    assert {"lock", "burn", "mint"} <= set(end["transactions"])
    assert (a.balance(DEMO_ISIN, holder.address), b.balance(DEMO_ISIN, recipient.address)) == (
        60,
        40,
    )

    # The same key from the same state (same nonce and deadline): the stored transfer, not a
    # second one; the watch replays its history to the terminal state.
    again = go()
    assert again.returncode == 0, again.events or again.stderr
    (resubmitted,) = again.of("submitted")
    assert resubmitted == {**submitted, "created": False, "state": "TRANSFER_STATE_COMMITTED"}
    assert again.of("terminal")[0]["state"] == "TRANSFER_STATE_COMMITTED"
    assert (a.balance(DEMO_ISIN, holder.address), b.balance(DEMO_ISIN, recipient.address)) == (
        60,
        40,
    )
    assert recorded(system, key) == 1


def test_reusing_a_key_for_another_request_is_a_conflict(
    system: LocalSystem, go_client: Path, tmp_path: Path
) -> None:
    a = system.ledgers[A]
    holder = a.make_holder(DEMO_ISIN, 100)
    eligible_everywhere(system, holder.address)
    key = f"go-{uuid.uuid4()}"

    def go(state: str, amount: int) -> Run:
        return run_client(
            go_client, system, tmp_path / state, key=key, sender=holder.address,
            recipient=holder.address, amount=amount,
        )  # fmt: skip

    first = go("one", 5)
    assert first.returncode == 0, first.events or first.stderr

    # A fresh state (another nonce) and another amount under the same key: refused, and
    # the client reads why from ErrorInfo, not from the message.
    other = go("two", 6)
    assert other.returncode == 2, other.events or other.stderr
    (refused,) = other.of("refused")
    assert (refused["code"], refused["reason"], refused["retryable"]) == (
        "AlreadyExists",
        "CONFLICT",
        False,
    )
    assert refused["metadata"]["retryable"] == "false"
    assert not other.of("submitted")
    assert recorded(system, key) == 1
    assert a.balance(DEMO_ISIN, holder.address) == 95


def test_an_unregistered_instruction_key_is_refused_with_its_reason(
    system: LocalSystem, go_client: Path, tmp_path: Path
) -> None:
    a = system.ledgers[A]
    holder = a.make_holder(DEMO_ISIN, 10)
    rogue = tmp_path / "rogue.key"
    write_key_file(rogue, DevAccount.generate())
    key = f"go-{uuid.uuid4()}"
    run = run_client(
        go_client, system, tmp_path / "state", key=key, sender=holder.address,
        recipient=holder.address, amount=3, instruction_key=rogue,
    )  # fmt: skip
    assert run.returncode == 2, run.events or run.stderr
    (refused,) = run.of("refused")
    assert (refused["code"], refused["reason"], refused["retryable"]) == (
        "PermissionDenied",
        "CERTIFICATE_REFUSED",
        False,
    )
    assert recorded(system, key) == 0
    assert a.balance(DEMO_ISIN, holder.address) == 10
    assert a.escrowed(DEMO_ISIN) == 0


def test_another_brokerages_certificate_may_not_submit_from_this_ledger(
    system: LocalSystem, go_client: Path, tmp_path: Path
) -> None:
    a = system.ledgers[A]
    holder = a.make_holder(DEMO_ISIN, 10)
    key = f"go-{uuid.uuid4()}"
    run = run_client(
        go_client, system, tmp_path / "state", key=key, sender=holder.address,
        recipient=holder.address, amount=3, principal=f"brokerage:{B}",
    )  # fmt: skip
    assert run.returncode == 2, run.events or run.stderr
    (refused,) = run.of("refused")
    assert (refused["code"], refused["reason"], refused["retryable"]) == (
        "PermissionDenied",
        "PERMISSION_DENIED",
        False,
    )
    assert recorded(system, key) == 0
    assert a.balance(DEMO_ISIN, holder.address) == 10


def test_go_client_retries_a_submit_and_resumes_its_watch_across_coordinator_restarts(
    system: LocalSystem, go_client: Path, tmp_path: Path
) -> None:
    a, b = system.ledgers[A], system.ledgers[B]
    holder = a.make_holder(DEMO_ISIN, 50)
    eligible_everywhere(system, holder.address)
    key = f"go-{uuid.uuid4()}"
    argv = client_argv(
        go_client, system, tmp_path / "state", key=key, sender=holder.address,
        recipient=holder.address, amount=20,
    )  # fmt: skip
    # The coordinator is down when the client submits: UNAVAILABLE is retried.
    system.processes["coordinator"].kill9()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        system.start_process("coordinator")
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "submitted", first
        assert first["created"] is True
        # Killed while the client watches: the stream breaks, and the client resumes it.
        system.processes["coordinator"].kill9()
        time.sleep(1.0)
        system.start_process("coordinator")
        out, err = proc.communicate(timeout=170)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    events = [first, *parse_events(out)]
    updates = [e for e in events if e["event"] == "update"]
    # A resumed watch replays from 1; the client shows each state change exactly once.
    assert [u["sequence"] for u in updates] == list(range(1, len(updates) + 1))
    assert events[-1]["event"] == "terminal"
    assert events[-1]["state"] == "TRANSFER_STATE_COMMITTED"
    assert recorded(system, key) == 1
    assert (a.balance(DEMO_ISIN, holder.address), b.balance(DEMO_ISIN, holder.address)) == (
        30,
        20,
    ), "moved exactly once"


# ---- answers checked against the signed terms (review F8)


class _LyingCoordinator(transfer_pb2_grpc.TransferServiceServicer):
    """A coordinator that answers another transfer than the one instructed: either at
    submit (``lie_at_submit``: an older transfer's id) or in the watch (the right id at
    submit, then an update of another amount), always COMMITTED. Nothing is recorded."""

    def __init__(self, system: LocalSystem, lie_at_submit: bool) -> None:
        self.network = load_network(system.workdir / "network.toml")
        self.lie_at_submit = lie_at_submit

    def _transfer(self, request: S.SubmitTransferRequest) -> S.Transfer:
        want = expected_of(self.network, request)
        assert want is not None
        return S.Transfer(
            transfer_id=want.transfer_id, idempotency_key=want.idempotency_key,
            security_id=want.security, source_ledger=want.source_ledger,
            target_ledger=want.target_ledger, sender=want.sender, recipient=want.recipient,
            amount=want.amount, state=S.TRANSFER_STATE_COMMITTED,
        )  # fmt: skip

    def SubmitTransfer(self, request: S.SubmitTransferRequest, context: Any) -> Any:
        self.last = self._transfer(request)
        answer = S.Transfer()
        answer.CopyFrom(self.last)
        if self.lie_at_submit:
            answer.transfer_id = "0x" + "ab" * 32
        return S.SubmitTransferResponse(transfer=answer, created=False)

    def WatchTransfer(self, request: S.WatchTransferRequest, context: Any) -> Any:
        other = S.Transfer()
        other.CopyFrom(self.last)
        other.amount = str(int(other.amount) * 10)
        yield S.TransferUpdate(sequence=1, state=S.TRANSFER_STATE_COMMITTED, transfer=other)


@pytest.mark.batch
@pytest.mark.security
@pytest.mark.parametrize("lie_at_submit", [True, False], ids=["submit", "watch"])
def test_go_client_refuses_an_answer_that_is_not_the_transfer_it_signed(
    system: LocalSystem, go_client: Path, tmp_path: Path, lie_at_submit: bool
) -> None:
    """SECURITY: a coordinator answering another transfer (another id, or the right id with
    other terms in the watch) with COMMITTED does not make the client report COMMITTED."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    liar = _LyingCoordinator(system, lie_at_submit)
    transfer_pb2_grpc.add_TransferServiceServicer_to_server(liar, server)
    port = server.add_secure_port("127.0.0.1:0", system.server_credentials("coordinator"))
    server.start()
    try:
        argv = client_argv(
            go_client, system, tmp_path / "state", key=f"go-{uuid.uuid4()}",
            sender=DevAccount.generate().address, recipient=DevAccount.generate().address,
            amount=7,
        )  # fmt: skip
        argv[argv.index("-coordinator") + 1] = f"127.0.0.1:{port}"
        argv[argv.index("-timeout") + 1] = "20s"
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    finally:
        server.stop(None)
    run = Run(result.returncode, parse_events(result.stdout), result.stderr)
    assert run.returncode == 4, run.events or run.stderr
    assert not run.of("terminal")
    (mismatch,) = run.of("mismatch")
    field = "transfer_id" if lie_at_submit else "amount"
    assert f"not the one signed: {field} " in mismatch["message"]
    assert bool(run.of("submitted")) is not lie_at_submit

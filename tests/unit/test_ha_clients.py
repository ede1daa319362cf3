"""Active/passive coordinators (ADR 0017), the parts without a cluster: which failures a
client fails over on, where it goes (never to an address it was not given), the ``[ha]``
configuration rules, and the one-process-per-state lock of relayers and members."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.config import load_coordinator, load_relayer
from bridge.coordinator.db import DatabaseUnavailable
from bridge.coordinator.halts import Halted
from bridge.domain.errors import InvalidInput, NotLeader, Unavailable
from bridge.rpc.errors import DETAILS_KEY, received_error, status_details, status_for
from bridge.rpc.failover import (
    SyncFailover,
    TargetRing,
    leader_hint,
    parse_targets,
    should_fail_over,
)
from bridge.standby import StateInUse, StateLock
from tests.unit.test_config import network_data, write

pytestmark = [pytest.mark.unit, pytest.mark.ha]

ROOT = Path(__file__).resolve().parents[2]


class _Call(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, trailer: bytes | None = None) -> None:
        md = grpc.aio.Metadata()
        if trailer is not None:
            md.add(DETAILS_KEY, trailer)
        super().__init__(code, grpc.aio.Metadata(), md, "x", None)


def _wire(exc: Any) -> _Call:
    return _Call(status_for(exc), status_details(exc).SerializeToString())


def test_not_leader_carries_the_leaders_address_and_is_retryable() -> None:
    call = _wire(NotLeader("standby", "10.0.0.2:50051"))
    assert call.code() == grpc.StatusCode.UNAVAILABLE
    got = received_error(call.trailing_metadata())  # type: ignore[arg-type]
    assert (got.reason.value, got.leader, got.retryable) == ("NOT_LEADER", "10.0.0.2:50051", True)
    assert leader_hint(call) == "10.0.0.2:50051" and should_fail_over(call)


def test_only_transport_failures_not_leader_and_a_broken_database_fail_over() -> None:
    assert should_fail_over(_Call(grpc.StatusCode.UNAVAILABLE))  # down: no details at all
    assert should_fail_over(_Call(grpc.StatusCode.DEADLINE_EXCEEDED))  # hung
    # The coordinator's own database session broke (the server ended it): another
    # coordinator, or this one once reconnected, serves the retry.
    lost = _wire(DatabaseUnavailable("database coordinator unavailable: server closed"))
    got = received_error(lost.trailing_metadata())  # type: ignore[arg-type]
    assert lost.code() == grpc.StatusCode.UNAVAILABLE
    assert (got.reason.value, got.retryable) == ("DATABASE_UNAVAILABLE", True)
    assert should_fail_over(lost)
    # The leader's own answers are not failed over: a ledger unavailable, a halt.
    assert not should_fail_over(_wire(Unavailable("relayer of evm-b unreachable")))
    assert not should_fail_over(_wire(Halted("evm-b", "KR7005930003", "halted")))
    assert not should_fail_over(_Call(grpc.StatusCode.INVALID_ARGUMENT))
    assert not should_fail_over(ValueError("not an rpc error"))


def test_a_watch_whose_coordinator_lost_its_database_resumes_on_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The e2e HA test's flake (stop 30): a WatchTransfer served by a coordinator whose
    PostgreSQL session the server ended got DATABASE_UNAVAILABLE and the watch ended; it
    now moves to the next address and resumes there, as after the coordinator's death."""
    monkeypatch.setenv("KSTB_INSECURE_PLAINTEXT_FOR_DEVELOPMENT", "1")  # never dialled
    failover = SyncFailover(["127.0.0.1:1", "127.0.0.1:2"], None, give_up_after=5.0)
    served: list[str] = []

    def watch(channel: object, progressed: Callable[[], None]) -> str:
        served.append(failover.ring.current)
        if len(served) == 1:
            raise _wire(DatabaseUnavailable("database coordinator unavailable: closed"))
        return "terminal"

    try:
        assert failover.follow(watch) == "terminal"
        assert served == ["127.0.0.1:1", "127.0.0.1:2"]
    finally:
        failover.close()
    # A ledger's UNAVAILABLE stays the leader's answer: raised at once, not failed over.
    ledger_down = SyncFailover(["127.0.0.1:1", "127.0.0.1:2"], None, give_up_after=5.0)
    tries: list[str] = []

    def refused(channel: object, progressed: Callable[[], None]) -> str:
        tries.append(ledger_down.ring.current)
        raise _wire(Unavailable("relayer of evm-b unreachable"))

    try:
        with pytest.raises(grpc.RpcError):
            ledger_down.follow(refused)
        assert tries == ["127.0.0.1:1"]
    finally:
        ledger_down.close()


def test_the_ring_follows_a_hint_only_to_a_configured_address() -> None:
    ring = TargetRing(["a:1", "b:1", "c:1"])
    assert ring.current == "a:1"
    assert ring.after_failure(_wire(NotLeader("standby", "c:1"))) == "c:1"
    # SECURITY: a standby (compromised or misconfigured) naming an address the client was
    # not given does not redirect it; the client takes the next configured one.
    assert ring.after_failure(_wire(NotLeader("standby", "evil:443"))) == "a:1"
    assert ring.after_failure(_Call(grpc.StatusCode.UNAVAILABLE)) == "b:1"


def test_addresses_parse_and_refuse_empty_or_duplicate_lists() -> None:
    assert parse_targets(" a:1, b:2 ") == ("a:1", "b:2")
    assert parse_targets(["a:1"]) == ("a:1",)
    with pytest.raises(InvalidInput):
        parse_targets(" , ")
    with pytest.raises(InvalidInput, match="twice"):
        parse_targets("a:1,a:1")


def _coordinator_file(tmp_path: Path, database: str, ha: dict[str, Any]) -> Path:
    write(tmp_path / "network.toml", network_data())
    return write(
        tmp_path / "c.toml",
        {
            "network": "network.toml",
            "listen": "127.0.0.1:7000",
            "database": database,
            "verifiers": ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"],
            "relayers": {"brokerage-a": "127.0.0.1:1", "brokerage-b": "127.0.0.1:2"},
            "ha": ha,
        },
    )


def test_ha_table_is_read_with_its_timing(tmp_path: Path) -> None:
    cfg = load_coordinator(
        _coordinator_file(
            tmp_path,
            "postgresql://kstb@127.0.0.1:5432/kstb",
            {"name": "coord-a", "lease_ttl": 6, "renew_interval": 1.5},
        )
    )
    assert cfg.ha is not None
    assert (cfg.ha.name, cfg.ha.advertise, cfg.ha.lease_ttl, cfg.ha.renew_interval) == (
        "coord-a",
        "127.0.0.1:7000",  # advertise defaults to listen
        6.0,
        1.5,
    )


@pytest.mark.security
@pytest.mark.parametrize(
    ("database", "ha", "match"),
    [
        ("state/c.sqlite", {"name": "a"}, "needs a PostgreSQL database"),
        ("postgresql://kstb@127.0.0.1/kstb", {}, "ha.name: missing required key"),
        ("postgresql://kstb@127.0.0.1/kstb", {"name": "a", "lease_ttl": 3, "renew_interval": 2},
         "renew_interval <= lease_ttl / 3"),
        ("postgresql://kstb@127.0.0.1/kstb", {"name": "a", "renew_interval": 0},
         "ha.renew_interval: must be greater than 0"),
    ],
)  # fmt: skip
def test_ha_table_refuses_sqlite_and_unsafe_timing(
    tmp_path: Path, database: str, ha: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        load_coordinator(_coordinator_file(tmp_path, database, ha))


def test_relayer_takes_every_coordinator_address_and_a_standby_flag(tmp_path: Path) -> None:
    write(tmp_path / "network.toml", network_data())
    relayer = load_relayer(
        write(
            tmp_path / "r.toml",
            {
                "network": "network.toml",
                "ledger": "brokerage-b",
                "listen": "127.0.0.1:1",
                "coordinator": ["a:1", "b:1"],
                "key_file": "k.key",
                "state_db": "r.sqlite",
                "standby": True,
            },
        )
    )
    assert (relayer.coordinator, relayer.standby) == ("a:1,b:1", True)


_HOLDER = """
import sys, time
from bridge.standby import StateLock
assert StateLock(__import__("pathlib").Path(sys.argv[1])).try_acquire()  # reference dropped
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.security
async def test_one_process_per_state_and_a_standby_takes_over_when_it_dies(
    tmp_path: Path,
) -> None:
    state = tmp_path / "votes.sqlite"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, str(state),
        stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ},
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"held"
        with pytest.raises(StateInUse, match="standby = true"):
            await StateLock(state).acquire(standby=False)
        standby = StateLock(state)
        waiting = asyncio.create_task(standby.acquire(standby=True, poll=0.05))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "a standby waits while the active process lives"
        holder.kill()  # SIGKILL: the kernel releases the lock
        await holder.wait()
        await asyncio.wait_for(waiting, 5)
        assert not StateLock(state).try_acquire(), "now the standby holds it"
        standby.release()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()

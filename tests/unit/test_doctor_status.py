"""What a daemon's ``GetStatus`` discloses and what it costs (review findings 2, 3, 9):
a failed ledger read leaves as one fixed word, never the node's error text; one status
build answers every caller for a while, one build at a time; the depository is told no
internal endpoints, operator identities or gas balances."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import grpc
import pytest
import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from bridge.doctor.model import ComponentStatus, LedgerView
from bridge.doctor.status import (
    VIEW_ERRORS,
    VIEW_MALFORMED,
    VIEW_REFUSED,
    VIEW_UNREACHABLE,
    StatusServicer,
    for_caller,
    read_view,
    redact_urls,
    view_error,
)
from bridge.domain.errors import Unavailable

pytestmark = [pytest.mark.unit, pytest.mark.ops, pytest.mark.security]

SECRET_URL = "https://admin:hunter2@10.1.2.3:8545/v3/APIKEY123?token=abc"


def _response_error(status: int) -> aiohttp.ClientResponseError:
    info = aiohttp.RequestInfo(URL(SECRET_URL), "POST", CIMultiDictProxy(CIMultiDict()))
    return aiohttp.ClientResponseError(info, (), status=status, message="denied")


class _Failing:
    """A reader whose node fails with ``exc`` (only what read_view touches)."""

    kind = "evm"
    bridge_word = b"\x00" * 32

    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    async def network_word(self) -> bytes:
        raise self._exc


def _wrapped(inner: BaseException) -> Unavailable:
    try:
        raise Unavailable(f"ledger a unreachable during eth_chainId: {inner}") from inner
    except Unavailable as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "word"),
    [
        (_wrapped(_response_error(401)), VIEW_REFUSED),
        (_wrapped(_response_error(503)), VIEW_UNREACHABLE),
        (_wrapped(ConnectionRefusedError(111, f"connect {SECRET_URL}")), VIEW_UNREACHABLE),
        (ValueError(f"cannot decode {SECRET_URL}"), VIEW_MALFORMED),
    ],
)
async def test_a_failed_read_leaves_as_a_fixed_word(exc: BaseException, word: str) -> None:
    with structlog.testing.capture_logs() as logs:
        v = await read_view("a", _Failing(exc))  # type: ignore[arg-type]
    assert v.error == word and word in VIEW_ERRORS
    assert v.finalized_height == 0 and v.epochs == () and v.network_word == b""
    # The detail stays in the daemon's own log, without the URL's secrets or path.
    logged = repr(logs)
    for secret in ("hunter2", "APIKEY123", "token=abc", "admin:"):
        assert secret not in logged and secret not in v.error
    assert logs[0]["category"] == word


class _PeerError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def __str__(self) -> str:
        return f"peer at {SECRET_URL} said no"


@pytest.mark.parametrize(
    ("code", "word"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, VIEW_REFUSED),
        (grpc.StatusCode.UNAUTHENTICATED, VIEW_REFUSED),
        (grpc.StatusCode.UNAVAILABLE, VIEW_UNREACHABLE),
        (grpc.StatusCode.INTERNAL, VIEW_MALFORMED),
    ],
)
async def test_a_fabric_peers_refusal_is_a_word_too(code: grpc.StatusCode, word: str) -> None:
    v = await read_view("f", _Failing(_PeerError(code)))  # type: ignore[arg-type]
    assert v.error == word


def test_redact_urls_keeps_scheme_and_host_only() -> None:
    assert redact_urls(f"failed: {SECRET_URL} then x") == "failed: https://10.1.2.3:8545/… then x"
    assert view_error(RuntimeError(SECRET_URL)) == VIEW_MALFORMED


def _status(**changes: object) -> ComponentStatus:
    base = ComponentStatus(
        "coordinator",
        "1",
        2,
        0,
        endpoints=(("relayer:a", "10.0.0.7:7201"),),
        ledgers=(LedgerView("a", "evm", b"w", b"b", 5, 5, "0xoperator", 10**18),),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_depository_is_told_no_endpoints_operators_or_gas() -> None:
    full = _status()
    seen = for_caller(full, "depository")
    assert seen.endpoints == ()
    assert [(v.operator, v.gas_balance) for v in seen.ledgers] == [("", None)]
    assert seen.ledgers[0].finalized_height == 5  # what it needs stays
    assert for_caller(full, "bridge-operator") == full
    assert full.endpoints  # the original is not changed


async def test_one_build_answers_every_caller_for_a_while() -> None:
    builds = 0
    release = asyncio.Event()

    async def describe() -> ComponentStatus:
        nonlocal builds
        builds += 1
        await release.wait()
        return _status()

    servicer = StatusServicer(describe, cache_seconds=60)
    # Callers with tiny deadlines give up; the one build goes on and is not restarted.
    quitters = [asyncio.ensure_future(servicer.status()) for _ in range(20)]
    await asyncio.sleep(0)
    for q in quitters:
        q.cancel()
    waiting = [asyncio.ensure_future(servicer.status()) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    answers = await asyncio.gather(*waiting)
    assert builds == 1
    assert {a.endpoints for a in answers} == {_status().endpoints}
    await servicer.status()
    assert builds == 1  # cached
    assert (await servicer.status()).time_unix_ms > 0  # the clock is fresh in each answer


async def test_a_failed_build_is_not_cached() -> None:
    calls = 0

    async def describe() -> ComponentStatus:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("node down")
        return _status()

    servicer = StatusServicer(describe, cache_seconds=60)
    with pytest.raises(RuntimeError):
        await servicer.status()
    assert (await servicer.status()).endpoints and calls == 2

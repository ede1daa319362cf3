"""``SessionProvider`` (bridge/ledgers/evm/provider.py): web3's provider posting over the
adapter's own session. Pure logic with a scripted session; the real node, TLS proxy and token
are in ``tests/integration/test_ledger_node_auth.py``."""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any

import aiohttp
import pytest
from web3.types import RPCEndpoint

from bridge.ledgers.evm.provider import SessionProvider

pytestmark = [pytest.mark.unit, pytest.mark.batch]


class _Response:
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def raise_for_status(self) -> None:
        return None

    async def read(self) -> bytes:
        return self.body


class _Session:
    """Posts fail with a dropped connection ``drops`` times, then answer block 0x2a."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.posts: list[dict[str, Any]] = []

    def post(self, url: str, **kwargs: Any) -> _Response:
        self.posts.append({"url": url, **kwargs})
        if self.drops:
            self.drops -= 1
            raise aiohttp.ServerDisconnectedError()
        request = json.loads(kwargs["data"])
        return _Response(
            json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x2a"}).encode()
        )


def _provider(session: _Session) -> SessionProvider:
    return SessionProvider("https://node.example:8545", lambda: session)  # type: ignore[arg-type,return-value]


def test_a_request_goes_over_the_given_session_without_redirects() -> None:
    session = _Session(drops=0)
    answer = asyncio.run(_provider(session).make_request(RPCEndpoint("eth_blockNumber"), []))
    assert answer["result"] == "0x2a"
    (post,) = session.posts
    assert post["url"] == "https://node.example:8545"
    assert post["allow_redirects"] is False
    assert "timeout" not in post  # the session's own timeout applies


def test_web3s_retry_of_an_idempotent_read_on_a_dropped_connection_is_kept() -> None:
    session = _Session(drops=2)
    provider = _provider(session)
    provider.exception_retry_configuration.backoff_factor = 0  # no sleeping in a unit test
    answer = asyncio.run(provider.make_request(RPCEndpoint("eth_blockNumber"), []))
    assert answer["result"] == "0x2a"
    assert len(session.posts) == 3


def test_the_session_cache_is_never_used() -> None:
    provider = _provider(_Session(drops=0))
    with pytest.raises(RuntimeError, match="no session cache"):
        asyncio.run(
            provider.cache_async_session(aiohttp.ClientSession.__new__(aiohttp.ClientSession))
        )

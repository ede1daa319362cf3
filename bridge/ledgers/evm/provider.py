"""web3's HTTP provider, sending every request over one session its adapter owns.

web3 8's ``AsyncHTTPProvider`` looks its session up in a cache on every request, under a
threading lock that it acquires in a thread pool: a thread hand-off per JSON-RPC request
(``bench/README.md``: relayers about 5 % cheaper without it). An adapter has exactly one
node and one session (:meth:`bridge.ledgers.evm.transport.EvmTransport.session`: the node's
CA, the token, a keep-alive pool, the timeout), so the lookup buys nothing here.

:class:`SessionProvider` replaces only the provider's session manager: web3's request
encoding, its retry of idempotent methods on connection errors
(``exception_retry_configuration``), response decoding and error mapping are unchanged, and
single and batch requests alike go over the adapter's session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from web3 import AsyncHTTPProvider
from web3._utils.http_session_manager import HTTPSessionManager


class _AdapterSessions(HTTPSessionManager):
    """web3's session manager, posting to the adapter's session instead of its cache."""

    def __init__(self, session: Callable[[], aiohttp.ClientSession]) -> None:
        super().__init__()
        self._session_of = session

    async def async_make_post_request(
        self, endpoint_uri: Any, data: bytes | dict[str, Any], **kwargs: Any
    ) -> bytes:
        kwargs.pop("timeout", None)  # the session's own timeout applies
        # SECURITY: no redirect is followed: a node answers itself, and a redirect could
        # lead the request (and its token) to another server or to plain http.
        async with self._session_of().post(
            endpoint_uri, data=data, allow_redirects=False, **kwargs
        ) as response:
            response.raise_for_status()
            return await response.read()

    async def async_cache_and_return_session(self, *args: Any, **kwargs: Any) -> Any:
        """Never used here; refuse rather than open a session without the CA or token."""
        raise RuntimeError("the adapter's provider has no session cache")


class SessionProvider(AsyncHTTPProvider):
    """An ``AsyncHTTPProvider`` whose every request goes over ``session()``.

    Guarantees: each request, single or batch, is one POST to the configured URL over the
    session ``session()`` returns when the request is made (so a session the adapter
    recreates is used from the next request on), carrying that session's TLS trust, token
    and timeout; redirects are not followed; a non-2xx answer raises
    ``aiohttp.ClientResponseError`` as web3's own provider does; web3's retries of
    idempotent methods on connection errors are kept; no thread is involved.
    """

    def __init__(self, endpoint_uri: str, session: Callable[[], aiohttp.ClientSession]) -> None:
        super().__init__(endpoint_uri)
        self._request_session_manager = _AdapterSessions(session)

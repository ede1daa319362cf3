"""web3's HTTP provider, sending every request over one session its adapter owns.

web3 8's ``AsyncHTTPProvider`` looks its session up in a cache on every request, under a
threading lock that it acquires in a thread pool: a thread hand-off per JSON-RPC request,
about a tenth of a relayer's CPU under load (issue 14; ``bench/README.md``). An adapter has
exactly one node and one session (:meth:`bridge.ledgers.evm.transport.EvmTransport.session`:
the node's CA, the token, a keep-alive pool), so the lookup buys nothing here.
:class:`SessionProvider` keeps everything else of ``AsyncHTTPProvider`` (request encoding,
response decoding, error mapping) and posts straight to that session.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from web3 import AsyncHTTPProvider
from web3.types import RPCEndpoint

_HEADERS = {"Content-Type": "application/json"}


class SessionProvider(AsyncHTTPProvider):
    """An ``AsyncHTTPProvider`` whose every request goes over ``session()``.

    Guarantees: each request is one POST of the JSON-RPC body to the configured URL over the
    session ``session()`` returns when the request is made (so a session the adapter
    recreates is used from the next request on); a non-2xx answer raises
    ``aiohttp.ClientResponseError`` as web3's own provider does; no thread is involved.
    The session carries the node's TLS trust, the token and the timeout; this class adds
    nothing to them.
    """

    def __init__(self, endpoint_uri: str, session: Callable[[], aiohttp.ClientSession]) -> None:
        super().__init__(endpoint_uri)
        self._url = endpoint_uri
        self._session_of = session

    async def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        async with self._session_of().post(
            self._url, data=request_data, headers=_HEADERS
        ) as response:
            response.raise_for_status()
            return await response.read()

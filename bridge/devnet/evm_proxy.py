"""A devnet-only authenticating TLS reverse proxy in front of an anvil JSON-RPC port.

anvil has neither TLS nor authentication; production EVM nodes do both natively (Besu: TLS
and JWT, hosted Kaia/Ethereum endpoints: a token over https). The devnet puts this proxy in
front of each anvil so that the bridge's clients are exercised exactly as in production.

Guarantees:

- listens on 127.0.0.1 only, TLS only (TLS 1.3), with a certificate from a devnet CA;
- forwards a request only when its ``Authorization`` header is ``Bearer <token>`` for one of
  the tokens in the token file (one per line, compared in constant time); any other request
  gets ``401`` with a JSON-RPC error and is not forwarded;
- forwards only ``POST /`` with a body of at most 10 MiB to the upstream URL, and returns the
  upstream's status and body unchanged; every refusal is logged without the token;
- a WebSocket upgrade on ``GET /`` (``wss://``, for ``newHeads`` subscriptions) gets the same
  bearer check before it is accepted, then relays text frames both ways to the upstream's
  ``ws://`` endpoint until either side closes.

Run as ``python -m bridge.devnet.evm_proxy --port P --upstream URL --cert C --key K
--token-file T``; :class:`EvmRpcProxy` starts and stops it as a managed process.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from bridge.devnet.processes import ManagedProcess, exit_on_sigterm, free_port
from bridge.logfields import configure, get_logger

MAX_BODY = 10 * 1024 * 1024
UNAUTHORIZED_BODY = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {"code": -32001, "message": "unauthorized"},
}
LISTEN_HOST = "127.0.0.1"


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """The accepted tokens: each non-empty line of ``path`` (0600, like a key file)."""
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"token file {path} must not be readable by group/others")
    tokens = tuple(line.strip().encode() for line in path.read_text().splitlines() if line.strip())
    if not tokens or any(b" " in t for t in tokens):
        raise ValueError(f"token file {path} must hold one token per line")
    return tokens


def authorised(header: str | None, tokens: Sequence[bytes]) -> bool:
    """Whether an ``Authorization`` header value carries one of ``tokens`` as a bearer token."""
    if not header or not header.startswith("Bearer "):
        return False
    given = header[len("Bearer ") :].strip().encode()
    # SECURITY: constant-time comparison with every token, no early exit on a match.
    matches = [hmac.compare_digest(given, t) for t in tokens]
    return any(matches)


def make_app(upstream: str, tokens: Sequence[bytes]) -> web.Application:
    """The proxy's aiohttp application (no TLS here; :func:`serve` adds it). Logs through
    the process's logging as configured (:func:`serve` configures it; building the app never
    reconfigures a host process's logging, e.g. a test's)."""
    log = get_logger()
    app = web.Application(client_max_size=MAX_BODY)
    holder: dict[str, aiohttp.ClientSession] = {}

    async def on_startup(_: web.Application) -> None:
        holder["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64),
            timeout=aiohttp.ClientTimeout(total=30),
        )

    async def on_cleanup(_: web.Application) -> None:
        await holder["session"].close()

    async def forward(request: web.Request) -> web.Response:
        if not authorised(request.headers.get("Authorization"), tokens):
            log.warning(
                "unauthenticated request refused",
                peer=request.remote,
                has_header="Authorization" in request.headers,
            )
            return web.json_response(
                UNAUTHORIZED_BODY,
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="kstb-devnet"'},
            )
        body = await request.read()
        async with holder["session"].post(
            upstream, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            payload = await resp.read()
            return web.Response(body=payload, status=resp.status, content_type="application/json")

    async def relay(request: web.Request) -> web.StreamResponse:
        if not authorised(request.headers.get("Authorization"), tokens):
            log.warning("unauthenticated websocket refused", peer=request.remote)
            return web.json_response(UNAUTHORIZED_BODY, status=401)
        client = web.WebSocketResponse(max_msg_size=MAX_BODY)
        await client.prepare(request)
        ws_upstream = "ws://" + upstream.split("://", 1)[1]
        async with holder["session"].ws_connect(ws_upstream) as node:

            async def down() -> None:
                async for msg in node:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await client.send_str(msg.data)

            pump = asyncio.ensure_future(down())
            try:
                async for msg in client:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await node.send_str(msg.data)
            finally:
                pump.cancel()
        await client.close()
        return client

    app.router.add_post("/", forward)
    app.router.add_get("/", relay)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context with ``cert``/``key`` and TLS 1.3 only."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def serve(port: int, upstream: str, cert: Path, key: Path, token_file: Path) -> None:
    """Serve until cancelled (SIGTERM exits the process)."""
    log = configure("evm-proxy")
    app = make_app(upstream, read_tokens(token_file))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LISTEN_HOST, port, ssl_context=server_ssl_context(cert, key))
    await site.start()
    log.info("evm proxy started", port=port, upstream=upstream)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="evm-proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    args = parser.parse_args(argv)
    exit_on_sigterm()
    asyncio.run(serve(args.port, args.upstream, args.cert, args.key, args.token_file))


@dataclass
class EvmRpcProxy:
    """The proxy for one anvil node as a managed process (``https://127.0.0.1:<port>``)."""

    name: str
    upstream: str
    cert: Path
    key: Path
    token_file: Path
    log_dir: Path
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        """The https URL clients use."""
        return f"https://{LISTEN_HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The ``wss://`` URL of the same listener (WebSocket, the same bearer check)."""
        return f"wss://{LISTEN_HOST}:{self.port}"

    def start(self) -> EvmRpcProxy:
        """Start the proxy and wait until it listens; returns self."""
        import sys

        argv = [
            sys.executable, "-m", "bridge.devnet.evm_proxy",
            "--port", str(self.port),
            "--upstream", self.upstream,
            "--cert", str(self.cert),
            "--key", str(self.key),
            "--token-file", str(self.token_file),
        ]  # fmt: skip
        self.process = ManagedProcess(
            name=f"evm-proxy-{self.name}",
            argv=argv,
            log_path=self.log_dir / f"evm-proxy-{self.name}.log",
            env={"KSTB_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"},
        ).start()
        self.process.wait_port(self.port)
        return self

    def stop(self) -> None:
        """Stop the proxy process."""
        if self.process is not None:
            self.process.stop()


if __name__ == "__main__":
    main()

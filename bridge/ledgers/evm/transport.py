"""How an EVM adapter reaches its JSON-RPC node: TLS trust and an authentication token.

Production nodes authenticate clients themselves (Besu: JWT or TLS client certificates;
Kaia and hosted nodes: a token behind TLS); the devnet puts an authenticating TLS proxy in
front of anvil (``bridge/devnet/evm_proxy.py``). This module only builds the HTTP session:
which CA verifies the node's certificate and which ``Authorization`` header goes with each
request. The token never appears in ``repr``, logs or error messages.

SECURITY: a component that reads leg states over plain ``http``, or trusts any server the
public roots vouch for, can be fed forged states by whoever sits on the path or obtains a
public certificate for the host. So a node is reached only over ``https`` verified by the
configured ``tls_ca`` (never the system trust store), unless the development flag
:data:`bridge.rpc.tls.INSECURE_ENV` is set; a bearer token is never sent to a node that is
not verified by ``tls_ca``, flag or not.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bridge.config import LedgerAuth, LedgerConfig
from bridge.domain.errors import InvalidInput
from bridge.keys.files import refuse_exposed
from bridge.logfields import get_logger
from bridge.rpc.tls import INSECURE_ENV

MAX_TOKEN_BYTES = 4096


class NodeConnectionRefused(InvalidInput):
    """An EVM node connection that is not ``https`` verified by a configured CA, with the
    development flag unset (or a token that would go to a node not verified by its CA)."""


def check_node_trust(ledger: str, rpc_url: str, tls_ca: Path | None) -> None:
    """Return if ``rpc_url`` is ``https`` and ``tls_ca`` verifies it; else, with
    :data:`INSECURE_ENV` set to ``1``, log a loud warning and return; else raise
    NodeConnectionRefused naming the ledger and what is missing."""
    if rpc_url.startswith("https://") and tls_ca is not None:
        return
    missing = "an https:// rpc_url" if not rpc_url.startswith("https://") else "tls_ca"
    if os.environ.get(INSECURE_ENV) == "1":
        get_logger().warning(
            "INSECURE: EVM node connection without TLS verified by a configured CA; never use"
            " this outside development",
            ledger=ledger,
            missing=missing,
            flag=INSECURE_ENV,
        )
        return
    raise NodeConnectionRefused(
        f"ledger {ledger}: the EVM node connection needs {missing} (https verified by the"
        f" node's CA, never plain http or the system trust store); refused unless"
        f" {INSECURE_ENV}=1"
    )


def read_token_file(path: Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace removed).

    Refuses a file readable by group or others (like key files), an empty file, and a token
    with characters that cannot go in an HTTP header.
    """
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise InvalidInput(f"token file {path} unreadable: {exc.strerror}") from None
    # SECURITY: the token grants access to the ledger node; keep it as private as a key.
    refuse_exposed(path, mode, "token file")
    raw = path.read_bytes()
    if len(raw) > MAX_TOKEN_BYTES:
        raise InvalidInput(f"token file {path} is larger than {MAX_TOKEN_BYTES} bytes")
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise InvalidInput(f"token file {path} does not hold an ASCII token") from None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise InvalidInput(f"token file {path} must hold one token without spaces")
    return token


@dataclass(frozen=True, slots=True)
class EvmTransport:
    """The TLS trust and token for one node connection.

    ``tls_ca`` set: only that CA verifies the node; unset is accepted only under the
    development flag (:func:`check_node_trust`, called by the adapter). ``token`` set: every
    request carries ``Authorization: Bearer <token>``.
    """

    tls_ca: Path | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def for_ledger(cls, config: LedgerConfig, auth: LedgerAuth | None) -> EvmTransport:
        """The transport ``config`` (after any endpoint override) and ``auth`` describe.

        A token for a non-``https`` URL is refused: it would travel in clear.
        """
        token = None
        if auth is not None and auth.token_file is not None:
            if not config.rpc_url.startswith("https://"):
                raise InvalidInput(
                    f"ledger {config.id}: a token needs an https:// rpc_url, not {config.rpc_url}"
                )
            # SECURITY: the token is a credential; a server that only the public roots
            # vouch for must never receive it, development flag or not.
            if config.tls_ca is None:
                raise NodeConnectionRefused(
                    f"ledger {config.id}: a token needs tls_ca (the node's CA); it is never"
                    " sent to a server verified by the system trust store"
                )
            token = read_token_file(auth.token_file)
        if config.tls_ca is not None and not config.rpc_url.startswith("https://"):
            raise InvalidInput(f"ledger {config.id}: tls_ca needs an https:// rpc_url")
        return cls(tls_ca=config.tls_ca, token=token)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying client context trusting only ``tls_ca``; None for the default one."""
        if self.tls_ca is None:
            return None
        # SECURITY: verification stays on (hostname and chain) and the configured CA is the
        # only trust root: no system CAs are loaded (create_default_context would add them).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(self.tls_ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        return ctx

    def headers(self) -> dict[str, str]:
        """Headers to send with every request (the ``Authorization`` header, if any)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def session(self, limit: int = 32, timeout_s: float = 10.0) -> aiohttp.ClientSession:
        """A keep-alive HTTP session that verifies the node and authenticates every request."""
        ctx = self.ssl_context()
        connector = aiohttp.TCPConnector(
            limit=limit, limit_per_host=limit, ssl=ctx if ctx is not None else True
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers=self.headers(),
        )

"""Anvil ledgers (npm ``@foundry-rs/anvil``, pinned) started as local processes.

Keys are never fixed: accounts are generated at run time and funded with
``anvil_setBalance``, so no private key lives in the repository.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coincurve import PrivateKey

from bridge.devnet.evm_proxy import EvmRpcProxy
from bridge.devnet.ledger_tls import DevCA
from bridge.devnet.processes import REPO_ROOT, ManagedProcess, free_port
from bridge.domain.committee import address_of_public_key

ANVIL_BIN = (
    REPO_ROOT
    / "contracts"
    / "evm"
    / "node_modules"
    / "@foundry-rs"
    / "anvil-linux-amd64"
    / "bin"
    / "anvil"
)


def anvil_binary() -> Path:
    """Path of the pinned anvil binary; raises with the install hint if missing."""
    override = os.environ.get("KSTB_ANVIL")
    path = Path(override) if override else ANVIL_BIN
    if not path.exists():
        raise FileNotFoundError(f"anvil not found at {path}; run `make setup`")
    return path


@dataclass(frozen=True)
class DevAccount:
    """A runtime-generated secp256k1 account (test use only)."""

    private_key: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> DevAccount:
        """A fresh random account."""
        return cls(secrets.token_bytes(32))

    @property
    def address(self) -> str:
        """EIP-55 checksummed address."""
        from eth_utils.address import to_checksum_address

        pub = PrivateKey(self.private_key).public_key.format(compressed=False)
        return str(to_checksum_address(address_of_public_key(pub)))

    @property
    def key_hex(self) -> str:
        """0x-prefixed private key, for writing to a key file with mode 0600."""
        return "0x" + self.private_key.hex()


def write_token_file(path: Path) -> Path:
    """Write a fresh random bearer token (hex) to ``path``, readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return path


def write_key_file(path: Path, account: DevAccount) -> None:
    """Write a private key file readable only by its owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(account.key_hex + "\n")


@dataclass
class AnvilNode:
    """One anvil ledger on 127.0.0.1; ``block_time`` 0 mines a block per transaction."""

    name: str
    chain_id: int
    block_time: float
    workdir: Path
    _ca: DevCA | None = field(default=None, repr=False)
    port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None
    proxy: EvmRpcProxy | None = None
    """The authenticating TLS proxy in front of this node, once :meth:`secure` ran."""
    extra_args: tuple[str, ...] = ()
    """More anvil flags (an EVM profile's node settings, e.g. ``bridge.devnet.kaia``)."""

    @property
    def rpc_url(self) -> str:
        """HTTP JSON-RPC endpoint of anvil itself (devnet setup and assertions only)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """anvil's WebSocket endpoint (the HTTP port serves both)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def public_ws_url(self) -> str:
        """The WebSocket URL the bridge's components use (``wss://`` through the proxy)."""
        return self.ws_url if self.proxy is None else self.proxy.ws_url

    @property
    def public_rpc_url(self) -> str:
        """The URL the bridge's components use: the proxy's https URL once secured."""
        return self.proxy.url if self.proxy is not None else self.rpc_url

    @property
    def tls_ca(self) -> Path | None:
        """The CA that verifies :attr:`public_rpc_url` (None while not secured)."""
        return self._ca.cert_path if self.proxy is not None and self._ca is not None else None

    def secure(self, ca: DevCA, token_file: Path) -> AnvilNode:
        """Put an authenticating TLS proxy in front of the node (see ``evm_proxy``): a server
        certificate for 127.0.0.1 from ``ca``, and the tokens in ``token_file`` (0600)."""
        issued = ca.issue(f"evm-node-{self.name}", hosts=("127.0.0.1", "localhost"), server=True)
        self._ca = ca
        self.proxy = EvmRpcProxy(
            name=self.name,
            upstream=self.rpc_url,
            cert=issued.cert,
            key=issued.key,
            token_file=token_file,
            log_dir=self.workdir,
        ).start()
        return self

    def start(self) -> AnvilNode:
        """Start anvil and wait for its RPC; returns self."""
        argv = [
            str(anvil_binary()),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--accounts", "0",
            "--order", "fifo",
        ]  # fmt: skip
        if self.block_time > 0:  # otherwise anvil mines one block per transaction
            argv += ["--block-time", _fmt_block_time(self.block_time)]
        argv += list(self.extra_args)
        self.process = ManagedProcess(
            name=f"anvil-{self.name}", argv=argv, log_path=self.workdir / f"anvil-{self.name}.log"
        ).start()
        self.process.wait_port(self.port)
        return self

    def stop(self) -> None:
        """Stop the proxy (if any) and the ledger process."""
        if self.proxy is not None:
            self.proxy.stop()
        if self.process is not None:
            self.process.stop()

    def rpc(self, method: str, params: list[Any]) -> Any:
        """A raw JSON-RPC call (test and setup use)."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        req = urllib.request.Request(  # noqa: S310 - a loopback http URL this class built
            self.rpc_url, body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback URL we built
            reply = json.loads(resp.read())
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def fund(self, address: str, wei: int = 10**21) -> None:
        """Give ``address`` a balance (anvil_setBalance)."""
        self.rpc("anvil_setBalance", [address, hex(wei)])


def _fmt_block_time(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)

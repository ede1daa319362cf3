"""A CometBFT chain running the KSTB application, as local processes (ADR 0018).

:class:`CometChain` starts one validator (``cometbft node``) and its ABCI application
(``python -m kstb_cometbft``) under a work directory, with a genesis that initialises the
bridge endpoint (ledger name, committee, network word, governance: the issuer organisation
``IssuerOrg`` with one admin key) and pins the application's code fingerprint.
:class:`CometBridgeLedger` is its :class:`~bridge.devnet.ledger.DevLedger` handle.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bridge.devnet.anvil import DevAccount, write_key_file
from bridge.devnet.ledger import Fault
from bridge.devnet.processes import REPO_ROOT, ManagedProcess, free_port, wait_until
from bridge.devnet.starters import StartContext
from bridge.domain.committee import Committee
from bridge.domain.flow import FlowLimit
from bridge.domain.signer import LocalKeySigner
from bridge.ledgers.cometbft.envelope import account_id

COMETBFT_VERSION = "1.0.1"
ISSUER_ORG = "IssuerOrg"
APP_NAME = "kstb"


def cometbft_binary() -> Path | None:
    """The pinned binary built by ``deploy/cometbft/build.sh``, or None when absent."""
    path = REPO_ROOT / ".cache" / "cometbft" / COMETBFT_VERSION / "bin" / "cometbft"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _set(text: str, section: str | None, key: str, value: str) -> str:
    """Set ``key = value`` in ``section`` of a CometBFT config.toml (first match)."""
    start = 0
    if section is not None:
        m = re.search(rf"^\[{re.escape(section)}\]\s*$", text, re.MULTILINE)
        if m is None:
            raise ValueError(f"config.toml has no [{section}]")
        start = m.end()
    pattern = re.compile(rf"^{re.escape(key)} = .*$", re.MULTILINE)
    m = pattern.search(text, start)
    if m is None:
        raise ValueError(f"config.toml has no {key} in [{section}]")
    return text[: m.start()] + f"{key} = {value}" + text[m.end() :]


def app_env() -> dict[str, str]:
    """PYTHONPATH for the application: the repository, the chaincode package (the endpoint
    protocol and vendored core) and the application package."""
    paths = [REPO_ROOT, REPO_ROOT / "contracts" / "fabric", REPO_ROOT / "contracts" / "cometbft"]
    return {"PYTHONPATH": os.pathsep.join(str(p) for p in paths)}


def app_fingerprint() -> str:
    """The code fingerprint of this checkout's application (what the genesis pins)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from kstb_cometbft.fingerprint import code_fingerprint; print(code_fingerprint())",
        ],
        env={**os.environ, **app_env()},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@dataclass
class Validator:
    """One validator: its CometBFT home, ports and processes (node and application)."""

    index: int
    home: Path
    rpc_port: int = 0
    abci_port: int = 0
    p2p_port: int = 0
    node: ManagedProcess | None = None
    app: ManagedProcess | None = None

    @property
    def rpc_url(self) -> str:
        """This validator's JSON-RPC over http on loopback."""
        return f"http://127.0.0.1:{self.rpc_port}"


@dataclass
class CometChain:
    """``validators`` validators, each with its own application; ``rpc_url`` is the first
    validator's JSON-RPC (``rpc_urls`` every validator's)."""

    name: str
    workdir: Path
    committee: Committee
    network_word: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    admin: DevAccount = field(default_factory=DevAccount.generate)
    chain_id: str = ""
    block_time: float = 0.3
    validators: int = 1
    vals: list[Validator] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.chain_id = self.chain_id or f"{self.name}-1"
        if not self.vals:
            base = self.workdir / "cometbft"
            self.vals = [
                Validator(i, base / (self.name if i == 0 else f"{self.name}-v{i}"))
                for i in range(self.validators)
            ]

    @property
    def home(self) -> Path:
        """The first validator's home."""
        return self.vals[0].home

    @property
    def node(self) -> ManagedProcess | None:
        """The first validator's node process."""
        return self.vals[0].node

    @property
    def app(self) -> ManagedProcess | None:
        """The first validator's application process."""
        return self.vals[0].app

    @property
    def rpc_url(self) -> str:
        """The first validator's JSON-RPC over http on loopback."""
        return self.vals[0].rpc_url

    @property
    def rpc_urls(self) -> list[str]:
        """Every validator's JSON-RPC."""
        return [v.rpc_url for v in self.vals]

    def _genesis_state(self, ledger_name: str) -> dict[str, Any]:
        committee = {
            "epoch": self.committee.epoch,
            "threshold": self.committee.threshold,
            "members": ["0x" + m.hex() for m in self.committee.members],
        }
        governance = {"issuer": ISSUER_ORG, "admin_orgs": [ISSUER_ORG], "quorum": 1}
        admin = account_id(LocalKeySigner(self.admin.private_key).address)
        return {
            "fingerprint": app_fingerprint(),
            "accounts": {admin: {"org": ISSUER_ORG, "roles": ["admin"]}},
            "init": {
                "ledger_name": ledger_name,
                "app_name": APP_NAME,
                "committee": json.dumps(committee, sort_keys=True, separators=(",", ":")),
                "network": "0x" + self.network_word.hex(),
                "governance": json.dumps(governance, sort_keys=True, separators=(",", ":")),
            },
        }

    def _init(self, binary: Path) -> None:
        """``cometbft init`` every validator; one genesis listing them all."""
        genesis: dict[str, Any] = {}
        validators = []
        for v in self.vals:
            subprocess.run(
                [str(binary), "init", "--home", str(v.home)], check=True, capture_output=True
            )
            own = json.loads((v.home / "config" / "genesis.json").read_text())
            validators += own["validators"]
            genesis = genesis or own
        genesis["chain_id"] = self.chain_id
        genesis["validators"] = validators
        genesis["app_state"] = self._genesis_state(self.name)
        genesis["consensus_params"]["version"]["app"] = "1"
        for v in self.vals:
            (v.home / "config" / "genesis.json").write_text(json.dumps(genesis, indent=2))

    def _configure(self, binary: Path, v: Validator) -> None:
        peers = []
        for other in self.vals:
            if other is not v:
                node_id = subprocess.run(
                    [str(binary), "show-node-id", "--home", str(other.home)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                peers.append(f"{node_id}@127.0.0.1:{other.p2p_port}")
        cfg_path = v.home / "config" / "config.toml"
        cfg = cfg_path.read_text()
        cfg = _set(cfg, None, "proxy_app", f'"127.0.0.1:{v.abci_port}"')
        cfg = _set(cfg, None, "abci", '"grpc"')
        cfg = _set(cfg, None, "moniker", f'"{self.name}-v{v.index}"')
        cfg = _set(cfg, None, "log_level", '"error"')
        cfg = _set(cfg, "rpc", "laddr", f'"tcp://127.0.0.1:{v.rpc_port}"')
        cfg = _set(cfg, "p2p", "laddr", f'"tcp://127.0.0.1:{v.p2p_port}"')
        cfg = _set(cfg, "p2p", "persistent_peers", f'"{",".join(peers)}"')
        cfg = _set(cfg, "p2p", "addr_book_strict", "false")
        cfg = _set(cfg, "p2p", "allow_duplicate_ip", "true")
        cfg = _set(cfg, "consensus", "timeout_commit", f'"{int(self.block_time * 1000)}ms"')
        cfg = _set(cfg, "consensus", "create_empty_blocks_interval", '"1s"')
        cfg = _set(cfg, "consensus", "create_empty_blocks", "false")
        cfg = _set(cfg, "tx_index", "indexer", '"kv"')
        cfg_path.write_text(cfg)

    def start(self) -> CometChain:
        """Initialise (first time) and start every application and node; return once the
        chain has committed a block (on every validator)."""
        binary = cometbft_binary()
        if binary is None:
            raise RuntimeError("cometbft is not built: run deploy/cometbft/build.sh")
        for v in self.vals:
            v.rpc_port = v.rpc_port or free_port()
            v.abci_port = v.abci_port or free_port()
            v.p2p_port = v.p2p_port or free_port()
        if not (self.home / "config" / "genesis.json").exists():
            self._init(binary)
        logs = self.workdir / "logs"
        for v in self.vals:
            self._configure(binary, v)
            label = self.name if v.index == 0 else f"{self.name}-v{v.index}"
            v.app = ManagedProcess(
                f"{label}-app",
                [
                    sys.executable,
                    "-m",
                    "kstb_cometbft",
                    "--state",
                    str(v.home / "app"),
                    "--listen",
                    f"127.0.0.1:{v.abci_port}",
                ],
                logs / f"{label}-app.log",
                env=app_env(),
            ).start()
            v.app.wait_port(v.abci_port)
            v.node = ManagedProcess(
                f"{label}-cometbft",
                [str(binary), "node", "--home", str(v.home)],
                logs / f"{label}-cometbft.log",
            ).start()
        for v in self.vals:
            assert v.node is not None
            v.node.wait_port(v.rpc_port)
        for url in self.rpc_urls:
            wait_until(partial(_reached, url, 1), 60, f"{self.name}: first block at {url}")
        return self

    def height(self) -> int:
        """The last block the first validator's application committed (0 before)."""
        return _height(self.rpc_url)

    def stop(self) -> None:
        """Stop every node, then every application."""
        for p in [v.node for v in self.vals] + [v.app for v in self.vals]:
            if p is not None:
                p.stop()


def _reached(rpc_url: str, height: int) -> bool:
    return _height(rpc_url) >= height


def _height(rpc_url: str) -> int:
    """The last block the application behind ``rpc_url`` committed (0 before the first)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{rpc_url}/abci_info", timeout=2) as r:  # noqa: S310
            return int(json.load(r)["result"]["response"].get("last_block_height", 0))
    except (OSError, ValueError, KeyError):
        return 0


def admin_adapter_call(chain: CometChain, function: str, *args: str) -> str:
    """Run ``function(args)`` as the issuer's admin and wait until it is committed; its JSON
    result (LedgerRejected when the endpoint refuses)."""
    import asyncio

    from bridge.ledgers.cometbft.rpc import CometClient

    async def run() -> str:
        client = CometClient(chain.rpc_url, chain.chain_id, LocalKeySigner(chain.admin.private_key))
        try:
            return await client.call(function, list(args))
        finally:
            await client.close()

    return asyncio.run(run())


def query(chain: CometChain, function: str, *args: str) -> Any:
    """An endpoint view at the latest committed block, as JSON."""
    import asyncio

    from bridge.ledgers.cometbft.rpc import CometClient

    async def run() -> Any:
        client = CometClient(chain.rpc_url, chain.chain_id)
        try:
            value, _ = await client.query(function, list(args))
            return json.loads(value)
        finally:
            await client.close()

    return asyncio.run(run())


@dataclass
class CometBridgeLedger:
    """The devnet handle (:class:`~bridge.devnet.ledger.DevLedger`) of a CometBFT chain."""

    name: str
    chain: CometChain
    relayer: DevAccount
    relayer_key: dict[str, Any]
    before_issue: Callable[[str, int], None] | None = None

    @classmethod
    def start_new(
        cls,
        name: str,
        workdir: Path,
        committee: Committee,
        isins: Sequence[str],
        instructors: Sequence[str],
        validators: int = 2,
    ) -> CometBridgeLedger:
        """A fresh chain of ``validators`` validators with the relayer registered, ``isins``
        registered and ``instructors`` (0x addresses) allowed to instruct locks."""
        chain = CometChain(name, workdir, committee, validators=validators).start()
        relayer = DevAccount.generate()
        key_file = f"keys/relayer-{name}.key"
        write_key_file(workdir / key_file, relayer)
        identity = f"key:{account_id(LocalKeySigner(relayer.private_key).address)}"
        admin_adapter_call(chain, "SetRelayer", identity, "true")
        for isin in isins:
            admin_adapter_call(chain, "RegisterSecurity", isin)
        for key in instructors:
            admin_adapter_call(chain, "SetInstructor", key.lower(), "true")
        return cls(name, chain, relayer, {"key_file": key_file})

    @property
    def kind(self) -> str:
        """``cometbft``."""
        return "cometbft"

    def describe(self) -> list[str]:
        """Chain id and RPC."""
        n = len(self.chain.vals)
        return [
            f"cometbft chain {self.chain.chain_id} ({n} validators), KSTB ABCI app on each",
            *(f"validator {v.index}: rpc {v.rpc_url}" for v in self.chain.vals),
        ]

    def ledger_entry(self) -> dict[str, Any]:
        """The ``[[ledgers]]`` entry."""
        return {
            "id": self.name,
            "kind": "cometbft",
            "rpc_url": self.chain.rpc_url,
            "bridge": APP_NAME,
            "chain": self.chain.chain_id,
            "network_word": "0x" + self.chain.network_word.hex(),
            "block_interval": self.chain.block_time,
        }

    def relayer_entry(self) -> dict[str, Any]:
        """The relayer's key file and poll interval."""
        return {**self.relayer_key, "poll_interval": 0.3}

    def read_identity(self) -> dict[str, Any] | None:
        """Reads need no identity."""
        return None

    def node_auth(self, role: str) -> dict[str, str]:
        """No node authentication on the loopback devnet node."""
        return {}

    def reader_override(self) -> dict[str, Any] | None:
        """The second validator's RPC (every other member reads through it), if any."""
        if len(self.chain.vals) < 2:
            return None
        return {"url": self.chain.vals[1].rpc_url}

    def faults(self) -> Mapping[str, Fault]:
        """``node``: the validator hangs (SIGSTOP) until resumed: no block is committed and
        its RPC answers nothing (every reader and the relayer see an outage)."""
        node = self.chain.node
        assert node is not None
        return {"node": (node.pause, node.resume)}

    def _admin(self, function: str, *args: str) -> str:
        return admin_adapter_call(self.chain, function, *args)

    def set_instructor(self, key: str, enabled: bool = True) -> None:
        """``SetInstructor`` as the admin."""
        self._admin("SetInstructor", key.lower(), "true" if enabled else "false")

    def set_depository(self, key: str) -> None:
        """``SetDepository`` as the admin."""
        self._admin("SetDepository", key.lower())

    def set_flow_limit(self, isin: str, counterpart: str, limit: FlowLimit) -> None:
        """``SetFlowLimit`` as the admin."""
        values = (
            limit.outbound_capacity,
            limit.inbound_capacity,
            limit.window,
            limit.share_bps,
            limit.large_threshold,
            limit.large_delay,
        )
        self._admin("SetFlowLimit", isin, counterpart, *(str(v) for v in values))

    def make_holder(self, isin: str, units: int = 0) -> DevAccount:
        """A new eligible holder, optionally issued ``units``."""
        acct = DevAccount.generate()
        self.set_eligible(isin, acct.address)
        if units:
            self.issue(isin, acct.address, units)
        return acct

    def set_eligible(self, isin: str, holder: str, eligible: bool = True) -> None:
        """``SetEligible`` as the admin."""
        self._admin("SetEligible", isin, holder.lower(), "true" if eligible else "false")

    def issue(self, isin: str, holder: str, units: int, register: bool = True) -> None:
        """``Issue`` as the admin (registered with the depository first when asked)."""
        if register and self.before_issue is not None:
            self.before_issue(isin, units)
        self._admin("Issue", isin, holder.lower(), str(units))

    def balance(self, isin: str, holder: str) -> int:
        """``HolderStatus.balance``."""
        return int(query(self.chain, "HolderStatus", isin, holder.lower())["balance"])

    def total_supply(self, isin: str) -> int:
        """``Supply.total_supply``."""
        return int(query(self.chain, "Supply", isin)["total_supply"])

    def escrowed(self, isin: str) -> int:
        """``Supply.escrowed``."""
        return int(query(self.chain, "Supply", isin)["escrowed"])

    # ---- exact reads (ADR 0024)
    def count_supply(self, isin: str, page: int = 1000) -> int:
        """``CountSupply`` as the issuer's admin until the supply counters are complete;
        returns the number of steps (1 when already complete)."""
        steps = 0
        while True:
            steps += 1
            self._admin("CountSupply", isin, str(page))
            if query(self.chain, "SupplyCounting", isin)["done"]:
                return steps

    def parked(self, transfer_id: bytes) -> int:
        """``Parked.amount``."""
        return int(query(self.chain, "Parked", "0x" + transfer_id.hex())["amount"])

    def release_parked(self, transfer_id: bytes, to: str) -> None:
        """``ReleaseParked`` as the issuer's admin."""
        self._admin("ReleaseParked", "0x" + transfer_id.hex(), to.lower())

    def stop(self) -> None:
        """Stop the chain."""
        self.chain.stop()


def start(ctx: StartContext, name: str) -> CometBridgeLedger:
    """The devnet starter of this kind (:func:`bridge.devnet.starters.get_starter` finds it
    by convention): a fresh two-validator chain with ``ctx``'s committee and securities."""
    if ctx.committee is None:
        raise RuntimeError("the devnet's committee must be chosen before ledgers start")
    return CometBridgeLedger.start_new(
        name, ctx.workdir, ctx.committee, ctx.isins, [ctx.instruction_key(name).address]
    )

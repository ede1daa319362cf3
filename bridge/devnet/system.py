"""A whole local bridge network as real processes: anvil ledgers with deployed contracts,
a t-of-n verifier committee, one relayer per ledger and the coordinator.

Every key is generated at run time and written 0600 under the work directory; with
``key_custody="pkcs11"`` the committee members' keys and the EVM relayer accounts are instead
generated inside a SoftHSM2 token under the work directory and never leave it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from web3 import Web3

from bridge.config import NetworkConfig, TlsConfig, dump_toml, load_network
from bridge.devnet.anvil import AnvilNode, DevAccount, write_key_file, write_token_file
from bridge.devnet.client import Brokerage, instructed, submit_retrying
from bridge.devnet.custody import DevToken, create_dev_token
from bridge.devnet.evm_endpoint import EvmEndpointLedger, fund_and_deploy, pushed_heads
from bridge.devnet.fabric_bridge import FabricBridgeLedger
from bridge.devnet.ledger import DevLedger, Fault
from bridge.devnet.ledger_tls import DevCA
from bridge.devnet.pki import DevPki, IssuedCertificate
from bridge.devnet.processes import ManagedProcess, free_port, wait_until
from bridge.devnet.starters import get_starter
from bridge.devnet.tcp_proxy import TcpProxy
from bridge.domain.committee import Committee
from bridge.domain.flow import FlowLimit
from bridge.domain.ids import parse_evm_address
from bridge.domain.signer import LocalKeySigner
from bridge.keys.loader import PLAINTEXT_KEYS_ENV
from bridge.keys.reference import key_ref_to_toml
from bridge.rpc.channels import internal_channel, sync_channel
from bridge.rpc.roles import COORDINATOR, MEMBER, RELAYER, parse_role
from bridge.rpc.tls import INSECURE_ENV, ClientIdentity
from bridge.supply_client import SupplyOperator
from bridge.v1 import transfer_pb2, transfer_pb2_grpc

DEMO_ISIN = "KR5701ES0016"  # fictional real-estate trust certificate; valid ISO 6166 check digit


@dataclass(kw_only=True)
class LedgerHandle(EvmEndpointLedger):
    """One running anvil ledger with its bridge endpoint and security tokens (the EVM
    :class:`~bridge.devnet.ledger.DevLedger`)."""

    node: AnvilNode
    rpc_token_file: Path | None = None
    """The bearer token the node's TLS proxy wants (None: plain anvil http)."""

    # ---- DevLedger: configuration
    def describe(self) -> list[str]:
        """Chain id, RPC URL and endpoint address."""
        return [
            f"EVM chain id {self.node.chain_id}, rpc {self.node.rpc_url}",
            f"bridge endpoint {self.endpoint.address}",
        ]

    def ledger_entry(self) -> dict[str, Any]:
        """This ledger's ``[[ledgers]]`` entry for network.toml."""
        entry: dict[str, Any] = {
            "id": self.name,
            "kind": "evm",
            "rpc_url": self.node.public_rpc_url,
            "bridge": self.endpoint.address,
            "chain_id": self.node.chain_id,
            "finality_depth": 0,
            "block_interval": self.block_time,
        }
        entry |= self.lens_entry()
        # Pushed heads (issue 14 item 4): anvil serves WebSocket on its HTTP port; the
        # secured devnet's TLS proxy relays it as wss:// behind the same bearer check.
        if pushed_heads():
            entry["ws_url"] = self.node.public_ws_url
        return entry | ({"tls_ca": str(self.node.tls_ca)} if self.node.tls_ca else {})

    def relayer_entry(self) -> dict[str, Any]:
        """The relayer account's key entry and poll interval."""
        return {"poll_interval": min(0.2, self.block_time / 5), **self.relayer_key}

    def read_identity(self) -> dict[str, Any] | None:
        """EVM reads need no identity."""
        return None

    def node_auth(self, role: str) -> dict[str, str]:
        """The bearer token behind the node's TLS proxy (both roles)."""
        if self.node.proxy is not None and self.rpc_token_file is not None:
            return {"token_file": str(self.rpc_token_file)}
        return {}

    def reader_override(self) -> dict[str, Any] | None:
        """One anvil node: no second view."""
        return None

    def faults(self) -> Mapping[str, Fault]:
        """``ledger``: block production stops (anvil resumes at whole seconds)."""
        rpc = self.node.rpc
        resume = [max(1, round(self.block_time))]
        return {
            "ledger": (
                lambda: rpc("evm_setIntervalMining", [0]),
                lambda: rpc("evm_setIntervalMining", resume),
            )
        }

    def stop(self) -> None:
        """Stop the anvil node (and its proxy)."""
        self.node.stop()

    @property
    def admin_rpc_url(self) -> str:
        """anvil itself (not the proxy)."""
        return self.node.rpc_url

    def pids(self) -> dict[str, int]:
        """anvil's and its proxy's pids (bench CPU sampling)."""
        pids = {}
        if self.node.process is not None:
            pids[f"anvil-{self.name}"] = self.node.process.pid
        proxy = self.node.proxy
        if proxy is not None and proxy.process is not None and proxy.process.alive():
            pids[f"evm-proxy-{self.name}"] = proxy.process.pid
        return pids


def _member_read(ledger: DevLedger, member: int) -> dict[str, Any] | None:
    """Member ``member``'s ``rpc_overrides`` entry for ``ledger``: the ledger's own choice
    (an optional ``member_override(member)``, e.g. geth: never the relayer's node), else
    every other member reads through the second node (Fabric: the second organisation's
    peer), so no single node is every member's view of a ledger."""
    choose = getattr(ledger, "member_override", None)
    if callable(choose):
        chosen: dict[str, Any] | None = choose(member)
        return chosen
    return ledger.reader_override() if member % 2 else None


STORE_ENV = "KSTB_DEVNET_STORE"
"""Environment default for ``LocalSystem.store`` (the e2e suite's PostgreSQL pass)."""
POSTGRES_ENV = "KSTB_DEVNET_POSTGRES"
"""Environment default for ``LocalSystem.postgres_server``."""
BATCHING_ENV = "KSTB_DEVNET_BATCHING"
"""Environment default for ``LocalSystem.batching``: ``1`` turns the coordinator's batched
steps on with the defaults, or a ``max_items`` figure sets that too."""


def _batching_from_env() -> dict[str, Any] | None:
    value = os.environ.get(BATCHING_ENV, "").strip()
    if not value or value == "0":
        return None
    if value.isdigit() and int(value) > 1:
        return {"enabled": True, "max_items": int(value)}
    return {"enabled": True}


@dataclass
class LocalSystem:
    """Ledgers, committee, relayers and coordinator on 127.0.0.1 under ``workdir``."""

    workdir: Path
    ledger_names: Sequence[tuple[str, int]] = (("brokerage-a", 31001), ("brokerage-b", 31002))
    block_time: float = 1.0
    block_gas_limit: int = 0
    """Each anvil ledger's block gas limit (anvil ``--gas-limit``) and a geth network's
    (genesis and ``--miner.gaslimit``); 0: 30,000,000 (anvil's default, and the geth
    network's: its blocks no longer drift towards geth's own 60,000,000). A permissioned
    network sets its own in genesis; benchmarks raise it to find what saturates after the
    ledgers' gas (issue 14)."""
    anvil_states: int = 0
    """States each anvil ledger keeps for reads at past blocks; 0: anvil's default (500 in
    memory, older ones on disk). N: ``--prune-history N``, N in memory and none on disk;
    N must cover how far behind the finalized height a reader may read. It does not bound
    anvil's memory: anvil 1.7.1 keeps about 100 bytes per storage slot per block whatever
    N is (slots written in a burst, then only empty blocks: 8 MB more a block), so a long
    benchmark grows with state x blocks (issue 14, bench/README); long runs use geth
    ledgers (``bridge.devnet.geth``), which keep their history on disk."""
    committee_size: int = 4
    threshold: int = 3
    isins: Sequence[str] = (DEMO_ISIN,)
    transfer_ttl: int = 120
    supply_heartbeat: float = 5.0
    fabric_ledger_names: Sequence[str] = ()
    ledgers: dict[str, LedgerHandle] = field(default_factory=dict)
    fabric: dict[str, FabricBridgeLedger] = field(default_factory=dict)
    extra_ledgers: Sequence[tuple[str, str]] = ()
    """(ledger name, starter) pairs started by the per-kind devnet starters
    (:mod:`bridge.devnet.starters`, e.g. ``("brokerage-g", "geth")``, or any registered
    kind's ``bridge.devnet.<kind>:start``, e.g. ``("issuer-c", "cometbft")``)."""
    others: dict[str, DevLedger] = field(default_factory=dict)
    """The ledgers the starters started, by name."""
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    verifier_keys: list[DevAccount] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    committee: Committee | None = None
    supply_operator: DevAccount = field(default_factory=DevAccount.generate)
    pki: DevPki | None = None
    """Every organisation's CA and every certificate (made by :meth:`write_configs`)."""
    key_custody: str = "file"
    """``file``: 0600 plaintext key files (the devnet default); ``pkcs11``: member keys and EVM
    relayer accounts are generated inside a SoftHSM2 token (``token``) and never leave it."""
    token: DevToken | None = None
    members: list[tuple[str, str]] = field(default_factory=list)
    """(address, token key label or "") per verifier, in committee (address) order."""
    evm_node_auth: bool = True
    """EVM nodes behind the authenticating TLS proxy (``https`` + bearer token), as
    production nodes are; False exposes anvil's plain http port to the components."""
    transport_security: bool = True
    """Mutual TLS (and role authorisation) on every gRPC port and client, as in production.
    False is for measuring its cost only (``bench/security_overhead.py``): no ``[tls]`` tables,
    every process started with the development plaintext flag, and this object's channels
    plaintext (the calling process must set the flag too)."""
    instruction_keys: dict[str, DevAccount] = field(default_factory=dict)
    """Per ledger, the instruction key of the brokerage that manages its accounts."""
    _brokerage: Brokerage | None = None
    depository_key: DevAccount = field(default_factory=DevAccount.generate)
    """The depository's secp256k1 order key (``install_depository``; ``keys/depository.key``)."""

    spare_members: int = 0
    """Committee rotation (ADR 0009): members of a later epoch, each with its own running
    verifier (``spare-<j>``), listed in the network file's ``[[committee.later]]`` (file
    custody only)."""
    spare_keys: list[DevAccount] = field(default_factory=list)

    # ---- observability (ADR 0016)
    metrics: bool = False
    """Serve ``/metrics`` from every bridge process (ports in ``metrics_ports``)."""
    metrics_ports: dict[str, int] = field(default_factory=dict)
    tracing_endpoint: str = ""
    """An OTLP/HTTP traces URL: every bridge process exports its spans there."""
    probe_interval: float = 0.5

    # ---- coordinator database (ADR 0013)
    store: str = field(default_factory=lambda: os.environ.get(STORE_ENV, "sqlite"))
    """The coordinator's engine: ``sqlite`` (the default, ``state/coordinator.sqlite``) or
    ``postgres`` (a fresh database created on the server named by ``postgres_server``)."""
    postgres_server: str = field(default_factory=lambda: os.environ.get(POSTGRES_ENV, ""))
    """A ``postgresql://user@host:port/maintenance-db`` URL (trust or env password) on
    which ``store="postgres"`` creates this system's own database."""

    coordinator_database: str = ""
    """The coordinator's ``database`` setting as written (path relative to ``workdir``, or URL)."""

    # ---- active/passive coordinators (ADR 0017)
    coordinators: int = 1
    """How many coordinators: more than one needs ``store="postgres"``; they share the
    database under a lease (``coordinator``, ``coordinator-1``, ``coordinator-2`` ...)."""
    lease_ttl: float = 3.0
    renew_interval: float = 0.5
    database_proxies: bool = False
    """Each coordinator reaches PostgreSQL through its own :class:`TcpProxy` (``db_proxies``),
    so a test can cut one coordinator from the database."""
    db_proxies: dict[str, TcpProxy] = field(default_factory=dict)

    # ---- batched steps (issue 14)
    batching: dict[str, Any] | None = field(default_factory=_batching_from_env)
    """The coordinator's ``[batching]`` table (e.g. ``{"enabled": True}``); None: off
    (default from env ``KSTB_DEVNET_BATCHING``)."""

    @property
    def coordinator_names(self) -> list[str]:
        """Every coordinator's process name (``coordinator`` first)."""
        return ["coordinator"] + [f"coordinator-{i}" for i in range(1, self.coordinators)]

    @property
    def coordinator_targets(self) -> list[str]:
        """host:port of every coordinator, ``coordinator`` first."""
        return [f"127.0.0.1:{self.ports[n]}" for n in self.coordinator_names]

    def leader(self, timeout: float = 30.0) -> str:
        """The process name of the coordinator whose health is SERVING (the leader),
        waiting up to ``timeout`` seconds for one."""
        if self.coordinators == 1:
            return "coordinator"
        identity = self._client_identity("bridge-operator", "coordinator", None)
        found: list[str] = []

        def serving() -> bool:
            for name, target in zip(self.coordinator_names, self.coordinator_targets, strict=True):
                proc = self.processes.get(name)
                if proc is not None and proc.alive() and health_serving(target, identity):
                    found.append(name)
                    return True
            return False

        wait_until(serving, timeout, "a leading coordinator")
        return found[-1]

    def _coordinator_file(self, name: str, relayers: dict[str, str], verifiers: list[Any]) -> None:
        """Write ``<name>.toml`` (``coordinator.toml`` for the first)."""
        database = self.coordinator_database
        if self.database_proxies and database.startswith("postgresql://"):
            from urllib.parse import urlsplit, urlunsplit

            parts = urlsplit(database)
            proxy = self.db_proxies.get(name)
            if proxy is None:
                proxy = self.db_proxies[name] = TcpProxy(
                    parts.hostname or "127.0.0.1", parts.port or 5432
                )
            netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
            database = urlunsplit(parts._replace(netloc=netloc))
        table: dict[str, Any] = {
            "network": "network.toml",
            "listen": f"127.0.0.1:{self.ports[name]}",
            "database": database,
            "transfer_ttl": self.transfer_ttl,
            "supply_heartbeat": self.supply_heartbeat,
            "verifiers": verifiers,
            "relayers": relayers,
            "audit_log": f"audit/{name}.jsonl",
            **self._tls_entry("coordinator"),
        }
        if self.batching is not None:
            table["batching"] = dict(self.batching)
        if self.coordinators > 1:
            table["ha"] = {
                "name": name,
                "advertise": f"127.0.0.1:{self.ports[name]}",
                "lease_ttl": self.lease_ttl,
                "renew_interval": self.renew_interval,
            }
        (self.workdir / f"{name}.toml").write_text(dump_toml(table | self._obs_tables(name)))

    def query_coordinator(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Read-only rows from the coordinator's database (either engine; ``?`` placeholders):
        the devnet's own inspection, not a component's."""
        if self.coordinator_database.startswith("postgresql://"):
            import psycopg

            with psycopg.connect(self.coordinator_database, autocommit=True) as conn:
                conn.execute("SET default_transaction_read_only = on")
                cur = conn.execute(sql.replace("?", "%s"), tuple(args))
                return [tuple(r) for r in cur.fetchall()]
        import sqlite3

        path = self.workdir / (self.coordinator_database or "state/coordinator.sqlite")
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return [tuple(r) for r in db.execute(sql, tuple(args)).fetchall()]
        finally:
            db.close()

    def _coordinator_database(self) -> str:
        """The coordinator's ``database`` setting (creating the PostgreSQL database)."""
        self.coordinator_database = self._new_coordinator_database()
        return self.coordinator_database

    def _new_coordinator_database(self) -> str:
        if self.store == "sqlite":
            return "state/coordinator.sqlite"
        if self.store != "postgres" or not self.postgres_server:
            raise ValueError(f"store={self.store!r} needs postgres_server (or {POSTGRES_ENV})")
        import secrets
        from urllib.parse import urlsplit, urlunsplit

        import psycopg

        name = "kstb_" + secrets.token_hex(6)
        with psycopg.connect(self.postgres_server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return urlunsplit(urlsplit(self.postgres_server)._replace(path="/" + name, query=""))

    # -- ledgers ---------------------------------------------------------------------------
    def start_ledgers(self) -> None:
        """Start anvil per ledger, deploy the bridge and tokens, grant the relayer role."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        committee = self.committee = self._start_custody()
        for name, chain_id in self.ledger_names:
            gas = ("--gas-limit", str(self.block_gas_limit)) if self.block_gas_limit else ()
            states = ("--prune-history", str(self.anvil_states)) if self.anvil_states else ()
            node = AnvilNode(name, chain_id, self.block_time, self.workdir, extra_args=gas + states)
            node.start()
            if self.evm_node_auth:
                node.secure(self._evm_node_ca(), write_token_file(self._rpc_token_file(name)))
            d = fund_and_deploy(self, name, committee, node.rpc_url, node.fund)
            admin, relayer, endpoint, tokens = d.admin, d.relayer, d.endpoint, d.tokens
            self.ledgers[name] = LedgerHandle(
                name=name,
                node=node,
                admin=admin,
                relayer=relayer,
                endpoint=endpoint,
                tokens=tokens,
                block_time=self.block_time,
                rpc_token_file=self._rpc_token_file(name) if self.evm_node_auth else None,
                relayer_key=self._key_entry(f"keys/relayer-{name}.key", f"relayer-{name}", relayer),
                lens=d.lens,
            )
        for name in self.fabric_ledger_names:
            self.fabric[name] = FabricBridgeLedger(name, self.workdir).start(
                committee, self.isins, instructors=[self.instruction_key(name).address]
            )
        for name, starter in self.extra_ledgers:
            self.others[name] = get_starter(starter)(self, name)
        self.install_depository()

    # ---- depository halt
    def install_depository(self) -> None:
        """Give every endpoint the depository's order key (``setDepository``/``SetDepository``,
        admin, once) and write it 0600 to ``keys/depository.key`` for the CLI."""
        write_key_file(self.workdir / "keys" / "depository.key", self.depository_key)
        for ledger in self.dev_ledgers.values():
            ledger.set_depository(self.depository_key.address)

    def _start_custody(self) -> Committee:
        """The committee's keys: 0600 files, or keys generated inside a SoftHSM2 token."""
        if self.key_custody not in ("file", "pkcs11"):
            raise ValueError(f"key_custody must be 'file' or 'pkcs11', not {self.key_custody!r}")
        if self.key_custody == "pkcs11":
            self.token = create_dev_token(self.workdir / "hsm")
            labels = [f"verifier-{i}" for i in range(self.committee_size)]
            made = [(to_checksum(self.token.generate(label)), label) for label in labels]
            self.members = sorted(made, key=lambda m: parse_evm_address(m[0]))
        else:
            self.verifier_keys = sorted(
                (DevAccount.generate() for _ in range(self.committee_size)),
                key=lambda a: parse_evm_address(a.address),
            )
            self.members = [(k.address, "") for k in self.verifier_keys]
            self._make_spares()
        return Committee(
            epoch=1,
            threshold=self.threshold,
            members=tuple(parse_evm_address(a) for a, _ in self.members),
        )

    def _relayer_address(self, ledger: str, account: DevAccount) -> str:
        """The relayer account of ``ledger``: ``account``, or a token key (pkcs11 custody)."""
        if self.token is None:
            return account.address
        return to_checksum(self.token.generate(f"relayer-{ledger}"))

    def _key_entry(self, key_file: str, label: str, account: DevAccount | None) -> dict[str, Any]:
        """A daemon file's key entry: ``key_file`` (written 0600) or the token key ``label``."""
        if self.token is not None:
            return key_ref_to_toml(self.token.ref(label))
        assert account is not None
        write_key_file(self.workdir / key_file, account)
        return {"key_file": key_file}

    def _evm_node_ca(self) -> DevCA:
        return DevCA(self.workdir / "ledger-tls" / "evm", "kstb devnet EVM node CA").ensure()

    def _rpc_token_file(self, ledger: str) -> Path:
        return self.workdir / "keys" / f"rpc-token-{ledger}"

    def _ledger_auth(self, ledger: str, role: str) -> dict[str, str]:
        """The ``[ledger_auth]`` table of a ``role`` (relayer/verifier) for ``ledger``."""
        return self.handle(ledger).node_auth(role)

    @property
    def dev_ledgers(self) -> dict[str, DevLedger]:
        """Every running ledger by name, whatever its kind (EVM first)."""
        return {**self.ledgers, **self.fabric, **self.others}

    def handle(self, name: str) -> DevLedger:
        """The named ledger, whatever its kind."""
        return self.dev_ledgers[name]

    @property
    def all_ledgers(self) -> list[str]:
        """Every ledger name, EVM first."""
        return list(self.dev_ledgers)

    # -- brokerages (protocol v2 instructions) -----------------------------------------------
    def instruction_key(self, ledger: str) -> DevAccount:
        """The devnet brokerage's instruction key for ``ledger`` (generated once, written 0600)."""
        key = self.instruction_keys.get(ledger)
        if key is None:
            key = self.instruction_keys[ledger] = DevAccount.generate()
            write_key_file(self.workdir / "keys" / f"instruction-{ledger}.key", key)
        return key

    def set_instructor(self, ledger: str, key: str, enabled: bool = True) -> None:
        """Register (or remove) ``key`` as an instruction key on ``ledger``'s endpoint, as
        its admin (only the chain: the network file's ``[instruction_keys]`` is unchanged)."""
        self.handle(ledger).set_instructor(key, enabled)

    # ---- flow limits (ADR 0010)
    def set_flow_limit(self, ledger: str, isin: str, counterpart: str, limit: FlowLimit) -> None:
        """Set the flow limit of the lane (``isin``, ``counterpart``) on ``ledger``'s endpoint,
        as its admin (``FlowLimit()`` removes it); the devnet's deploy step for limits."""
        self.handle(ledger).set_flow_limit(isin, counterpart, limit)

    @property
    def network(self) -> NetworkConfig:
        """The network file as the daemons read it (after :meth:`write_configs`)."""
        return load_network(self.workdir / "network.toml")

    @property
    def brokerage(self) -> Brokerage:
        """Signs instructions with each source ledger's instruction key."""
        if self._brokerage is None:
            keys = {
                name: LocalKeySigner(self.instruction_key(name).private_key)
                for name in self.all_ledgers
            }
            self._brokerage = Brokerage(self.network, keys, ttl=self.transfer_ttl)
        return self._brokerage

    def submit(self, request: transfer_pb2.SubmitTransferRequest, limit_s: float = 60.0) -> str:
        """Instruct ``request`` as its source ledger's brokerage and submit it (retrying
        transient faults with the same instruction); returns the transfer id. A request the
        brokerage will not sign (malformed) is sent as is, for the coordinator to refuse."""
        return submit_retrying(self, instructed(self.brokerage.instruct, request), limit_s)

    # -- configuration ---------------------------------------------------------------------
    def _network_file(self) -> Path:
        assert self.committee is not None
        path = self.workdir / "network.toml"
        path.write_text(
            dump_toml(
                {
                    "committee": {
                        "epoch": self.committee.epoch,
                        "threshold": self.committee.threshold,
                        "members": [address for address, _ in self.members],
                    }
                    | self._later_entry(),
                    "securities": {"isins": list(self.isins)},
                    "supply": {"operators": [self.supply_operator.address]},
                    "instruction_keys": {
                        name: [self.instruction_key(name).address] for name in self.all_ledgers
                    },
                    "ledgers": [h.ledger_entry() for h in self.dev_ledgers.values()],
                    "organisations": self._pki().network_entries(self.workdir),
                }
            )
        )
        return path

    # -- mutual TLS --------------------------------------------------------------------------
    def member_role(self, i: int) -> str:
        """The role string of committee member ``i`` (``member:0x...``)."""
        return f"member:{self.members[i][0].lower()}"

    def _pki(self) -> DevPki:
        """One CA per organisation and every certificate (made once per system)."""
        if self.pki is not None:
            return self.pki
        pki = DevPki(self.workdir / "pki")
        pki.organisation("bridge-operator", ["coordinator", "bridge-operator"])
        pki.issue("bridge-operator", "coordinator", "coordinator")
        pki.issue("bridge-operator", "bridge-operator", "bridge-operator")
        pki.organisation("depository", ["depository", "supply-operator"])
        pki.issue("depository", "depository", "depository")
        pki.issue("depository", "supply-operator", "supply-operator")
        for name in self.all_ledgers:
            pki.organisation(name, [f"brokerage:{name}", f"relayer:{name}"])
            pki.issue(name, f"brokerage:{name}", f"brokerage-{name}")
            pki.issue(name, f"relayer:{name}", f"relayer-{name}")
        for i in range(len(self.members)):
            pki.organisation(f"member-{i}", [self.member_role(i)])
            pki.issue(f"member-{i}", self.member_role(i), f"verifier-{i}")
        self._spare_pki(pki)
        self.pki = pki
        return pki

    def tls_table(self, principal: str) -> dict[str, str]:
        """The ``[tls]`` table of the component or client holding role ``principal``."""
        cert = self._pki().cert_for(principal)
        return {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)}

    def certificate(self, principal: str) -> IssuedCertificate:
        """The certificate of the holder of role ``principal`` (e.g. ``"depository"``)."""
        return self._pki().cert_for(principal)

    def target_of(self, peer: str) -> str:
        """host:port of the server holding role ``peer``."""
        role = parse_role(peer)
        if role.kind == COORDINATOR:
            return self.coordinator_target
        if role.kind == RELAYER:
            return f"127.0.0.1:{self.ports[f'relayer-{role.scope}']}"
        if role.kind == MEMBER:
            for i in range(len(self.members)):
                if self.member_role(i) == str(role):
                    return f"127.0.0.1:{self.ports[f'verifier-{i}']}"
            for j in range(len(self.spare_keys)):
                if self.spare_role(j) == str(role):
                    return f"127.0.0.1:{self.ports[f'spare-{j}']}"
        raise KeyError(peer)

    def identity(
        self, principal: str, peer: str = "coordinator", cert: IssuedCertificate | None = None
    ) -> ClientIdentity:
        """An mTLS client identity: ``principal``'s certificate (or ``cert``), checking that
        the server holds role ``peer``."""
        cert = cert or self.certificate(principal)
        network = load_network(self.workdir / "network.toml")
        return ClientIdentity.to(
            network, TlsConfig(cert.cert_file, cert.key_file), parse_role(peer)
        )

    def channel(
        self, principal: str, peer: str = "coordinator", cert: IssuedCertificate | None = None
    ) -> grpc.Channel:
        """A synchronous mTLS channel to the server holding ``peer``, as ``principal``,
        e.g. ``system.channel("brokerage:brokerage-a")``, ``system.channel("depository")``."""
        return sync_channel(self.target_of(peer), self._client_identity(principal, peer, cert))

    def list_transfers(
        self, principal: str = "depository", timeout: float = 30.0
    ) -> list[transfer_pb2.Transfer]:
        """Every transfer ``principal`` may see, read with ``ListTransfers`` page by page
        (500 a page), in submission order; ``grpc.RpcError`` if a page fails."""
        out: list[transfer_pb2.Transfer] = []
        with self.channel(principal) as ch:
            stub = transfer_pb2_grpc.TransferServiceStub(ch)
            token = ""
            while True:
                page = stub.ListTransfers(
                    transfer_pb2.ListTransfersRequest(page_size=500, page_token=token),
                    timeout=timeout,
                )
                out.extend(page.transfers)
                token = page.next_page_token
                if not token:
                    return out

    def _client_identity(
        self, principal: str, peer: str, cert: IssuedCertificate | None
    ) -> ClientIdentity | None:
        """:meth:`identity`, or None (plaintext) when ``transport_security`` is off."""
        return self.identity(principal, peer, cert) if self.transport_security else None

    def _tls_entry(self, principal: str) -> dict[str, Any]:
        """``{"tls": ...}`` for a daemon's file; nothing when ``transport_security`` is off."""
        return {"tls": self.tls_table(principal)} if self.transport_security else {}

    def cli_tls_args(self, principal: str, peer: str = "coordinator") -> list[str]:
        """``bridge`` CLI options presenting ``principal``'s certificate to ``peer``."""
        cert = self.certificate(principal)
        cas = self.identity(principal, peer).roots
        return [
            "--tls-cert",
            str(cert.cert_file),
            "--tls-key",
            str(cert.key_file),
            *[arg for ca in cas for arg in ("--tls-ca", str(ca))],
            "--network",
            str(self.workdir / "network.toml"),
        ]

    def server_credentials(self, principal: str) -> grpc.ServerCredentials:
        """Static mTLS server credentials with ``principal``'s certificate, requiring a
        client certificate from any organisation (for test servers standing in for one)."""
        cert = self.certificate(principal)
        roots = b"".join(ca.ca_file.read_bytes() for ca in self._pki().cas.values())
        return grpc.ssl_server_credentials(
            [(cert.key_file.read_bytes(), cert.cert_file.read_bytes())],
            root_certificates=roots,
            require_client_auth=True,
        )

    def aio_channel(
        self, principal: str, peer: str = "coordinator", cert: IssuedCertificate | None = None
    ) -> grpc.aio.Channel:
        """:meth:`channel` for asyncio callers."""
        return internal_channel(self.target_of(peer), self._client_identity(principal, peer, cert))

    def write_configs(self) -> None:
        """Write network, coordinator, relayer and verifier files plus 0600 key files."""
        self._network_file()
        write_key_file(self.workdir / "keys" / "supply-operator.key", self.supply_operator)
        if self.coordinators > 1 and self.store != "postgres":
            raise ValueError("several coordinators need store='postgres' (SQLite is one process)")
        for name in self.coordinator_names:
            self.ports[name] = free_port()
        verifiers: list[dict[str, str]] = []
        identities = {
            name: ident
            for name, h in self.dev_ledgers.items()
            if (ident := h.read_identity()) is not None
        }
        for i, (address, label) in enumerate(self.members):
            port = self.ports[f"verifier-{i}"] = free_port()
            account = self.verifier_keys[i] if self.token is None else None
            verifier: dict[str, Any] = {
                "network": "network.toml",
                "listen": f"127.0.0.1:{port}",
                **self._key_entry(f"keys/verifier-{i}.key", label, account),
                "vote_db": f"state/verifier-{i}.sqlite",
                "audit_log": f"audit/verifier-{i}.jsonl",
                **self._tls_entry(self.member_role(i)),
            }
            if identities:
                verifier["identities"] = identities
            ledger_auth = {
                name: auth
                for name in self.all_ledgers
                if (auth := self._ledger_auth(name, "verifier"))
            }
            if ledger_auth:
                verifier["ledger_auth"] = ledger_auth
            overrides = {
                name: o for name, h in self.dev_ledgers.items() if (o := _member_read(h, i))
            }
            if overrides:
                verifier["rpc_overrides"] = overrides
            verifier |= self._obs_tables(f"verifier-{i}")
            (self.workdir / f"verifier-{i}.toml").write_text(dump_toml(verifier))
            verifiers.append({"endpoint": f"127.0.0.1:{port}", "member": address.lower()})
        self._spare_configs(identities)
        relayers = {}
        for name, h in self.dev_ledgers.items():
            port = self.ports[f"relayer-{name}"] = free_port()
            (self.workdir / f"relayer-{name}.toml").write_text(
                dump_toml(
                    {
                        "network": "network.toml",
                        "ledger": name,
                        "listen": f"127.0.0.1:{port}",
                        "coordinator": ",".join(self.coordinator_targets),
                        "state_db": f"state/relayer-{name}.sqlite",
                        "audit_log": f"audit/relayer-{name}.jsonl",
                        **self._tls_entry(f"relayer:{name}"),
                        **h.relayer_entry(),
                    }
                    | _table("ledger_auth", self._ledger_auth(name, "relayer"))
                    | self._obs_tables(f"relayer-{name}")
                )
            )
            relayers[name] = f"127.0.0.1:{port}"
        self._coordinator_database()
        for name in self.coordinator_names:
            self._coordinator_file(name, relayers, verifiers)

    def _obs_tables(self, name: str) -> dict[str, Any]:
        """---- observability: ``[metrics]`` / ``[tracing]`` of one process's file."""
        tables: dict[str, Any] = {}
        if self.metrics:
            port = self.metrics_ports[name] = free_port()
            tables["metrics"] = {
                "listen": f"127.0.0.1:{port}",
                "probe_interval": self.probe_interval,
            }
        if self.tracing_endpoint:
            tables["tracing"] = {"enabled": True, "endpoint": self.tracing_endpoint}
        return tables

    # -- processes -------------------------------------------------------------------------
    def _process(self, name: str, module: str, config: str) -> ManagedProcess:
        proc = ManagedProcess(
            name=name,
            argv=[sys.executable, "-m", module, "--config", str(self.workdir / config)],
            log_path=self.workdir / "logs" / f"{name}.log",
            env={
                "KSTB_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1",
                **(self.token.env() if self.token is not None else {}),
                # Plain anvil http (no TLS proxy) is accepted only under the development flag.
                # So is plaintext gRPC (transport_security off: cost measurement only).
                **({} if self.evm_node_auth and self.transport_security else {INSECURE_ENV: "1"}),
                # The devnet's 0600 key files (and Fabric PEM keys): development only.
                PLAINTEXT_KEYS_ENV: "1",
            },
        )
        self.processes[name] = proc
        return proc

    def start_process(self, name: str) -> None:
        """(Re)start one bridge process by name and wait until it listens."""
        if name == "coordinator" or name.startswith("coordinator-"):
            proc = self._process(name, "bridge.coordinator", f"{name}.toml")
        elif name.startswith("relayer-"):
            proc = self._process(name, "relayers", f"{name}.toml")
        elif name.startswith(("verifier-", "spare-")):
            proc = self._process(name, "verifiers", f"{name}.toml")
        else:
            raise KeyError(name)
        proc.start().wait_port(self.ports[name])

    def start_bridge(self) -> None:
        """Start verifiers, coordinator and relayers as separate processes."""
        for i in range(len(self.members)):
            self.start_process(f"verifier-{i}")
        for j in range(len(self.spare_keys)):
            self.start_process(f"spare-{j}")
        for name in self.coordinator_names:
            self.start_process(name)
        self.leader()  # ---- active/passive coordinators: one has been elected
        for name in self.all_ledgers:
            self.start_process(f"relayer-{name}")
        self.register_issuance()

    # -- the depository's register ------------------------------------------------------------
    def operator_client(self) -> SupplyOperator:
        """A supply-operator client holding the devnet's operator key."""
        return SupplyOperator(
            self.coordinator_target,
            LocalKeySigner(self.supply_operator.private_key),
            identity=self._client_identity("supply-operator", "coordinator", None),
        )

    def register_issuance(self) -> None:
        """Register what each ledger has issued of every security (unless registered), and
        register every later devnet issue before it happens."""
        op = self.operator_client()
        try:
            for isin in self.isins:
                if op.registration(isin) is None:
                    totals = {n: self.handle(n).total_supply(isin) for n in self.all_ledgers}
                    op.register(isin, totals, "devnet genesis")
        finally:
            op.close()
        for name in self.all_ledgers:
            self.handle(name).before_issue = self._registrar(name)

    def _registrar(self, ledger: str) -> Callable[[str, int], None]:
        def register(isin: str, units: int) -> None:
            op = self.operator_client()
            try:
                wait_until(
                    lambda: _try_adjust(op, isin, ledger, units), 60.0, "issuance registered"
                )
            finally:
                op.close()

        return register

    def start(self) -> LocalSystem:
        """Everything: ledgers, configuration and bridge processes."""
        self.start_ledgers()
        self.write_configs()
        self.start_bridge()
        return self

    def __enter__(self) -> LocalSystem:
        """Start everything; whatever did start is stopped again if starting fails."""
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def coordinator_target(self) -> str:
        """host:port of the coordinator's gRPC server (with several: the leader's)."""
        return f"127.0.0.1:{self.ports[self.leader()]}"

    def stop(self) -> None:
        """Stop bridge processes (coordinators first), then the ledgers."""
        first = [n for n in self.processes if n.startswith("coordinator")]
        order = [*first, *[n for n in self.processes if n not in first]]
        for name in order:
            proc = self.processes.get(name)
            if proc is not None:
                proc.resume()  # a paused (SIGSTOP) process cannot act on SIGTERM
                proc.stop()
        for proxy in self.db_proxies.values():
            proxy.close()
        for ledger in self.dev_ledgers.values():
            ledger.stop()

    def wait_processes_alive(self, timeout: float = 10.0) -> None:
        """Fail with the log tail of any bridge process that died."""

        def ok() -> bool:
            for p in self.processes.values():
                if not p.alive():
                    raise RuntimeError(f"{p.name} died:\n{p.tail()}")
            return True

        wait_until(ok, timeout, "bridge processes")

    # ---- committee rotation (ADR 0009): spare members for a later epoch ----------------------
    def _make_spares(self) -> None:
        """Generate the spare members' keys (a later epoch's members)."""
        self.spare_keys = [DevAccount.generate() for _ in range(self.spare_members)]

    def spare_role(self, j: int) -> str:
        """The role string of spare member ``j`` (``member:0x...``)."""
        return f"member:{self.spare_keys[j].address.lower()}"

    def _later_entry(self) -> dict[str, Any]:
        """``later = [{member, endpoint}]`` for the network file's committee table."""
        if not self.spare_keys:
            return {}
        entries = []
        for j, key in enumerate(self.spare_keys):
            port = self.ports.setdefault(f"spare-{j}", free_port())
            entries.append({"member": key.address.lower(), "endpoint": f"127.0.0.1:{port}"})
        return {"later": entries}

    def _spare_pki(self, pki: DevPki) -> None:
        """An organisation and a member certificate per spare member."""
        for j in range(len(self.spare_keys)):
            pki.organisation(f"spare-{j}", [self.spare_role(j)])
            pki.issue(f"spare-{j}", self.spare_role(j), f"spare-{j}")

    def _spare_configs(self, identities: dict[str, Any]) -> None:
        """``spare-<j>.toml`` per spare member (the genesis members' ledger access)."""
        for j, key in enumerate(self.spare_keys):
            verifier: dict[str, Any] = {
                "network": "network.toml",
                "listen": f"127.0.0.1:{self.ports[f'spare-{j}']}",
                **self._key_entry(f"keys/spare-{j}.key", "", key),
                "vote_db": f"state/spare-{j}.sqlite",
                "audit_log": f"audit/spare-{j}.jsonl",
                **self._tls_entry(self.spare_role(j)),
            }
            if identities:
                verifier["identities"] = identities
            ledger_auth = {
                name: auth
                for name in self.all_ledgers
                if (auth := self._ledger_auth(name, "verifier"))
            }
            if ledger_auth:
                verifier["ledger_auth"] = ledger_auth
            (self.workdir / f"spare-{j}.toml").write_text(dump_toml(verifier))


def to_checksum(address: bytes) -> str:
    """EIP-55 form of a 20-byte address."""
    return Web3.to_checksum_address(address)


def _table(key: str, value: dict[str, str]) -> dict[str, Any]:
    """``{key: value}`` when ``value`` is not empty, else nothing."""
    return {key: value} if value else {}


def health_serving(target: str, identity: Any) -> bool:
    """True when ``target``'s gRPC health (whole server) is SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = sync_channel(target, identity)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1.0
        )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def _try_adjust(op: SupplyOperator, isin: str, ledger: str, units: int) -> bool:
    """One attempt to register an issue; False while the coordinator is unreachable."""
    try:
        op.adjust(isin, ledger, units, "devnet issue")
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return False
        raise
    return True

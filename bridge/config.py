"""Configuration files (TOML) for every daemon, parsed into typed, validated dataclasses.

``network.toml`` is public and shared by all components: ledgers, securities and the
committee. Each daemon has its own file naming its network file, listen address, signing key
and state database. Secrets never appear in these files: a key is a 0600 ``key_file``
(devnet) or a ``[key]`` table naming an encrypted keystore or a PKCS#11 token key, with its
passphrase or PIN in a 0600 file or an environment variable (see :mod:`bridge.keys.reference`).

Every loader checks in three passes and stops at the first that fails, raising ONE
:class:`~bridge.config_errors.ConfigError` listing every problem of that pass by its path:
the file's shape (:mod:`bridge.config_schema`: unknown keys with a "did you mean", types,
ranges; after the ``KSTB_<FILE>__<KEY>`` environment overrides of :mod:`bridge.config_rules`),
the rules between keys and files (:mod:`bridge.config_rules`: quorum reachable, a relayer per
ledger, per-kind rules), then building the typed configuration (files read, addresses
parsed), whose first refusal is chained as the error's ``__cause__``. The reference of every
key is generated into ``docs/configuration.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bridge.config_errors import ConfigError, ConfigProblem
from bridge.config_rules import (
    check_file,
    coordinator_rules,
    network_rules,
    refuse,
    relayer_rules,
    verifier_rules,
)
from bridge.domain.committee import Committee
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import LedgerId, SecurityId, parse_evm_address
from bridge.domain.rotation import RotationBounds
from bridge.keys.files import is_exposed
from bridge.keys.reference import KeyRef, PlainKeyFile, parse_key_ref
from bridge.ledgers.kinds import get_kind, parse_table
from bridge.obs.config import ObservabilityConfig, load_observability
from bridge.rpc.roles import BROKERAGE, COORDINATOR, MEMBER, RELAYER, Role, parse_role, valid_org_id


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """How to reach one ledger and its bridge endpoint, as its ledger kind validated it
    (:mod:`bridge.ledgers.kinds`; ``settings`` is the kind's own parsed table).

    EVM: ``rpc_url`` is the JSON-RPC URL and ``bridge`` the endpoint contract address.
    Fabric: ``rpc_url`` is a peer's Gateway ``host:port`` and ``bridge`` the chaincode
    name on ``channel``; TLS is verified against ``tls_ca`` (``tls_server_name``
    overrides the name checked in the peer's certificate).
    """

    id: LedgerId
    kind: str
    rpc_url: str
    bridge: str
    chain_id: int
    finality_depth: int
    block_interval: float
    channel: str = ""
    tls_ca: Path | None = None
    """Fabric: the peer's TLS CA (required). EVM: the CA of an ``https`` node (optional;
    without it the system's trust store verifies the node)."""
    tls_server_name: str = ""
    max_gas_price_gwei: float = 1000.0
    """EVM: the most a relayer pays per unit of gas; above it a step waits."""
    genesis_hash: bytes = b""
    """Fabric: the channel's genesis block hash (SHA-256 of block 0's header DER)."""
    settings: Any = field(default=None, compare=False, repr=False)
    """The kind's validated ``[[ledgers]]`` table (a :class:`~bridge.ledgers.kinds.LedgerTable`
    subclass) for keys a kind adds beyond the fields above; None when built in code."""

    @property
    def network_word(self) -> bytes:
        """The network word bound into claim and instruction digests (protocol v2), as the
        ledger's kind defines it (EVM ``bytes32(chain id)``, Fabric the genesis hash)."""
        return get_kind(self.kind).network_word(self)


@dataclass(frozen=True, slots=True)
class LedgerEndpoint:
    """A member's own connection to a ledger, in place of the network file's ``rpc_url``.

    A node of another organisation has its own TLS CA and host name: with ``tls_ca`` set,
    ``tls_ca`` and ``tls_server_name`` both come from here (an empty name means the host in
    ``url``); without it, the network file's TLS settings stay. On EVM ``tls_ca`` verifies
    an ``https`` JSON-RPC URL and ``tls_server_name`` is refused (the URL's host is checked).
    """

    url: str
    tls_ca: Path | None = None
    tls_server_name: str = ""

    def apply(self, config: LedgerConfig) -> LedgerConfig:
        """``config`` reached through this endpoint; TLS settings the ledger's kind does not
        take are refused."""
        if self.tls_ca is None:
            if self.tls_server_name:
                raise InvalidInput(f"ledger {config.id}: tls_server_name needs tls_ca")
            return replace(config, rpc_url=self.url)
        get_kind(config.kind).check_endpoint(config, self)
        return replace(
            config, rpc_url=self.url, tls_ca=self.tls_ca, tls_server_name=self.tls_server_name
        )


@dataclass(frozen=True, slots=True)
class LedgerAuth:
    """How one daemon authenticates its connection to a ledger node (not its ledger identity).

    EVM: ``token_file`` holds a bearer token (0600) sent as ``Authorization: Bearer <token>``
    to a node that wants one (Besu JWT, an authenticating proxy); it needs an ``https`` URL.
    Fabric: ``tls_cert_file``/``tls_key_file`` are the TLS client certificate and key (PEM,
    key 0600) presented to peers that require client TLS (``peer.tls.clientAuthRequired``).
    """

    token_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """A daemon's identity on one ledger: a key (``key_file``, or ``key`` for a keystore or
    token key, which wins), and for Fabric an MSP certificate."""

    key_file: Path | None
    cert_file: Path | None = None
    msp_id: str = ""
    key: KeyRef | None = None

    @property
    def key_ref(self) -> KeyRef:
        """Where the signing key lives; InvalidInput when no key is configured."""
        return _key_ref(self.key, self.key_file)


def _key_ref(key: KeyRef | None, key_file: Path | None) -> KeyRef:
    if key is not None:
        return key
    if key_file is None:
        raise InvalidInput("no signing key configured")
    return PlainKeyFile(key_file)


@dataclass(frozen=True, slots=True)
class Organisation:
    """One institution on the bridge network: its CA and the roles it may hold.

    Guarantees (from :func:`load_network`): the id is unique and well formed, the CA file
    was readable when loaded, every brokerage/relayer role names a configured ledger and
    every member role a committee member.
    """

    id: str
    ca_file: Path
    roles: frozenset[Role]
    revoked_file: Path | None = None
    """SHA-256 fingerprints (hex, one per line, ``#`` comments) of its revoked certificates."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """A daemon's or client's mutual-TLS identity (the ``[tls]`` table).

    ``ca_files`` overrides the trust roots that otherwise come from the network file's
    organisations (all of them for a server; the holders of the peer's role for a client).
    """

    cert_file: Path
    key_file: Path
    ca_files: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """The public description of the bridge network."""

    committee: Committee
    ledgers: Mapping[str, LedgerConfig]
    securities: Mapping[str, SecurityId]
    supply_operators: frozenset[bytes] = frozenset()
    """Addresses whose signatures authorise registered issuance and hold releases."""
    organisations: Mapping[str, Organisation] = field(default_factory=dict)
    """Institutions by id (``[[organisations]]``): who may connect, and in which roles."""
    instruction_keys: Mapping[str, frozenset[bytes]] = field(default_factory=dict)
    """Per source ledger, the 20-byte addresses of the brokerage instruction keys that may
    instruct transfers out of it (``[instruction_keys]``, protocol v2)."""
    later_members: Mapping[bytes, str] = field(default_factory=dict)
    """``[[committee.later]]``: members of epochs after the network file's (which is only
    the genesis epoch and trust anchor; the live epochs are read from the ledgers), by
    address, with the endpoint their verifier serves at ('' unknown). They may hold a
    member role; the coordinator asks them to sign too (ADR 0009)."""

    def may_instruct(self, ledger: str, instructor: bytes) -> bool:
        """True when the 20-byte ``instructor`` is registered for source ``ledger``."""
        return instructor in self.instruction_keys.get(ledger, frozenset())

    def ledger(self, name: str) -> LedgerConfig:
        """The named ledger; raises KeyError if it is not configured."""
        return self.ledgers[name]

    def holders_of(self, role: Role) -> list[Organisation]:
        """The organisations granted ``role``."""
        return [o for o in self.organisations.values() if role in o.roles]


@dataclass(frozen=True, slots=True)
class HaConfig:
    """``[ha]`` of a coordinator file: active/passive coordinators on one PostgreSQL
    database (ADR 0017). GUARANTEES (checked at load): a non-empty ``name``, PostgreSQL only,
    ``0 < renew_interval <= lease_ttl / 3``."""

    name: str
    """Unique per coordinator: the lease holder and its heartbeat row."""
    advertise: str
    """The address clients should use for this coordinator (named by standbys)."""
    lease_ttl: float = 10.0
    renew_interval: float = 2.0


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """``[batching]`` of a coordinator file: the step engine's batched steps (issue 14).
    Off by default; ``max_items`` per batched call (further bounded by the smallest batch
    limit of the network's ledger kinds), ``max_in_flight`` batched calls per key at once,
    ``linger_ms`` a batch behind a running one waits for more items (0: none),
    ``read_linger_ms`` the same for the coalesced ledger reads (legs, lane limits, holders)."""

    enabled: bool = False
    max_items: int = 50
    max_in_flight: int = 2
    linger_ms: float = 0.0
    read_linger_ms: float = 20.0


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """The coordinator daemon."""

    network: NetworkConfig
    listen: str
    database: Path | str
    """The SQLite file (a Path; the default), or a ``postgresql://user@host:port/name`` URL
    (a str, without password: see ``database_password_file``; ADR 0013)."""
    relayers: Mapping[str, str]
    verifiers: tuple[str, ...]
    transfer_ttl: int
    rpc_timeout: float
    supply_heartbeat: float = 30.0
    """Seconds after which an unchanged security is attested again (0: only on change)."""
    instruction_max_age: float = 600.0
    """Operator instructions older than this (seconds) are refused."""
    tls: TlsConfig | None = None
    """Mutual TLS for the server and every client; None only in development plaintext."""
    audit_log: Path | None = None
    """JSON-lines file receiving every authorisation decision (opened O_APPEND)."""
    verifier_members: tuple[str, ...] = ()
    """The member address (``0x...``) serving at each ``verifiers`` endpoint ('' unknown)."""
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    """``[metrics]`` and ``[tracing]`` (ADR 0016); both off when absent."""

    database_password_file: Path | None = None
    """A 0600 file holding the PostgreSQL password (else env BRIDGE_DATABASE_PASSWORD)."""
    ha: HaConfig | None = None
    """---- active/passive coordinators (ADR 0017); None: one coordinator per database."""
    max_batch_items: int = 1000
    """---- batch API (ADR 0023): most items one SubmitTransfers may carry."""
    max_batch_watches: int = 4
    """---- batchfix: most concurrent WatchBatch streams per caller (organisation, role)."""
    max_running_batches: int = 8
    """---- batchfix: most SubmitTransfers batches of one source ledger running at once."""
    batch_admission_parallel: int = 16
    """Items of one SubmitTransfers batch checked at once (recorded in item order)."""
    max_transfer_watches: int = 256
    """Most concurrent WatchTransfer streams per caller (organisation, role)."""
    batch_retention_days: int = 30
    """Days a batch's record (its id's idempotency window) is kept; transfers stay."""
    max_unfinished_per_ledger: int = 100_000
    """Most unfinished transfers from one source ledger; admission refuses more."""
    max_batch_items_per_day: int = 1_000_000
    """Most items one source ledger's batches may record in a rolling day."""
    max_refused_batch_items_per_day: int = 10_000
    """Most items refused on their own input one source ledger's batches may record in a
    rolling day; past it, new batch ids are refused."""
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    """---- batched steps (issue 14): ``[batching]``; off when absent."""


@dataclass(frozen=True, slots=True)
class RelayerConfig:
    """One chain operator's relayer for one ledger."""

    network: NetworkConfig
    ledger: str
    listen: str
    coordinator: str
    """The coordinator's address, or several comma-separated (active/passive coordinators,
    ADR 0017; a TOML array is accepted and joined): events go to the leader."""
    key_file: Path | None
    state_db: Path
    poll_interval: float
    cert_file: Path | None = None
    msp_id: str = ""
    tls: TlsConfig | None = None
    """Mutual TLS for the server and the coordinator client."""
    audit_log: Path | None = None
    """JSON-lines file receiving every authorisation decision (opened O_APPEND)."""
    key: KeyRef | None = None
    """The account / identity key when given as a ``[key]`` table (keystore or token)."""
    ledger_auth: LedgerAuth = field(default_factory=LedgerAuth)
    """``[ledger_auth]``: how this relayer authenticates to its ledger node."""
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    """``[metrics]`` and ``[tracing]`` (ADR 0016); both off when absent."""
    standby: bool = False
    """---- active/passive (ADR 0017): wait for the checkpoint store's lock instead of
    refusing to start while another relayer holds it."""

    @property
    def credentials(self) -> Credentials:
        """The operator's ledger identity."""
        return Credentials(self.key_file, self.cert_file, self.msp_id, self.key)


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """One committee member."""

    network: NetworkConfig
    listen: str
    key_file: Path | None
    vote_db: Path
    # The member's own ledger connections (defaults: the network file's rpc_url).
    rpc_overrides: Mapping[str, LedgerEndpoint]
    # ``[identities.<ledger>]``: read-only client identities for ledgers whose kind signs
    # every query (Fabric); ``fabric_identities`` is still read as the older spelling.
    identities: Mapping[str, Credentials] = field(default_factory=dict)
    tls: TlsConfig | None = None
    """Mutual TLS for the server."""
    audit_log: Path | None = None
    """JSON-lines file receiving every authorisation decision (opened O_APPEND)."""
    key: KeyRef | None = None
    """The member key when given as a ``[key]`` table (keystore or token)."""

    @property
    def member_key(self) -> KeyRef:
        """Where the member's committee key lives."""
        return _key_ref(self.key, self.key_file)

    # ``[ledger_auth.<ledger>]``: how this member authenticates to each ledger node.
    ledger_auth: Mapping[str, LedgerAuth] = field(default_factory=dict)
    rotation: RotationBounds = field(default_factory=RotationBounds)
    """``[rotation]``: the activation and overlap bounds this member signs rotations within."""
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    """``[metrics]`` and ``[tracing]`` (ADR 0016); both off when absent."""
    standby: bool = False
    """---- active/passive (ADR 0017): wait for the vote log's lock instead of refusing to
    start while another process of this member holds it (same vote log only)."""
    max_batch_claims: int = 1000
    """---- batched certificates (ADR 0025): most items one ``SignClaims`` may carry."""


def _req(table: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise InvalidInput(f"{where}: missing required key {key!r}")
    return table[key]


@contextmanager
def _building(path: Path) -> Iterator[None]:
    """The last pass: a refusal while building the typed configuration (a file not
    readable, an address with a bad checksum) becomes the file's ConfigError, the original
    error chained as its cause; a ConfigError of another file (the network file) passes."""
    try:
        yield
    except ConfigError:
        raise
    except InvalidInput as exc:
        message = str(exc).removeprefix(f"{path}: ")
        raise ConfigError(str(path), [ConfigProblem("", message)]) from exc


def _non_negative(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = float(table.get(key, default))
    if value < 0:
        raise InvalidInput(f"{where}: {key} must not be negative")
    return value


def _rel(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def load_network(path: Path) -> NetworkConfig:
    """Parse and validate a network file (ConfigError listing every problem otherwise)."""
    model, raw = check_file("network", path)
    refuse(str(path), network_rules(model)[1])
    with _building(path):
        return _network(path, raw)


def _network(path: Path, raw: Mapping[str, Any]) -> NetworkConfig:
    c = _req(raw, "committee", str(path))
    members = tuple(parse_evm_address(m) for m in _req(c, "members", "committee"))
    committee = Committee(
        epoch=int(_req(c, "epoch", "committee")),
        threshold=int(_req(c, "threshold", "committee")),
        members=members,
    )
    later = _later_members(c.get("later", []), committee)
    ledgers: dict[str, LedgerConfig] = {}
    items = raw.get("ledgers", [])
    if not isinstance(items, list):
        raise InvalidInput(f"{path}: ledgers must be an array of tables")
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"ledgers[{n}] must be a table")
        where = f"ledger {item['id']}" if isinstance(item.get("id"), str) else f"ledgers[{n}]"
        kind = get_kind(str(_req(item, "kind", where)))
        config = kind.ledger_config(parse_table(kind, item, where), path.parent)
        if config.id.name in ledgers:
            raise InvalidInput(f"ledger {config.id} configured twice")
        ledgers[config.id.name] = config
    securities = {s: SecurityId(s) for s in raw.get("securities", {}).get("isins", [])}
    operators = frozenset(parse_evm_address(a) for a in raw.get("supply", {}).get("operators", []))
    return NetworkConfig(
        committee=committee,
        ledgers=ledgers,
        securities=securities,
        supply_operators=operators,
        organisations=_organisations(
            path, raw.get("organisations", []), ledgers, set(committee.members) | set(later)
        ),
        instruction_keys=_instruction_keys(raw.get("instruction_keys", {}), ledgers),
        later_members=later,
    )


def _later_members(items: Any, genesis: Committee) -> dict[bytes, str]:
    """``[[committee.later]]``: ``{ member = "0x...", endpoint = "host:port" }`` entries,
    each a distinct address outside the genesis committee (endpoint optional)."""
    if not isinstance(items, list):
        raise InvalidInput("committee.later must be an array of tables")
    out: dict[bytes, str] = {}
    for item in items:
        if not isinstance(item, dict) or set(item) - {"member", "endpoint"}:
            raise InvalidInput("committee.later: each entry is { member, endpoint }")
        member = parse_evm_address(str(_req(item, "member", "committee.later")))
        if member in genesis.members or member in out:
            raise InvalidInput(f"committee.later: 0x{member.hex()} is listed twice")
        if not any(member):
            raise InvalidInput("committee.later: the zero address is not a member")
        out[member] = str(item.get("endpoint", ""))
    return out


_ORG_KEYS = frozenset({"id", "ca", "roles", "revoked_file"})
_SOLE_HOLDER = (BROKERAGE, MEMBER, COORDINATOR)
"""Roles that at most one organisation may hold (the account manager of a ledger, a
committee member, the coordinator)."""


def _organisations(
    path: Path, items: Any, ledgers: Mapping[str, LedgerConfig], members: set[bytes]
) -> dict[str, Organisation]:
    """``[[organisations]]``: validated, unknown keys refused."""
    if not isinstance(items, list):
        raise InvalidInput(f"{path}: organisations must be an array of tables")
    orgs: dict[str, Organisation] = {}
    holders: dict[Role, str] = {}
    for item in items:
        if not isinstance(item, dict):
            raise InvalidInput(f"{path}: every organisation must be a table")
        org_id = valid_org_id(str(_req(item, "id", "organisation")))
        where = f"organisation {org_id}"
        unknown = sorted(set(item) - _ORG_KEYS)
        if unknown:
            raise InvalidInput(f"{where}: unknown keys {unknown}")
        if org_id in orgs:
            raise InvalidInput(f"{where} configured twice")
        ca = _rel(path.parent, str(_req(item, "ca", where)))
        try:
            ca.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"{where}: CA file {ca} is not readable: {exc.strerror}") from None
        raw_roles = _req(item, "roles", where)
        if not isinstance(raw_roles, list) or not raw_roles:
            raise InvalidInput(f"{where}: roles must be a non-empty list")
        roles = frozenset(parse_role(str(r)) for r in raw_roles)
        for role in roles:
            if role.kind in (BROKERAGE, RELAYER) and role.scope not in ledgers:
                raise InvalidInput(f"{where}: role {role} names an unknown ledger")
            if role.kind == MEMBER and bytes.fromhex(role.scope[2:]) not in members:
                raise InvalidInput(f"{where}: role {role} is not a committee member")
            if role.kind in _SOLE_HOLDER:
                if role in holders:
                    raise InvalidInput(f"{where}: role {role} is already held by {holders[role]}")
                holders[role] = org_id
        revoked = item.get("revoked_file")
        revoked_file = _rel(path.parent, str(revoked)) if revoked else None
        if revoked_file is not None:
            # SECURITY: a missing list would silently turn revocation off; refuse to start.
            try:
                revoked_file.read_bytes()
            except OSError as exc:
                raise InvalidInput(
                    f"{where}: revocation list {revoked_file} is not readable: {exc.strerror}"
                ) from None
        orgs[org_id] = Organisation(
            id=org_id,
            ca_file=ca,
            roles=roles,
            revoked_file=revoked_file,
        )
    return orgs


_TLS_KEYS = frozenset({"cert_file", "key_file", "ca_files"})


def load_tls(raw: Mapping[str, Any], base: Path, where: str) -> TlsConfig | None:
    """The ``[tls]`` table of a daemon or client file (None when absent).

    The key file must not be readable by group or others (0600).
    """
    table = raw.get("tls")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise InvalidInput(f"{where}: tls must be a table")
    unknown = sorted(set(table) - _TLS_KEYS)
    if unknown:
        raise InvalidInput(f"{where}: tls: unknown keys {unknown}")
    key = _rel(base, str(_req(table, "key_file", f"{where}: tls")))
    try:
        mode = key.stat().st_mode
    except OSError as exc:
        raise InvalidInput(f"{where}: tls key file {key}: {exc.strerror}") from None
    if is_exposed(key, mode):
        raise InvalidInput(f"{where}: tls key file {key} must be 0600 (not group/world readable)")
    cas = table.get("ca_files", [])
    if not isinstance(cas, list):
        raise InvalidInput(f"{where}: tls.ca_files must be a list")
    return TlsConfig(
        cert_file=_rel(base, str(_req(table, "cert_file", f"{where}: tls"))),
        key_file=key,
        ca_files=tuple(_rel(base, str(c)) for c in cas),
    )


def _audit_log(raw: Mapping[str, Any], base: Path) -> Path | None:
    value = raw.get("audit_log")
    return _rel(base, str(value)) if value else None


def _instruction_keys(
    table: Mapping[str, Any], ledgers: Mapping[str, LedgerConfig]
) -> dict[str, frozenset[bytes]]:
    """``[instruction_keys]``: ``"<ledger>" = ["0x<address>", ...]`` for known ledgers."""
    if not isinstance(table, Mapping):
        raise InvalidInput("instruction_keys must be a table of ledger = [addresses]")
    keys: dict[str, frozenset[bytes]] = {}
    for ledger, addresses in table.items():
        if ledger not in ledgers:
            raise InvalidInput(f"instruction_keys: unknown ledger {ledger!r}")
        if not isinstance(addresses, list):
            raise InvalidInput(f"instruction_keys.{ledger} must be a list of addresses")
        parsed = [parse_evm_address(str(a)) for a in addresses]
        if any(not any(a) for a in parsed):
            raise InvalidInput(f"instruction_keys.{ledger}: the zero address is not a key")
        keys[ledger] = frozenset(parsed)
    return keys


def load_coordinator(path: Path) -> CoordinatorConfig:
    """Parse a coordinator file (ConfigError listing every problem otherwise)."""
    model, raw = check_file("coordinator", path)
    base = path.parent
    network = load_network(_rel(base, model.network))
    refuse(str(path), coordinator_rules(model, network))
    with _building(path):
        return _coordinator(path, raw, network)


def _coordinator(path: Path, raw: Mapping[str, Any], network: NetworkConfig) -> CoordinatorConfig:
    base = path.parent
    relayers = dict(_req(raw, "relayers", str(path)))
    endpoints, members = _verifier_endpoints(_req(raw, "verifiers", str(path)), network)
    database = _database(_req(raw, "database", str(path)), base, str(path))
    listen = str(_req(raw, "listen", str(path)))
    return CoordinatorConfig(
        network=network,
        listen=listen,
        database=database,
        relayers=relayers,
        verifiers=endpoints,
        transfer_ttl=int(raw.get("transfer_ttl", 300)),
        rpc_timeout=float(raw.get("rpc_timeout", 30.0)),
        supply_heartbeat=_non_negative(raw, "supply_heartbeat", 30.0, str(path)),
        instruction_max_age=_non_negative(raw, "instruction_max_age", 600.0, str(path)),
        tls=load_tls(raw, base, str(path)),
        audit_log=_audit_log(raw, base),
        verifier_members=members,
        observability=load_observability(raw, str(path)),
        database_password_file=(
            _rel(base, str(raw["database_password_file"]))
            if "database_password_file" in raw
            else None
        ),
        ha=_ha(raw.get("ha"), database, listen, str(path)),
        max_batch_items=int(raw.get("max_batch_items", 1000)),
        max_batch_watches=int(raw.get("max_batch_watches", 4)),
        max_running_batches=int(raw.get("max_running_batches", 8)),
        batch_admission_parallel=int(raw.get("batch_admission_parallel", 16)),
        max_transfer_watches=int(raw.get("max_transfer_watches", 256)),
        batch_retention_days=int(raw.get("batch_retention_days", 30)),
        max_unfinished_per_ledger=int(raw.get("max_unfinished_per_ledger", 100_000)),
        max_batch_items_per_day=int(raw.get("max_batch_items_per_day", 1_000_000)),
        max_refused_batch_items_per_day=int(raw.get("max_refused_batch_items_per_day", 10_000)),
        batching=_batching(raw.get("batching")),
    )


def _batching(raw: Any) -> BatchingConfig:
    """``[batching]`` (already validated by the schema), or the defaults (off)."""
    if not isinstance(raw, Mapping):
        return BatchingConfig()
    return BatchingConfig(
        enabled=bool(raw.get("enabled", False)),
        max_items=int(raw.get("max_items", 50)),
        max_in_flight=int(raw.get("max_in_flight", 2)),
        linger_ms=float(raw.get("linger_ms", 0.0)),
        read_linger_ms=float(raw.get("read_linger_ms", 20.0)),
    )


def _coordinators(value: Any) -> str:
    """``coordinator``: one address, a comma-separated list or an array of addresses."""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _ha(table: Any, database: Path | str, listen: str, where: str) -> HaConfig | None:
    """``[ha]``: active/passive coordinators (ADR 0017), PostgreSQL only.

    SECURITY: SQLite keeps its one-process rule (its exclusive lock file); a lease there
    would let two hosts believe they share a database they cannot."""
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise InvalidInput(f"{where}: [ha] must be a table")
    if isinstance(database, Path):
        raise InvalidInput(f"{where}: [ha] needs a PostgreSQL database (SQLite is one process)")
    name = str(table.get("name", ""))
    if not name:
        raise InvalidInput(f"{where}: [ha] name is required (unique per coordinator)")
    ttl = _non_negative(table, "lease_ttl", 10.0, f"{where} [ha]")
    renew = _non_negative(table, "renew_interval", 2.0, f"{where} [ha]")
    if not (ttl > 0 and 0 < renew <= ttl / 3):
        raise InvalidInput(
            f"{where}: [ha] needs 0 < renew_interval <= lease_ttl / 3"
            f" (got lease_ttl={ttl}, renew_interval={renew})"
        )
    return HaConfig(name, str(table.get("advertise", listen)), ttl, renew)


def _database(value: Any, base: Path, where: str) -> Path | str:
    """``database``: a SQLite path (relative to the file), or a PostgreSQL URL.

    SECURITY: a URL carrying a password is refused (it would end up in logs and process
    listings); the password comes from ``database_password_file`` or the environment."""
    text = str(value)
    if text.startswith(("postgresql://", "postgres://")):
        from bridge.coordinator.db import DatabaseSettingRefused, postgres_params

        try:
            postgres_params(text)
        except DatabaseSettingRefused as exc:
            raise DatabaseSettingRefused(f"{where}: database: {exc}") from None
        return text
    return _rel(base, text)


def _verifier_endpoints(
    items: Any, network: NetworkConfig
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``verifiers``: ``"host:port"`` strings, or ``{ endpoint = ..., member = "0x..." }``
    tables naming the committee member expected at the endpoint (needed with mTLS)."""
    endpoints: list[str] = []
    members: list[str] = []
    for item in items:
        if isinstance(item, str):
            endpoints.append(item)
            members.append("")
            continue
        if not isinstance(item, dict) or set(item) - {"endpoint", "member"}:
            raise InvalidInput("verifiers: each entry is a host:port or {endpoint, member}")
        member = parse_evm_address(str(_req(item, "member", "verifiers")))
        if member not in network.committee.members and member not in network.later_members:
            raise InvalidInput(f"verifiers: 0x{member.hex()} is not a committee member")
        endpoints.append(str(_req(item, "endpoint", "verifiers")))
        members.append("0x" + member.hex())
    return tuple(endpoints), tuple(members)


def load_relayer(path: Path) -> RelayerConfig:
    """Parse a relayer file (ConfigError listing every problem otherwise)."""
    model, raw = check_file("relayer", path)
    network = load_network(_rel(path.parent, model.network))
    refuse(str(path), relayer_rules(model, network))
    with _building(path):
        return _relayer(path, raw, network)


def _relayer(path: Path, raw: Mapping[str, Any], network: NetworkConfig) -> RelayerConfig:
    base = path.parent
    ledger = str(_req(raw, "ledger", str(path)))
    key = parse_key_ref(raw, base, str(path))
    return RelayerConfig(
        network=network,
        ledger=ledger,
        listen=str(_req(raw, "listen", str(path))),
        coordinator=_coordinators(_req(raw, "coordinator", str(path))),
        key_file=key.path if isinstance(key, PlainKeyFile) else None,
        state_db=_rel(base, _req(raw, "state_db", str(path))),
        poll_interval=float(raw.get("poll_interval", 0.2)),
        cert_file=_rel(base, raw["cert_file"]) if "cert_file" in raw else None,
        msp_id=str(raw.get("msp_id", "")),
        tls=load_tls(raw, base, str(path)),
        audit_log=_audit_log(raw, base),
        key=None if isinstance(key, PlainKeyFile) else key,
        ledger_auth=_ledger_auth(
            base, network.ledger(ledger), raw.get("ledger_auth", {}), "ledger_auth"
        ),
        observability=load_observability(raw, str(path)),
        standby=_flag(raw, "standby", str(path)),
    )


_LEDGER_AUTH_KEYS = frozenset({"token_file", "tls_cert_file", "tls_key_file"})


def _ledger_auth(base: Path, ledger: LedgerConfig, value: Any, where: str) -> LedgerAuth:
    """A ``[ledger_auth]`` table: ``token_file`` (EVM) or ``tls_cert_file``+``tls_key_file``
    (Fabric). Unknown keys and half a TLS pair are refused here; keys the ledger's kind does
    not take, or would send unsafely (a token over plain ``http://``), by the kind."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: a table with {sorted(_LEDGER_AUTH_KEYS)}")
    unknown = sorted(set(value) - _LEDGER_AUTH_KEYS)
    if unknown:
        raise InvalidInput(f"{where}: unknown keys {unknown}")
    auth = LedgerAuth(
        token_file=_rel(base, value["token_file"]) if "token_file" in value else None,
        tls_cert_file=_rel(base, value["tls_cert_file"]) if "tls_cert_file" in value else None,
        tls_key_file=_rel(base, value["tls_key_file"]) if "tls_key_file" in value else None,
    )
    if (auth.tls_cert_file is None) != (auth.tls_key_file is None):
        raise InvalidInput(f"{where}: tls_cert_file and tls_key_file go together")
    get_kind(ledger.kind).check_auth(ledger, auth, where)
    return auth


_ENDPOINT_KEYS = frozenset({"url", "tls_ca", "tls_server_name"})


def _endpoint(base: Path, name: str, value: Any) -> LedgerEndpoint:
    """``rpc_overrides.<name>``: a URL, or a table with ``url`` and (Fabric) TLS settings."""
    where = f"rpc_overrides.{name}"
    if isinstance(value, str) and value:
        return LedgerEndpoint(value)
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: a URL or a table with url, tls_ca, tls_server_name")
    unknown = sorted(set(value) - _ENDPOINT_KEYS)
    if unknown:
        raise InvalidInput(f"{where}: unknown keys {unknown}")
    url = str(_req(value, "url", where))
    if not url:
        raise InvalidInput(f"{where}: url is empty")
    return LedgerEndpoint(
        url=url,
        tls_ca=_rel(base, value["tls_ca"]) if "tls_ca" in value else None,
        tls_server_name=str(value.get("tls_server_name", "")),
    )


def load_verifier(path: Path) -> VerifierConfig:
    """Parse a verifier file (ConfigError listing every problem otherwise)."""
    model, raw = check_file("verifier", path)
    network = load_network(_rel(path.parent, model.network))
    refuse(str(path), verifier_rules(model, network))
    with _building(path):
        return _verifier(path, raw, network)


def _verifier(path: Path, raw: Mapping[str, Any], network: NetworkConfig) -> VerifierConfig:
    base = path.parent
    key = parse_key_ref(raw, base, str(path))
    overrides = {
        name: _endpoint(base, name, value) for name, value in raw.get("rpc_overrides", {}).items()
    }
    auth: dict[str, LedgerAuth] = {}
    for name, value in raw.get("ledger_auth", {}).items():
        if name not in network.ledgers:
            raise InvalidInput(f"ledger_auth for unknown ledger {name!r}")
        lc = network.ledger(name)
        reached = overrides[name].apply(lc) if name in overrides else lc
        auth[name] = _ledger_auth(base, reached, value, f"ledger_auth.{name}")
    return VerifierConfig(
        network=network,
        listen=str(_req(raw, "listen", str(path))),
        key_file=key.path if isinstance(key, PlainKeyFile) else None,
        key=None if isinstance(key, PlainKeyFile) else key,
        vote_db=_rel(base, _req(raw, "vote_db", str(path))),
        rpc_overrides=overrides,
        identities=_identities(path, raw, network),
        tls=load_tls(raw, base, str(path)),
        audit_log=_audit_log(raw, base),
        ledger_auth=auth,
        rotation=_rotation_bounds(raw.get("rotation", {})),
        observability=load_observability(raw, str(path)),
        standby=_flag(raw, "standby", str(path)),
        max_batch_claims=int(raw.get("max_batch_claims", 1000)),
    )


def _flag(raw: Mapping[str, Any], key: str, where: str) -> bool:
    """A boolean setting (default false); anything but a TOML boolean is refused."""
    value = raw.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}: {key} must be true or false")
    return value


_ROTATION_KEYS = ("min_overlap", "max_overlap", "max_activation_delay", "max_activation_lag")


def _rotation_bounds(table: Any) -> RotationBounds:
    """``[rotation]``: non-negative integer seconds, min_overlap <= max_overlap."""
    if not isinstance(table, dict) or set(table) - set(_ROTATION_KEYS):
        raise InvalidInput(f"rotation: a table with keys among {list(_ROTATION_KEYS)}")
    values = {}
    for key in _ROTATION_KEYS:
        if key in table:
            value = table[key]
            if type(value) is not int or value < 0:
                raise InvalidInput(f"rotation.{key} must be a non-negative integer (seconds)")
            values[key] = value
    bounds = RotationBounds(**values)
    if not 0 < bounds.min_overlap <= bounds.max_overlap:
        raise InvalidInput("rotation: need 0 < min_overlap <= max_overlap")
    return bounds


def _identities(
    path: Path, raw: Mapping[str, Any], network: NetworkConfig
) -> dict[str, Credentials]:
    """``[identities.<ledger>]`` (or the older ``[fabric_identities.<ledger>]``): each parsed
    by the ledger's kind, which refuses one it does not take."""
    if "identities" in raw and "fabric_identities" in raw:
        raise InvalidInput(f"{path}: identities and fabric_identities are exclusive; give one")
    table_name = "fabric_identities" if "fabric_identities" in raw else "identities"
    table = raw.get(table_name, {})
    if not isinstance(table, dict):
        raise InvalidInput(f"{path}: {table_name} must be a table")
    out: dict[str, Credentials] = {}
    for name, ident in table.items():
        if name not in network.ledgers:
            raise InvalidInput(f"{path}: {table_name}.{name}: unknown ledger")
        kind = get_kind(network.ledger(name).kind)
        out[name] = kind.parse_identity(ident, path.parent, str(path), f"{table_name}.{name}")
    return out


def dump_toml(data: Mapping[str, Any]) -> str:
    """Serialise the subset of TOML these files use (scalars, lists, tables, table arrays)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str | Path):
            return json.dumps(str(v))  # JSON string escapes are valid TOML basic strings
        if isinstance(v, list | tuple):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, Mapping):  # an inline table
            return "{ " + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def is_table_array(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)

    lines: list[str] = []
    simple = {k: v for k, v in data.items() if not isinstance(v, Mapping) and not is_table_array(v)}
    lines += [f"{k} = {scalar(v)}" for k, v in simple.items()]
    for k, v in data.items():
        if isinstance(v, Mapping):
            lines += ["", f"[{k}]"] + [f'"{kk}" = {scalar(vv)}' for kk, vv in v.items()]
        elif is_table_array(v):
            for item in v:
                lines += ["", f"[[{k}]]"] + [f"{kk} = {scalar(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"

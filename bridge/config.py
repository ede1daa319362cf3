"""Configuration files (TOML) for every daemon, parsed into typed, validated dataclasses.

``network.toml`` is public and shared by all components: ledgers, securities and the
committee. Each daemon has its own file naming its network file, listen address, key file
and state database. Secrets never appear in these files, only paths to 0600 key files.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bridge.domain.committee import Committee
from bridge.domain.errors import InvalidInput
from bridge.domain.ids import LedgerId, SecurityId, parse_evm_address
from bridge.rpc.roles import BROKERAGE, COORDINATOR, MEMBER, RELAYER, Role, parse_role, valid_org_id

LEDGER_KINDS = ("evm", "fabric")


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """How to reach one ledger and its bridge endpoint.

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
    tls_server_name: str = ""
    max_gas_price_gwei: float = 1000.0
    """EVM: the most a relayer pays per unit of gas; above it a step waits."""


@dataclass(frozen=True, slots=True)
class LedgerEndpoint:
    """A member's own connection to a ledger, in place of the network file's ``rpc_url``.

    For Fabric, a peer of another organisation has its own TLS CA and host name: with
    ``tls_ca`` set, ``tls_ca`` and ``tls_server_name`` both come from here (an empty name
    means the host in ``url``); without it, the network file's TLS settings stay.
    """

    url: str
    tls_ca: Path | None = None
    tls_server_name: str = ""

    def apply(self, config: LedgerConfig) -> LedgerConfig:
        """``config`` reached through this endpoint; TLS settings on an EVM ledger are refused."""
        if self.tls_ca is None:
            if self.tls_server_name:
                raise InvalidInput(f"ledger {config.id}: tls_server_name needs tls_ca")
            return replace(config, rpc_url=self.url)
        if config.kind != "fabric":
            raise InvalidInput(f"ledger {config.id}: tls_ca applies to Fabric ledgers only")
        return replace(
            config, rpc_url=self.url, tls_ca=self.tls_ca, tls_server_name=self.tls_server_name
        )


@dataclass(frozen=True, slots=True)
class Credentials:
    """A daemon's identity on one ledger: a key file, and for Fabric an MSP certificate."""

    key_file: Path
    cert_file: Path | None = None
    msp_id: str = ""


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

    def ledger(self, name: str) -> LedgerConfig:
        """The named ledger; raises KeyError if it is not configured."""
        return self.ledgers[name]

    def holders_of(self, role: Role) -> list[Organisation]:
        """The organisations granted ``role``."""
        return [o for o in self.organisations.values() if role in o.roles]


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """The coordinator daemon."""

    network: NetworkConfig
    listen: str
    database: Path
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


@dataclass(frozen=True, slots=True)
class RelayerConfig:
    """One chain operator's relayer for one ledger."""

    network: NetworkConfig
    ledger: str
    listen: str
    coordinator: str
    key_file: Path
    state_db: Path
    poll_interval: float
    cert_file: Path | None = None
    msp_id: str = ""
    tls: TlsConfig | None = None
    """Mutual TLS for the server and the coordinator client."""
    audit_log: Path | None = None
    """JSON-lines file receiving every authorisation decision (opened O_APPEND)."""

    @property
    def credentials(self) -> Credentials:
        """The operator's ledger identity."""
        return Credentials(self.key_file, self.cert_file, self.msp_id)


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    """One committee member."""

    network: NetworkConfig
    listen: str
    key_file: Path
    vote_db: Path
    # The member's own ledger connections (defaults: the network file's rpc_url).
    rpc_overrides: Mapping[str, LedgerEndpoint]
    # Read-only client identities for Fabric ledgers (Fabric signs every query).
    fabric_identities: Mapping[str, Credentials] = field(default_factory=dict)
    tls: TlsConfig | None = None
    """Mutual TLS for the server."""
    audit_log: Path | None = None
    """JSON-lines file receiving every authorisation decision (opened O_APPEND)."""


def _req(table: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise InvalidInput(f"{where}: missing required key {key!r}")
    return table[key]


def _read(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def _non_negative(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = float(table.get(key, default))
    if value < 0:
        raise InvalidInput(f"{where}: {key} must not be negative")
    return value


def _rel(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (base / p)


def load_network(path: Path) -> NetworkConfig:
    """Parse and validate a network file."""
    raw = _read(path)
    c = _req(raw, "committee", str(path))
    members = tuple(parse_evm_address(m) for m in _req(c, "members", "committee"))
    committee = Committee(
        epoch=int(_req(c, "epoch", "committee")),
        threshold=int(_req(c, "threshold", "committee")),
        members=members,
    )
    ledgers: dict[str, LedgerConfig] = {}
    for item in raw.get("ledgers", []):
        lid = LedgerId(str(_req(item, "id", "ledger")))
        kind = str(_req(item, "kind", f"ledger {lid}"))
        if kind not in LEDGER_KINDS:
            raise InvalidInput(f"ledger {lid}: unsupported kind {kind!r}")
        if lid.name in ledgers:
            raise InvalidInput(f"ledger {lid} configured twice")
        chain_id = int(item.get("chain_id", 0))
        if kind == "evm" and chain_id <= 0:
            raise InvalidInput(f"ledger {lid}: an EVM ledger needs its chain_id")
        channel = str(item.get("channel", ""))
        tls_ca = item.get("tls_ca")
        if kind == "fabric" and (not channel or not tls_ca):
            raise InvalidInput(f"ledger {lid}: a Fabric ledger needs channel and tls_ca")
        ledgers[lid.name] = LedgerConfig(
            id=lid,
            kind=kind,
            rpc_url=str(_req(item, "rpc_url", f"ledger {lid}")),
            bridge=str(_req(item, "bridge", f"ledger {lid}")),
            chain_id=chain_id,
            finality_depth=int(item.get("finality_depth", 0)),
            block_interval=float(item.get("block_interval", 1.0)),
            channel=channel,
            tls_ca=_rel(path.parent, str(tls_ca)) if tls_ca else None,
            tls_server_name=str(item.get("tls_server_name", "")),
            max_gas_price_gwei=_non_negative(item, "max_gas_price_gwei", 1000.0, f"ledger {lid}"),
        )
    securities = {s: SecurityId(s) for s in raw.get("securities", {}).get("isins", [])}
    operators = frozenset(parse_evm_address(a) for a in raw.get("supply", {}).get("operators", []))
    return NetworkConfig(
        committee=committee,
        ledgers=ledgers,
        securities=securities,
        supply_operators=operators,
        organisations=_organisations(path, raw.get("organisations", []), ledgers, committee),
    )


_ORG_KEYS = frozenset({"id", "ca", "roles", "revoked_file"})
_SOLE_HOLDER = (BROKERAGE, MEMBER, COORDINATOR)
"""Roles that at most one organisation may hold (the account manager of a ledger, a
committee member, the coordinator)."""


def _organisations(
    path: Path, items: Any, ledgers: Mapping[str, LedgerConfig], committee: Committee
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
            if role.kind == MEMBER and bytes.fromhex(role.scope[2:]) not in committee.members:
                raise InvalidInput(f"{where}: role {role} is not a committee member")
            if role.kind in _SOLE_HOLDER:
                if role in holders:
                    raise InvalidInput(f"{where}: role {role} is already held by {holders[role]}")
                holders[role] = org_id
        revoked = item.get("revoked_file")
        orgs[org_id] = Organisation(
            id=org_id,
            ca_file=ca,
            roles=roles,
            revoked_file=_rel(path.parent, str(revoked)) if revoked else None,
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
    if mode & 0o077:
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


def load_coordinator(path: Path) -> CoordinatorConfig:
    """Parse a coordinator file."""
    raw = _read(path)
    base = path.parent
    network = load_network(_rel(base, _req(raw, "network", str(path))))
    relayers = dict(_req(raw, "relayers", str(path)))
    for name in relayers:
        if name not in network.ledgers:
            raise InvalidInput(f"relayer for unknown ledger {name!r}")
    for name in network.ledgers:
        if name not in relayers:
            raise InvalidInput(f"no relayer configured for ledger {name!r}")
    endpoints, members = _verifier_endpoints(_req(raw, "verifiers", str(path)), network)
    return CoordinatorConfig(
        network=network,
        listen=str(_req(raw, "listen", str(path))),
        database=_rel(base, _req(raw, "database", str(path))),
        relayers=relayers,
        verifiers=endpoints,
        transfer_ttl=int(raw.get("transfer_ttl", 300)),
        rpc_timeout=float(raw.get("rpc_timeout", 30.0)),
        supply_heartbeat=_non_negative(raw, "supply_heartbeat", 30.0, str(path)),
        instruction_max_age=_non_negative(raw, "instruction_max_age", 600.0, str(path)),
        tls=load_tls(raw, base, str(path)),
        audit_log=_audit_log(raw, base),
        verifier_members=members,
    )


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
        if member not in network.committee.members:
            raise InvalidInput(f"verifiers: 0x{member.hex()} is not a committee member")
        endpoints.append(str(_req(item, "endpoint", "verifiers")))
        members.append("0x" + member.hex())
    return tuple(endpoints), tuple(members)


def load_relayer(path: Path) -> RelayerConfig:
    """Parse a relayer file."""
    raw = _read(path)
    base = path.parent
    network = load_network(_rel(base, _req(raw, "network", str(path))))
    ledger = str(_req(raw, "ledger", str(path)))
    if ledger not in network.ledgers:
        raise InvalidInput(f"relayer for unknown ledger {ledger!r}")
    return RelayerConfig(
        network=network,
        ledger=ledger,
        listen=str(_req(raw, "listen", str(path))),
        coordinator=str(_req(raw, "coordinator", str(path))),
        key_file=_rel(base, _req(raw, "key_file", str(path))),
        state_db=_rel(base, _req(raw, "state_db", str(path))),
        poll_interval=float(raw.get("poll_interval", 0.2)),
        cert_file=_rel(base, raw["cert_file"]) if "cert_file" in raw else None,
        msp_id=str(raw.get("msp_id", "")),
        tls=load_tls(raw, base, str(path)),
        audit_log=_audit_log(raw, base),
    )


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
    """Parse a verifier file."""
    raw = _read(path)
    base = path.parent
    return VerifierConfig(
        network=load_network(_rel(base, _req(raw, "network", str(path)))),
        listen=str(_req(raw, "listen", str(path))),
        key_file=_rel(base, _req(raw, "key_file", str(path))),
        vote_db=_rel(base, _req(raw, "vote_db", str(path))),
        rpc_overrides={
            name: _endpoint(base, name, value)
            for name, value in raw.get("rpc_overrides", {}).items()
        },
        fabric_identities={
            name: Credentials(
                key_file=_rel(base, _req(ident, "key_file", f"fabric identity {name}")),
                cert_file=_rel(base, _req(ident, "cert_file", f"fabric identity {name}")),
                msp_id=str(_req(ident, "msp_id", f"fabric identity {name}")),
            )
            for name, ident in raw.get("fabric_identities", {}).items()
        },
        tls=load_tls(raw, base, str(path)),
        audit_log=_audit_log(raw, base),
    )


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

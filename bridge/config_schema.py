"""The schema of every configuration file: one pydantic model per file, tables as sub-models.

Each model refuses unknown keys (``extra="forbid"``), wrong types (``strict``: ``"30"`` is
not a number) and out-of-range values. The ``[[ledgers]]`` entries of the network file are
validated by their ledger kind's own model (:class:`bridge.ledgers.kinds.LedgerTable`), so a
new kind brings its keys with it. Attribute docstrings are the descriptions printed in the
generated reference ``docs/configuration.md`` (``python -m bridge.tools.gen_config_docs``).

These models check the SHAPE of a file (and :mod:`bridge.config_rules` the rules between
its keys); :mod:`bridge.config` then builds the typed, frozen configuration from it.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
)

__all__ = [
    "ClientFile",
    "CoordinatorFile",
    "FILE_MODELS",
    "KeyConfigFile",
    "NetworkFile",
    "RelayerFile",
    "VerifierFile",
]

_ADDRESS = r"^0x[0-9a-fA-F]{40}$"


MAX_BATCH_ITEMS_CEILING = 2500
"""---- batchfix: the largest ``max_batch_items`` (a worst-case SubmitTransfers response of
that many items fits gRPC's default 4 MiB message limit; a unit test measures it)."""


class Table(BaseModel):
    """A TOML table: unknown keys refused, strict types, immutable; no ``inf``/``nan``
    (TOML has them, and ``inf`` seconds overflows at start or never polls)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,
    )


def _port(text: str, lowest: int) -> str:
    if text.startswith("unix:"):
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit():
        raise ValueError(f"{text!r} is not host:port")
    if not lowest <= int(port) <= 65535:
        raise ValueError(f"port {port} is out of range {lowest}..65535")
    return text


def _listen(text: str) -> str:
    return _port(text, 0)


def _target(text: str) -> str:
    return _port(text, 1)


def _join_array(value: Any) -> Any:
    """An array of ``host:port`` strings is the same as their comma-separated text."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return value


def _targets(text: str) -> str:
    for part in text.split(","):
        _port(part.strip(), 1)
    return text


def _optional_target(text: str) -> str:
    return _port(text, 1) if text else text


def _metrics_listen(text: str) -> str:
    if not text:
        return text
    _port(text, 0)
    host = text.rpartition(":")[0].strip("[]")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError("the host must be an IP address or localhost") from None
    return text


def _http_url(text: str) -> str:
    if text and urlparse(text).scheme not in ("http", "https"):
        raise ValueError("must be an http(s) URL")
    return text


Listen = Annotated[str, AfterValidator(_listen)]
"""``host:port`` to listen on (port 0: an ephemeral port), or ``unix:PATH``."""
Target = Annotated[str, AfterValidator(_target)]
Targets = Annotated[str, BeforeValidator(_join_array), AfterValidator(_targets)]
"""``host:port`` of a server (port 1..65535), or ``unix:PATH``."""
PathText = Annotated[str, Field(min_length=1)]
"""A file path; relative paths are resolved against the configuration file's directory."""
Address = Annotated[str, Field(pattern=_ADDRESS)]
"""``0x`` + 40 hex digits; mixed case must be a valid EIP-55 checksum."""
Name = Annotated[str, Field(min_length=1)]


# ---- shared tables -------------------------------------------------------------------------


class TlsTable(Table):
    """``[tls]``: this process's mutual-TLS identity (required unless the development
    plaintext flag is set)."""

    cert_file: PathText
    """Certificate (PEM) issued by the organisation's CA, its OU naming the role."""
    key_file: PathText
    """Private key (PEM); must be 0600."""
    ca_files: list[PathText] = []
    """Narrow the trust roots (default: the CAs of the organisations in the network file)."""


class MetricsTable(Table):
    """``[metrics]``: Prometheus ``/metrics`` and readiness probes (ADR 0016)."""

    listen: Annotated[str, AfterValidator(_metrics_listen)] = ""
    """``host:port`` serving ``/metrics`` (host an IP address or localhost); '' = off."""
    probe_interval: float = Field(default=2.0, ge=0.1, le=300)
    """Seconds between readiness probes."""


class TracingTable(Table):
    """``[tracing]``: OpenTelemetry spans (ADR 0016); off by default."""

    enabled: bool = False
    """Record spans."""
    endpoint: Annotated[str, AfterValidator(_http_url)] = ""
    """OTLP/HTTP collector URL (``http://127.0.0.1:4318/v1/traces``); '' = no export."""
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """Fraction of traces sampled."""
    service_name: str = ""
    """``service.name`` of the spans (default: the component's name)."""


class KeyTable(Table):
    """``[key]``: a signing key in an encrypted keystore (``keystore`` + one passphrase
    source) or a PKCS#11 token (``pkcs11_module``, ``token_label``, ``key_label`` + one PIN
    source). See ``docs/operators/keys.md``."""

    keystore: PathText | None = None
    """Encrypted key file: keystore v3 JSON (secp256k1) or encrypted PKCS#8 PEM (P-256)."""
    passphrase_file: PathText | None = None
    """0600 file holding the keystore passphrase."""
    passphrase_env: Name | None = None
    """Environment variable holding the keystore passphrase."""
    pkcs11_module: PathText | None = None
    """The token's PKCS#11 library."""
    token_label: Name | None = None
    """Label of the token holding the key."""
    key_label: Name | None = None
    """Label of the key in the token."""
    pin_file: PathText | None = None
    """0600 file holding the token PIN."""
    pin_env: Name | None = None
    """Environment variable holding the token PIN."""


class LedgerAuthTable(Table):
    """``[ledger_auth]``: how this process authenticates to its ledger node (not its
    ledger identity). EVM: a bearer token over https; Fabric: a TLS client certificate."""

    token_file: PathText | None = None
    """EVM: 0600 file with a bearer token (needs an ``https://`` node)."""
    tls_cert_file: PathText | None = None
    """Fabric: TLS client certificate (PEM) for peers requiring client TLS."""
    tls_key_file: PathText | None = None
    """Fabric: its key (PEM, 0600); goes with ``tls_cert_file``."""


# ---- network.toml --------------------------------------------------------------------------


class LaterMemberTable(Table):
    """``[[committee.later]]``: a member of an epoch after the genesis one (ADR 0009)."""

    member: Address
    """The member's address."""
    endpoint: Annotated[str, AfterValidator(_optional_target)] = ""
    """``host:port`` its verifier serves at ('' unknown)."""


class CommitteeTable(Table):
    """``[committee]``: the genesis committee, the trust anchor (later epochs are read from
    the ledgers)."""

    epoch: int = Field(ge=1)
    """Epoch number of this committee (epoch 1 is the genesis)."""
    threshold: int = Field(ge=1)
    """Signatures needed (t); 2t > n and t <= n."""
    members: list[Address] = Field(min_length=1)
    """Member addresses (n), distinct."""
    later: list[LaterMemberTable] = []
    """Members of later epochs, so the coordinator can ask them to sign."""


class SecuritiesTable(Table):
    """``[securities]``: the securities the bridge carries."""

    isins: list[Annotated[str, Field(pattern=r"^[A-Z]{2}[A-Z0-9]{9}[0-9]$")]] = []
    """ISINs (check digit verified), distinct."""


class SupplyTable(Table):
    """``[supply]``: the depository's supply feed (ADR 0006)."""

    operators: list[Address] = []
    """Addresses whose signatures authorise registered issuance and hold releases."""


class OrganisationTable(Table):
    """``[[organisations]]``: an institution that may connect, and in which roles."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    """1-63 lowercase letters, digits or '-'; unique."""
    ca: PathText
    """Its CA certificate (PEM); must be readable at start."""
    roles: list[Name] = Field(min_length=1)
    """Roles it may hold: ``coordinator``, ``brokerage:<ledger>``, ``relayer:<ledger>``,
    ``member:<address>``, ``depository``, ``supply``, ... (``docs/operators/onboarding.md``)."""
    revoked_file: PathText | None = None
    """SHA-256 fingerprints (hex, one per line) of its revoked certificates; must be readable."""


class NetworkFile(Table):
    """``network.toml``: the public description of the bridge network, shared by every
    component. Never overridden from the environment: every party must read the same file."""

    committee: CommitteeTable
    """The genesis committee."""
    ledgers: list[dict[str, Any]] = []
    """``[[ledgers]]``: one entry per ledger; its keys depend on ``kind`` (sections below)."""
    securities: SecuritiesTable = SecuritiesTable()
    """The securities carried."""
    supply: SupplyTable = SupplyTable()
    """The depository's supply operators."""
    instruction_keys: dict[str, list[Address]] = {}
    """Per source ledger id, the brokerage instruction-key addresses that may instruct
    transfers out of it (protocol v2)."""
    organisations: list[OrganisationTable] = []
    """Institutions and their roles."""


# ---- coordinator.toml ----------------------------------------------------------------------


class VerifierEntryTable(Table):
    """A ``verifiers`` entry naming the member expected at an endpoint (needed with mTLS)."""

    endpoint: Target
    """``host:port`` of the member's verifier."""
    member: Address
    """The committee member's address."""


def _text_or_table(value: Any) -> str:
    return "<table>" if isinstance(value, dict) else "<text>"


VerifierItem = Annotated[
    Annotated[Target, Tag("<text>")] | Annotated[VerifierEntryTable, Tag("<table>")],
    Discriminator(_text_or_table),
]


class HaTable(Table):
    """``[ha]``: this coordinator is one of several on one PostgreSQL database; exactly one
    leads, under a fenced lease (ADR 0017). Refused with a SQLite database."""

    name: Name
    """This coordinator's name, unique among the coordinators of the database."""
    advertise: Target | None = None
    """The address clients should use for this coordinator (default: ``listen``)."""
    lease_ttl: float = Field(default=10.0, gt=0, le=3600)
    """Seconds a leader's lease lasts without renewal."""
    renew_interval: float = Field(default=2.0, gt=0, le=1200)
    """Seconds between renewals (at most ``lease_ttl / 3``)."""


class BatchingTable(Table):
    """``[batching]``: the coordinator's batched steps (issue 14). Locks, prepares, commit
    and abort certificates and their applications of many transfers go out as one ledger
    invocation and one committee signature per ledger; each transfer keeps its own outcome.
    A lone transfer is never delayed: the first item with nothing in flight goes out at once.
    A ledger whose relayer reports no batched step (``GetLedgerInfo``) and a committee
    refusing ``SignClaims`` get single steps. With batching on, admission's idempotency-key
    lookups are read together too (one store read per source ledger); admission's supply
    gate (a security's registration and hold) is read once for the admissions of a
    security waiting at once whether batching is on or not."""

    enabled: bool = False
    """Batch the step engine's ledger transactions and committee signatures."""
    max_items: int = Field(default=50, gt=0, le=200)
    """Most transfers one batched call carries; further bounded by the smallest batch limit
    of the network's ledger kinds (EVM 100, Fabric 200, CometBFT 50)."""
    max_in_flight: int = Field(default=2, gt=0, le=16)
    """Most batched calls of one kind and ledger (or lane) running at once; items arriving
    meanwhile form the next batch."""
    linger_ms: float = Field(default=0.0, ge=0, le=5000)
    """Milliseconds a batch behind a running one waits for more items (0: none)."""
    read_linger_ms: float = Field(default=20.0, ge=0, le=1000)
    """Milliseconds a coalesced ledger read (the drivers' leg reads, lane limits, holders)
    formed behind a running one of its key waits for more drivers' reads (0: none). A read
    with none of its key in flight still goes out at once; at load, fewer and larger
    ``GetLegs``/``GetFlowStatus``/``GetHolders`` calls."""


class CoordinatorFile(Table):
    """``coordinator.toml``: the coordinator daemon (``bridge-coordinator``)."""

    network: PathText
    """The network file."""
    listen: Listen
    """gRPC listen address."""
    database: Name
    """SQLite file path, or ``postgresql://user@host:port/name`` (no password; ADR 0013)."""
    database_password_file: PathText | None = None
    """0600 file with the PostgreSQL password (else env ``BRIDGE_DATABASE_PASSWORD``)."""
    relayers: dict[str, Target]
    """Ledger id -> its relayer's ``host:port``; exactly one per ledger of the network file."""
    verifiers: list[VerifierItem]
    """Committee members' verifiers: ``host:port`` or ``{endpoint, member}``; at least
    ``threshold`` distinct genesis members must be reachable."""
    transfer_ttl: int = Field(default=300, gt=0, le=30 * 24 * 3600)
    """Seconds a transfer may take before it is aborted."""
    rpc_timeout: float = Field(default=30.0, gt=0, le=3600)
    """Seconds per call to a relayer or verifier."""
    supply_heartbeat: float = Field(default=30.0, ge=0, le=24 * 3600)
    """Seconds after which an unchanged security is attested again (0: only on change)."""
    instruction_max_age: float = Field(default=600.0, gt=0, le=24 * 3600)
    """Operator instructions older than this (seconds) are refused."""
    tls: TlsTable | None = None
    """Mutual TLS for the server and every client."""
    audit_log: PathText | None = None
    """JSON-lines file receiving every authorisation decision."""
    metrics: MetricsTable = MetricsTable()
    """Prometheus metrics."""
    tracing: TracingTable = TracingTable()
    """OpenTelemetry tracing."""
    ha: HaTable | None = None
    """Active/passive coordinators on one PostgreSQL database (ADR 0017)."""
    max_batch_items: int = Field(default=1000, gt=0, le=MAX_BATCH_ITEMS_CEILING)
    """Most items one ``SubmitTransfers`` batch may carry; more is refused as a whole
    (INVALID_ARGUMENT; ADR 0023). At most 2,500: the response's worst case, about 1,500
    bytes an item (a 128-character key twice, a 240-character reason, every transaction id),
    stays inside gRPC's default 4 MiB message limit (review s18 F5: 5,000 did not)."""
    max_batch_watches: int = Field(default=4, gt=0, le=64)
    """Most ``WatchBatch`` streams one caller (organisation and role) may hold open at
    once; one more is refused RESOURCE_EXHAUSTED (retryable). Each stream reads the store
    in pages and holds a few dozen bytes per unfinished item, and while it sends a page,
    that page (at most 500 history rows and their transfers' records)."""
    max_running_batches: int = Field(default=8, gt=0, le=64)
    """Most ``SubmitTransfers`` batches of one source ledger the coordinator runs at once
    (a batch keeps running when its caller gives up); one more is refused
    RESOURCE_EXHAUSTED (retryable) before anything is reserved. Replays of a running batch
    wait for it and do not count."""
    batch_admission_parallel: int = Field(default=16, gt=0, le=256)
    """Items of one ``SubmitTransfers`` batch checked at once (instruction, ledger reads,
    the feed's holds); they are still recorded in item order (the next item with every
    item behind it whose check has ended, in one transaction), so a lane's flow-limit
    queue serves them in batch order. 1: one item after the other."""
    max_transfer_watches: int = Field(default=256, gt=0, le=10_000)
    """Most ``WatchTransfer`` streams one caller (organisation and role) may hold open at
    once; one more is refused RESOURCE_EXHAUSTED (retryable). A brokerage following many
    transfers watches their batch (``WatchBatch``) or lists them (``ListTransfers``)."""
    batch_retention_days: int = Field(default=30, ge=1, le=3650)
    """Days a ``SubmitTransfers`` batch's record is kept: the batch id's idempotency window.
    Older finished records are deleted hourly by the active coordinator, and so are older
    reservations no call of it is running (a call that died mid-batch, never replayed);
    every transfer and its history stay, so a batch id used again after that runs as a new
    batch whose items' idempotency keys still answer their existing transfers."""
    max_unfinished_per_ledger: int = Field(default=100_000, gt=0, le=10_000_000)
    """Most unfinished transfers submitted from one source ledger (locks adopted from its
    events are bounded apart); a new transfer from a ledger that has them is refused
    RESOURCE_EXHAUSTED (retryable; a batch item RETRYABLE) with nothing recorded, and a
    retry of a recorded transfer is still answered. Room is taken just before the write,
    so concurrent submissions cannot pass it together. Each unfinished transfer holds a
    driver, ledger reads at each step, its rows and, on a flow-limited lane, a place in the
    queue of the coordinator every institution shares: this bounds one brokerage's share
    of those. It does not bound CPU over time: size it to the host (the end-of-day bench's
    100,000 transfers saturate two cores for about 40 minutes). Counted in memory and
    replaced by the store's count at every sweep."""
    max_batch_items_per_day: int = Field(default=1_000_000, gt=0, le=1_000_000_000)
    """Most items the ``SubmitTransfers`` batches of one source ledger may record in a
    rolling 24 hours (each batch's items counted when its id is reserved); a new batch id
    that would pass it is refused RESOURCE_EXHAUSTED before anything is reserved, replays
    of recorded batch ids still answer. At least ``max_batch_items``. This bounds the batch
    rows a brokerage can make the database keep with items that are not refused
    (``batch_retention_days`` days of them)."""
    max_refused_batch_items_per_day: int = Field(default=10_000, gt=0, le=1_000_000_000)
    """Most items refused on their own input (another ledger, a malformed field, an
    instruction that does not authenticate, a deadline passed or too far, a key repeated in
    its batch or already used, a signed instruction replayed under a new key) in the
    batches of one source ledger recorded in a rolling 24 hours; once reached, new batch
    ids of that ledger are refused RESOURCE_EXHAUSTED until older batches leave the window.
    Such items are stored with their batch: this bounds what a brokerage's TLS certificate
    alone, with no instruction key, makes the coordinator keep. Refusals that depend on a
    ledger, a peer or an outage are not counted. Running batches count once finished: the
    count can end up to ``max_running_batches`` x ``max_batch_items`` above."""
    batching: BatchingTable = BatchingTable()
    """The coordinator's batched steps (issue 14); off when absent."""


# ---- relayer.toml --------------------------------------------------------------------------


class RelayerFile(Table):
    """``relayer.toml``: one chain operator's relayer for one ledger (``bridge-relayer``)."""

    network: PathText
    """The network file."""
    ledger: Name
    """The ledger id (from the network file) this relayer serves."""
    listen: Listen
    """gRPC listen address."""
    coordinator: Targets
    """The coordinator's ``host:port``; several (comma-separated or an array) for
    active/passive coordinators: events go to the leader (ADR 0017)."""
    state_db: PathText
    """SQLite file of the relayer's checkpoints."""
    key_file: PathText | None = None
    """Plaintext 0600 key file (devnet only); exclusive with ``[key]``."""
    key: KeyTable | None = None
    """The account / identity key in a keystore or token; exclusive with ``key_file``."""
    cert_file: PathText | None = None
    """Ledgers whose kind has identities (Fabric): the MSP certificate (PEM)."""
    msp_id: str = ""
    """Ledgers whose kind has identities (Fabric): the MSP id."""
    poll_interval: float = Field(default=0.2, gt=0, le=3600)
    """Seconds between the watcher's scans for new blocks on a kind that cannot wait for one
    (a plugin kind without ``wait_new_head``). EVM, Fabric and CometBFT ledgers wake it on
    each new block instead (EVM: ``ws_url`` or the adapter's own head poll; Fabric: a Deliver
    request the peer answers when it commits the block; CometBFT: the node's
    ``NewBlockHeader`` events, or the adapter's own head poll); it then rescans after at most
    20 times this, and backs off from it after an error. A Fabric peer that refuses the
    relayer that Deliver (the channel's ``event/FilteredBlock`` ACL) is polled at this
    interval instead."""
    standby: bool = False
    """Wait for the checkpoint store's lock instead of exiting (a standby relayer on the
    same store and key; ADR 0017)."""
    tls: TlsTable | None = None
    """Mutual TLS for the server and the coordinator client."""
    audit_log: PathText | None = None
    """JSON-lines file receiving every authorisation decision."""
    ledger_auth: LedgerAuthTable = LedgerAuthTable()
    """How this relayer authenticates to its ledger node."""
    metrics: MetricsTable = MetricsTable()
    """Prometheus metrics."""
    tracing: TracingTable = TracingTable()
    """OpenTelemetry tracing."""


# ---- verifier.toml -------------------------------------------------------------------------


class EndpointTable(Table):
    """An ``rpc_overrides`` entry: the member's own node for a ledger, with its TLS."""

    url: Name
    """Node URL (EVM JSON-RPC) or peer ``host:port`` (Fabric)."""
    tls_ca: PathText | None = None
    """The node's TLS CA (EVM: needs ``https://``)."""
    tls_server_name: str = ""
    """Fabric: the name checked in the peer's certificate (needs ``tls_ca``)."""


EndpointItem = Annotated[
    Annotated[Name, Tag("<text>")] | Annotated[EndpointTable, Tag("<table>")],
    Discriminator(_text_or_table),
]


class RotationTable(Table):
    """``[rotation]``: the bounds within which this member signs committee rotations
    (ADR 0009); integer seconds."""

    min_overlap: int = Field(default=10, gt=0)
    """Least overlap of the old and new epochs; <= ``max_overlap``."""
    max_overlap: int = Field(default=7 * 24 * 3600, gt=0)
    """Most overlap of the old and new epochs."""
    max_activation_delay: int = Field(default=30 * 24 * 3600, ge=0)
    """Latest activation accepted, ahead of this member's clock."""
    max_activation_lag: int = Field(default=3600, ge=0)
    """Earliest activation accepted, behind this member's clock."""


class IdentityTable(Table):
    """An ``[identities.<ledger>]`` entry: the read identity of a ledger whose kind signs
    every query (Fabric): MSP id, certificate and exactly one key source."""

    msp_id: Name
    """The MSP id of the identity."""
    cert_file: PathText
    """The identity's certificate (PEM)."""
    key_file: PathText | None = None
    """Plaintext 0600 key (devnet only); exclusive with ``[key]``."""
    key: KeyTable | None = None
    """The key in a keystore or token; exclusive with ``key_file``."""


class VerifierFile(Table):
    """``verifier.toml``: one committee member (``bridge-verifier``)."""

    network: PathText
    """The network file."""
    listen: Listen
    """gRPC listen address."""
    vote_db: PathText
    """SQLite file of the member's durable votes (never lose it)."""
    standby: bool = False
    """Wait for the vote log's lock instead of exiting (a standby on the SAME log file,
    never a copy; ADR 0017)."""
    key_file: PathText | None = None
    """Plaintext 0600 member key (devnet only); exclusive with ``[key]``."""
    key: KeyTable | None = None
    """The member key in a keystore or token; exclusive with ``key_file``."""
    rpc_overrides: dict[str, EndpointItem] = {}
    """Ledger id -> this member's own node (URL, or a table with TLS settings)."""
    identities: dict[str, IdentityTable] = {}
    """Ledger id -> read identity, for ledgers whose kind signs every query (Fabric:
    ``msp_id``, ``cert_file`` and ``key_file`` or ``[key]``)."""
    fabric_identities: dict[str, IdentityTable] | None = None
    """Older spelling of ``identities`` (exclusive with it)."""
    ledger_auth: dict[str, LedgerAuthTable] = {}
    """Ledger id -> how this member authenticates to that ledger's node."""
    rotation: RotationTable = RotationTable()
    """Rotation bounds."""
    tls: TlsTable | None = None
    """Mutual TLS for the server."""
    audit_log: PathText | None = None
    """JSON-lines file receiving every authorisation decision."""
    metrics: MetricsTable = MetricsTable()
    """Prometheus metrics."""
    tracing: TracingTable = TracingTable()
    """OpenTelemetry tracing."""
    max_batch_claims: int = Field(default=1000, gt=0, le=5000)
    """Most items one ``SignClaims`` request may carry; more is refused as a whole
    (INVALID_ARGUMENT; ADR 0025). At most 5,000: a request (about 300 bytes an item) stays
    well inside gRPC's default 4 MiB message limit."""


# ---- client files --------------------------------------------------------------------------


class ClientFile(Table):
    """``--client-config`` of the ``bridge`` CLI (brokerage, depository, operators): whom to
    trust and which certificate to present."""

    network: PathText
    """The network file (its organisations holding the server's role are the trust roots)."""
    tls: TlsTable
    """The client's certificate and key."""


class KeyConfigFile(Table):
    """``--key-config`` of the ``bridge`` CLI: where a signing key lives (exactly one of
    ``key_file`` or ``[key]``)."""

    key_file: PathText | None = None
    """Plaintext 0600 key file (devnet only)."""
    key: KeyTable | None = None
    """A keystore or token key."""


FILE_MODELS: dict[str, type[Table]] = {
    "network": NetworkFile,
    "coordinator": CoordinatorFile,
    "relayer": RelayerFile,
    "verifier": VerifierFile,
    "client": ClientFile,
    "key": KeyConfigFile,
}
"""Every configuration file by the name used in env overrides and the reference."""

ENV_FILES = ("coordinator", "relayer", "verifier")
"""Files whose keys the environment may override (``KSTB_<FILE>__<KEY>[__<SUBKEY>...]``)."""

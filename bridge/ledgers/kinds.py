"""The ledger-kind plugin contract and its registry (ADR 0014).

A ledger kind (EVM, Fabric, ...) is one package under ``bridge/ledgers/<kind>/`` exposing a
:class:`LedgerKind` object, plus ONE line in :data:`REGISTRY` (or an entry point in the
``kstb.ledger_kinds`` group for a kind shipped outside this repository). Everything outside
the package asks the kind: the ``[[ledgers]]`` table's keys, the network and bridge words,
the holder address codec, the rules for a member's endpoint and node authentication, the
read identity a member needs, how to open a reader or adapter and how to check at start that
the node reached is the configured ledger.

Loading is lazy in two steps. :func:`get_kind` imports only the kind's ``kind`` module, which
must stay light (pydantic, :mod:`bridge.core`, :mod:`bridge.domain`): a coordinator that only
hashes a word or parses an address never imports ``web3`` or the Fabric client. The heavy
client is imported inside :meth:`LedgerKind.open`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.domain.errors import InvalidInput

if TYPE_CHECKING:
    from bridge.config import Credentials, LedgerAuth, LedgerConfig, LedgerEndpoint
    from bridge.ledgers.adapter import LedgerAdapter, LedgerReader
    from bridge.ledgers.addresses import AddressCodec
    from bridge.ledgers.startup import ReachedLedger

REGISTRY: Mapping[str, str] = {
    "evm": "bridge.ledgers.evm.kind:KIND",
    "fabric": "bridge.ledgers.fabric.kind:KIND",
    "cometbft": "bridge.ledgers.cometbft.kind:KIND",
}
"""Built-in kinds: ``name -> "module:attribute"`` of its :class:`LedgerKind`. One line per kind."""

ENTRY_POINT_GROUP = "kstb.ledger_kinds"
"""Entry-point group for kinds installed from other distributions (same value format)."""


class LedgerTable(BaseModel):
    """The keys every ``[[ledgers]]`` entry has; a kind subclasses it with its own keys.

    Guarantees: unknown keys are refused (``extra="forbid"``), so a misspelt key is an error
    naming its path, never a silently ignored setting.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,  # review finding 6: ``inf`` seconds is a relayer that never polls
    )

    finality_depth_required: ClassVar[bool] = False
    """True for kinds whose finality is probabilistic (EVM): ``finality_depth`` must then be
    written explicitly (a forgotten or misspelt key never silently means 0)."""
    address_keys: ClassVar[tuple[str, ...]] = ()
    """Keys holding an address in the kind's own format, checked with its address codec."""

    id: str
    """The ledger id: lowercase letters, digits and '-' (bound into every digest)."""
    kind: str
    """The ledger kind (one of the sections of this reference)."""
    rpc_url: str = Field(min_length=1)
    """How the bridge reaches the ledger's node (the kind defines the form)."""
    bridge: str = Field(min_length=1)
    """The bridge endpoint on the ledger (the kind defines the form)."""
    finality_depth: int = Field(default=0, ge=0)
    """Blocks after which an event is final (0: final when included)."""
    block_interval: float = Field(default=1.0, gt=0, le=3600)
    """Expected seconds between blocks (pacing of waits and polls)."""


@runtime_checkable
class LedgerKind(Protocol):
    """What a ledger kind provides to the rest of the bridge.

    Implementations are stateless singletons; every method is safe to call from any daemon.
    """

    name: str
    """The value of ``kind`` in the network file (``evm``, ``fabric``)."""
    table: ClassVar[type[LedgerTable]]
    """The pydantic model of this kind's ``[[ledgers]]`` entry (unknown keys refused)."""
    reads_with_identity: bool
    """True when a read-only client must still present a ledger identity (Fabric signs
    every query): a member then configures ``[identities.<ledger>]``."""

    def ledger_config(self, table: LedgerTable, base: Path) -> LedgerConfig:
        """The validated :class:`LedgerConfig` of an entry (paths resolved against ``base``);
        InvalidInput naming the ledger for a cross-field rule the model cannot express."""
        ...

    def network_word(self, config: LedgerConfig) -> bytes:
        """The network word bound into claim and instruction digests (protocol v2)."""
        ...

    def bridge_word(self, config: LedgerConfig) -> bytes:
        """The bridge endpoint's 32-byte identity (what claim digests bind)."""
        ...

    def address_codec(self) -> AddressCodec:
        """The holder address codec (no ledger connection needed)."""
        ...

    def check_endpoint(self, config: LedgerConfig, endpoint: LedgerEndpoint) -> None:
        """Refuse a member's own endpoint whose settings do not apply to this kind."""
        ...

    def check_auth(self, config: LedgerConfig, auth: LedgerAuth, where: str) -> None:
        """Refuse node-authentication settings that do not apply to, or are unsafe on,
        ``config`` (e.g. a bearer token over plain http)."""
        ...

    def parse_identity(
        self, table: Mapping[str, Any], base: Path, where: str, path: str
    ) -> Credentials:
        """A read identity table (``path`` = ``identities.<ledger>`` in file ``where``);
        refused unless :attr:`reads_with_identity`."""
        ...

    def open(
        self,
        config: LedgerConfig,
        credentials: Credentials | None,
        auth: LedgerAuth | None,
        writable: bool,
    ) -> LedgerAdapter:
        """A reader (``writable=False``) or an adapter applying steps with ``credentials``.
        The kind's client library is imported here, not before."""
        ...

    async def check_reached(self, config: LedgerConfig, reader: LedgerReader) -> ReachedLedger:
        """Confirm ``reader`` talks to ``config``'s ledger (LedgerMismatch otherwise);
        transport faults propagate as Unavailable for the caller to retry."""
        ...

    # Optional member (read by :func:`holder_direct_locks`, absent means False):
    #   holder_direct_locks: bool -- the kind's endpoint lets a holder lock its own units
    #   with its own transaction, so terms whose instructor is the sender are instructed.


def holder_direct_locks(name: str) -> bool:
    """True when kind ``name``'s endpoint accepts a holder's own lock (terms instructed by
    their sender). SECURITY: False unless the kind says so, so a kind that never heard of
    the rule cannot have locks adopted without a registered instruction key."""
    return getattr(get_kind(name), "holder_direct_locks", False) is True


_LOADED: dict[str, LedgerKind] = {}


class MissingExtra(InvalidInput):
    """A configured ledger kind's client library is not installed.

    Guarantees: raised before any connection is attempted, and names the package extra that
    provides the library (``pip install 'kstb[<extra>]'``) in :attr:`extra`, the kind in
    :attr:`ledger_kind` and the absent top-level module in :attr:`module`; callers branch on those
    attributes, never on the message.
    """

    def __init__(self, kind: str, extra: str, module: str) -> None:
        super().__init__(
            f"ledger kind {kind!r} needs the {module!r} package, which is not installed: "
            f"install the [{extra}] extra (pip install 'kstb[{extra}]')"
        )
        self.ledger_kind = kind
        self.extra = extra
        self.module = module


def require_extra(kind: str, extra: str, modules: tuple[str, ...]) -> None:
    """Raise :class:`MissingExtra` unless every top-level module in ``modules`` is importable.

    Guarantees: imports nothing (it asks the import system whether the module can be found),
    so a kind calls it at the top of ``open`` to turn a bare ImportError deep inside its
    client into a typed error naming the extra.
    """
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a finder that refuses it, or a broken install
            found = False
        if not found:
            raise MissingExtra(kind, extra, module)


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def kind_names() -> tuple[str, ...]:
    """Every registered kind name (built-in first, then entry points), without importing any."""
    names = list(REGISTRY)
    names += [n for n in sorted(_entry_points()) if n not in REGISTRY]
    return tuple(names)


def get_kind(name: str) -> LedgerKind:
    """The registered kind ``name``; InvalidInput when no kind has that name.

    Guarantees: imports only the kind's light ``kind`` module, once per process.
    """
    loaded = _LOADED.get(name)
    if loaded is not None:
        return loaded
    target = REGISTRY.get(name) or _entry_points().get(name)
    if target is None:
        raise InvalidInput(f"unsupported ledger kind {name!r} (known: {list(kind_names())})")
    module_name, _, attr = target.partition(":")
    kind = getattr(importlib.import_module(module_name), attr)
    if not isinstance(kind, LedgerKind) or kind.name != name:
        raise InvalidInput(f"ledger kind {name!r}: {target} is not a LedgerKind named {name!r}")
    _LOADED[name] = kind
    return kind


def table_problems(
    kind: LedgerKind, table: LedgerTable, raw: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """The kind's rules beyond its model, as ``(key, message)``: ``finality_depth`` written
    when the kind requires it, and each of :attr:`LedgerTable.address_keys` valid for the
    kind's address codec. Empty when the entry is sound."""
    problems: list[tuple[str, str]] = []
    if type(table).finality_depth_required and "finality_depth" not in raw:
        problems.append(
            (
                "finality_depth",
                f"missing required key (kind {kind.name} has probabilistic finality:"
                " write the depth, 0 only for an instant-finality development chain)",
            )
        )
    codec = kind.address_codec()
    for key in type(table).address_keys:
        try:
            codec.parse(str(getattr(table, key)))
        except InvalidInput as exc:
            problems.append((key, f"not a valid {kind.name} address: {exc}"))
    return problems


def parse_table(kind: LedgerKind, raw: Mapping[str, Any], where: str) -> LedgerTable:
    """Validate ``raw`` with ``kind``'s model; InvalidInput listing each bad key by its path
    (``ledger a: chain_idd: extra inputs are not permitted``)."""
    try:
        return kind.table.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "missing":
                problems.append(f"{where}: missing required key {key!r}")
            else:
                problems.append(f"{where}: {key}: {err['msg'][:1].lower()}{err['msg'][1:]}")
        raise InvalidInput("; ".join(problems)) from None


def resolve(base: Path, value: str | None) -> Path | None:
    """``value`` as a path relative to ``base`` (None stays None)."""
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else base / p

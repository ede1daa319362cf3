"""The one forward-migration runner every store uses (ADR 0022).

A store is a database of one ``kind`` (``coordinator``, ``verifier``, ``relayer``) with an
append-only tuple of :class:`Migration` steps. :func:`migrate` applies, in order, every step
above the highest applied one, EACH IN ONE TRANSACTION together with its row in
``schema_version``: a crash mid-migration leaves the store at the previous version, never
half-way. A released step is never edited; a change is a new step.

GUARANTEES, checked in every step's transaction before anything is written:

- the store's ``store_identity`` names ``kind`` (or the store is unstamped and is stamped
  with it, but only when it is empty or has one of the kind's ``markers`` tables: a file
  of a release before stamping): a vote log is never opened, upgraded or restored as a
  relayer's checkpoints, nor a relayer's file adopted as an empty vote log
  (:class:`WrongStore`);
- the store's version is not above the newest this code knows (:class:`StoreTooNew`): an
  older release never runs on a store a newer one has changed (no downgrades).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from bridge.domain.errors import PreconditionFailed


class Executes(Protocol):
    """A connection: ``execute(sql, args)`` with ``?`` placeholders, returning a cursor."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> Any:
        """Run one statement."""
        ...


C = TypeVar("C", bound=Executes)
T = TypeVar("T")


class StoreError(PreconditionFailed):
    """A store cannot be opened, upgraded, backed up or restored as asked."""


class StoreTooNew(StoreError):
    """The store was written by a newer release (its schema version is above this code's)."""

    def __init__(self, kind: str, have: int, latest: int) -> None:
        super().__init__(
            f"the {kind} store is at schema version {have}, newer than this release's"
            f" {latest}: run the release that wrote it (downgrades are not supported)"
        )
        self.store_kind = kind
        self.have = have
        self.latest = latest


class WrongStore(StoreError):
    """The file is another kind of store than the one named."""

    def __init__(self, expected: str, found: str) -> None:
        super().__init__(f"this is a {found} store, not a {expected} store")
        self.expected = expected
        self.found = found


class WrongOwner(StoreError):
    """The store belongs to another owner (a member store bound to another signing
    address): never opened or restored as this one's."""

    def __init__(self, expected: bytes, found: bytes) -> None:
        super().__init__(f"this store belongs to 0x{found.hex()}, not 0x{expected.hex()}")
        self.expected = expected
        self.found = found


@dataclass(frozen=True, slots=True)
class Migration(Generic[C]):
    """One forward step: ``apply`` runs inside the step's transaction."""

    version: int
    name: str
    apply: Callable[[C], None]


Transaction = Callable[[Callable[[C], T]], T]
"""Runs a function in one write transaction (committed on return, rolled back on raise)."""

_SCHEMA_VERSION = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)
_IDENTITY = (
    "CREATE TABLE IF NOT EXISTS store_identity (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " kind TEXT NOT NULL)"
)


def current_version(c: Executes) -> int:
    """The highest applied version (0: none); creates ``schema_version`` if missing."""
    c.execute(_SCHEMA_VERSION)
    return applied_version(c)


def applied_version(c: Executes) -> int:
    """The highest applied version of a store that has ``schema_version`` (0: none
    applied); a read only, nothing created."""
    row = c.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def store_kind(c: Executes) -> str | None:
    """The kind the store is stamped with, or None (a file of a release before stamping)."""
    row = c.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'store_identity'"
    ).fetchone()
    if row is None:
        return None
    found = c.execute("SELECT kind FROM store_identity WHERE id = 1").fetchone()
    return None if found is None else str(found[0])


_OWN_TABLES = ("schema_version", "store_identity")


def claim_kind(c: Executes, kind: str, markers: Sequence[str] = ()) -> None:
    """Stamp the store with ``kind``, or raise WrongStore if it is stamped otherwise.

    SECURITY (review s17 finding 9): an unstamped store is stamped only when it has no
    table yet or one of ``markers`` (the tables every release of ``kind`` wrote); any other
    unstamped file is WrongStore(kind, "unknown"), unchanged. Without ``markers`` (a kind
    that gives none) any unstamped file is adopted, as before."""
    c.execute(_IDENTITY)
    row = c.execute("SELECT kind FROM store_identity WHERE id = 1").fetchone()
    if row is None:
        if markers:
            tables = {
                str(r[0])
                for r in c.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                    " AND name NOT LIKE 'sqlite_%'"
                ).fetchall()
            } - set(_OWN_TABLES)
            if tables and not tables & set(markers):
                raise WrongStore(kind, "unknown")
        c.execute("INSERT INTO store_identity (id, kind) VALUES (1, ?)", (kind,))
    elif str(row[0]) != kind:
        raise WrongStore(kind, str(row[0]))


def check_version(c: Executes, kind: str, latest: int) -> int:
    """The store's version; StoreTooNew when above ``latest``."""
    have = current_version(c)
    if have > latest:
        raise StoreTooNew(kind, have, latest)
    return have


def migrate(
    kind: str,
    migrations: Sequence[Migration[C]],
    transaction: Transaction[C, bool],
    *,
    before: Callable[[C], None] | None = None,
    markers: Sequence[str] = (),
) -> int:
    """Bring the store to the last of ``migrations``; return the version reached.

    Each step runs in its own transaction (``transaction``), which first calls ``before``
    (e.g. PostgreSQL's advisory lock), checks kind and version, and skips a step already
    applied, so two processes opening one store never apply a step twice. ``markers``:
    see :func:`claim_kind`."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or not versions or versions[0] < 1:
        raise ValueError(f"{kind}: migrations must be numbered 1, 2, ... in order")
    latest = versions[-1]
    reached = 0
    for m in migrations:

        def step(c: C, m: Migration[C] = m) -> bool:
            if before is not None:
                before(c)
            claim_kind(c, kind, markers)
            if check_version(c, kind, latest) >= m.version:
                return False
            m.apply(c)
            c.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                (m.version, m.name, time.time()),
            )
            return True

        transaction(step)
        reached = m.version
    return reached
